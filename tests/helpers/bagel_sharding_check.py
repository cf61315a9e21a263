"""Run with 8 emulated CPU devices: the BAGEL-size world model (configs/bridge.py:bagel at full widths,
cut to 2 backbone and 2 ViT layers) initialised abstractly straight into its FSDP shardings on a
(data=1, fsdp=8) mesh: the net, the FLUX VAE and the latent statistics.

Prints one JSON line: how many arrays are large (>= config.mesh.fsdp_min_size elements), the large ones
the compiled init leaves replicated, and the largest per-device shard in bytes with its path.
"""
import json
import os
import sys
from pathlib import Path

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from configs import bridge  # noqa: E402
from vlambpo_jax.models.world_model import WorldModel  # noqa: E402
from vlambpo_jax.train import sharding  # noqa: E402

config = bridge.get_config("bagel")
config.wm.umm.depth, config.wm.vit.depth = 2, 2
wm = WorldModel(config)
mesh = sharding.make_mesh(data=1, fsdp=8)
min_size = int(config.mesh.fsdp_min_size)
shapes = jax.eval_shape(wm.init, jax.random.PRNGKey(0))
shardings = sharding.param_shardings(shapes, mesh, min_size, tuple(config.mesh.rules))
compiled = jax.jit(wm.init, out_shardings=shardings).lower(jax.random.PRNGKey(0)).compile()
large, replicated, biggest, biggest_path = 0, [], 0, ""
leaves = jax.tree_util.tree_leaves_with_path(shapes)
for (path, leaf), out in zip(leaves, jax.tree.leaves(compiled.output_shardings)):
    shard = int(np.prod(out.shard_shape(leaf.shape))) * leaf.dtype.itemsize
    if shard > biggest:
        biggest, biggest_path = shard, jax.tree_util.keystr(path)
    if np.prod(leaf.shape) >= min_size:
        large += 1
        if out.is_fully_replicated:
            replicated.append(jax.tree_util.keystr(path))
print(json.dumps({"devices": len(jax.devices()), "arrays": len(leaves), "large": large, "replicated_large": replicated,
                  "largest_shard_bytes": biggest, "largest_shard": biggest_path,
                  "parameters": int(sum(np.prod(x.shape) for _, x in leaves))}))
