"""Run with 4 emulated CPU devices: policy and world-model train steps and a world-model branched
rollout on a (data=2, fsdp=2) mesh equal their single-device versions.

Prints one JSON line with max abs differences and how many parameter arrays were really sharded.
"""
import json
import os
import sys
from pathlib import Path

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from configs import tabletop  # noqa: E402
from vlambpo_jax import loading
from vlambpo_jax.data.tokenizer import ByteTokenizer  # noqa: E402
from vlambpo_jax.models.policy import Policy  # noqa: E402
from vlambpo_jax.models.policy_train import SFTState, make_train_step  # noqa: E402
from vlambpo_jax.models.world_model import WorldModel  # noqa: E402
from vlambpo_jax.rl.rollout import ImaginedState, ModelWorld, rollout  # noqa: E402
from vlambpo_jax.train import sharding  # noqa: E402

MESH = ml_collections.ConfigDict(dict(data=2, fsdp=2, fsdp_min_size=256, rules=()))


def max_diff(a, b):
    return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def count_sharded(tree):
    return sum(not x.sharding.is_fully_replicated for x in jax.tree.leaves(tree))


def compare_steps(step, state, batches):
    single = state
    jitted = jax.jit(step)
    for b in batches:
        single, _ = jitted(single, b)
    dp = sharding.DataParallel(MESH)
    placed, shardings = dp.place(state)
    sharded_step = dp.jit_step(step, shardings)
    for b in batches:
        placed, _ = sharded_step(placed, dp.shard(b, is_global=True))
    return max_diff(single, placed), count_sharded(placed)


def main():
    config = tabletop.get_config("smoke")
    with config.unlocked():
        config.policy.tokenizer = "byte"
    rng = np.random.default_rng(0)
    b, s, k = 8, config.image_size, config.chunk_size
    texts = ["pick up the red cube"] * b
    tok, mask = ByteTokenizer().encode_batch(texts, config.data.max_text_len)
    wtok, wmask = ByteTokenizer().encode_batch(texts, config.wm.max_text_len)
    images = rng.integers(0, 255, (b, 2, s, s, 3), np.uint8)
    out = {}

    # Policy: the SFT step.
    policy = Policy(config, loading.make_tokenizer(config.policy.tokenizer).vocab_size)
    params = policy.init(jax.random.PRNGKey(0), {"images": jnp.asarray(images[:1]),
                                                 "tokens": jnp.asarray(tok[:1]),
                                                 "token_mask": jnp.asarray(mask[:1])})
    tx = optax.adamw(1e-3)
    state = SFTState(jnp.zeros((), jnp.int32), params, params, {}, tx.init((params, {})))
    batches = [{"images": images, "tokens": tok, "token_mask": mask,
                "actions": rng.normal(size=(b, k, 7)).astype(np.float32),
                "action_mask": np.ones((b, k), bool)} for _ in range(2)]
    out["policy_diff"], out["policy_sharded"] = compare_steps(
        make_train_step(policy, tx, lambda _: 1e-3, 0.9, 1), state, batches)

    # World model: dynamics + reward loss, AdamW.
    wm = WorldModel(config)
    wm_params = wm.init(jax.random.PRNGKey(1))
    wm_batches = [{"images": images, "next_images": images[::-1], "tokens": wtok, "token_mask": wmask,
                   "actions": rng.normal(size=(b, k, 7)).astype(np.float32),
                   "episode_success": np.arange(b) % 2 == 0,
                   "steps_to_end": np.arange(b, dtype=np.int32) * 3} for _ in range(2)]

    def wm_step(state, batch):
        p, o, i = state
        (loss, _), g = jax.value_and_grad(lambda q: wm.loss(q, batch, jax.random.fold_in(
            jax.random.PRNGKey(2), i)), has_aux=True)(p)
        u, o = tx.update(g, o, p)
        return (optax.apply_updates(p, u), o, i + 1), {"loss": loss}

    out["wm_diff"], out["wm_sharded"] = compare_steps(
        wm_step, (wm_params, tx.init(wm_params), jnp.zeros((), jnp.int32)), wm_batches)

    # Branched rollout in the world model: branches split over the mesh vs one device.
    start = ImaginedState(*(jnp.asarray(x) for x in (images, tok, mask, wtok, wmask)))
    world = ModelWorld(wm, threshold=0.4)
    roll = lambda p, st, key: rollout(policy, p, world, wm_params, st, key, 2)  # noqa: E731
    ref = jax.jit(roll)(params, start, jax.random.PRNGKey(3))
    mesh = sharding.make_mesh(2, 2)
    bs = sharding.batch_sharding(mesh)
    sharded = jax.jit(roll, in_shardings=(sharding.replicated(mesh), bs, sharding.replicated(mesh)))(
        params, jax.device_put(start, bs), jax.random.PRNGKey(3))
    out["rollout_log_prob_diff"] = max_diff(ref[0].log_prob, sharded[0].log_prob)
    out["rollout_images_diff"] = max_diff(ref[2].images, sharded[2].images)
    out["rollout_sharded"] = not sharded[0].log_prob.sharding.is_fully_replicated
    print(json.dumps(out))


if __name__ == "__main__":
    main()
