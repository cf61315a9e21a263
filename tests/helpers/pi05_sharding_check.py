"""Run with 8 emulated CPU devices: the pi0.5-size Policy (configs/bridge.py:pi05, cut to 2 ViT and 2
transformer layers) initialised abstractly straight into its FSDP shardings on a (data=1, fsdp=8) mesh.

Prints one JSON line: how many arrays are large (>= config.mesh.fsdp_min_size elements), the large ones
the compiled init leaves replicated, and the largest per-device shard in bytes.
"""
import json
import os
import sys
from pathlib import Path

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from configs import bridge  # noqa: E402
from vlambpo_jax.models import pi05_import  # noqa: E402
from vlambpo_jax.models.policy import Policy  # noqa: E402
from vlambpo_jax.train import sharding  # noqa: E402

config = bridge.get_config("pi05")
config.policy.update(dict(vit_depth=2, depth=2, expert_depth=2))
policy = Policy(config, pi05_import.PALIGEMMA_VOCAB)
s, v, length = config.image_size, len(config.views), int(config.data.max_text_len)
obs = {"images": jnp.zeros((1, v, s, s, 3), jnp.uint8), "tokens": jnp.zeros((1, length), jnp.int32),
       "token_mask": jnp.ones((1, length), bool)}
init = lambda key: policy.init(key, obs)  # noqa: E731
mesh = sharding.make_mesh(data=1, fsdp=8)
min_size = int(config.mesh.fsdp_min_size)
shardings = sharding.param_shardings(jax.eval_shape(init, jax.random.PRNGKey(0)), mesh, min_size)
compiled = jax.jit(init, out_shardings=shardings).lower(jax.random.PRNGKey(0)).compile()
large, replicated, biggest = 0, [], 0
leaves = jax.tree_util.tree_leaves_with_path(jax.eval_shape(init, jax.random.PRNGKey(0)))
for (path, leaf), out in zip(leaves, jax.tree.leaves(compiled.output_shardings)):
    shard = out.shard_shape(leaf.shape)
    biggest = max(biggest, int(np.prod(shard)) * leaf.dtype.itemsize)
    if np.prod(leaf.shape) >= min_size:
        large += 1
        if out.is_fully_replicated:
            replicated.append(jax.tree_util.keystr(path))
print(json.dumps({"devices": len(jax.devices()), "arrays": len(leaves), "large": large, "replicated_large": replicated,
                  "largest_shard_bytes": biggest}))
