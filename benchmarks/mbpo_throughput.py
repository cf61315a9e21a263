"""Imagined transitions per second inside MBPO: the jitted branched rollout (policy Flow-SDE sampling,
world-model head + wrist prediction, Yes/No reward, lax.scan over chunks) at the config's branch count.

Usage: python benchmarks/mbpo_throughput.py [--config=configs/tabletop.py[:ARG]] [--branches=N]
       [--chunks=N] [--repeats=3] [--out=FILE.json] [--config.rl.branch_chunks=4 ...]

Random weights (the cost does not depend on training). Also times the two halves of one chunk on their
own (policy sampling alone, world-model step alone) to say where the time goes. Prints one JSON object.
"""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

from benchmarks.world_model_throughput import timed  # noqa: E402
from vlambpo_jax import cli, loading  # noqa: E402
from vlambpo_jax.models.policy import Policy  # noqa: E402
from vlambpo_jax.models.world_model import WorldModel  # noqa: E402
from vlambpo_jax.rl.rollout import ImaginedState, ModelWorld, rollout  # noqa: E402


def _define(fv: flags.FlagValues) -> None:
    flags.DEFINE_integer("branches", 0, "branches (default config.rl.num_branches)", flag_values=fv)
    flags.DEFINE_integer("chunks", 0, "chunks per branch (default config.rl.branch_chunks)", flag_values=fv)
    flags.DEFINE_integer("repeats", 3, "timed repeats", flag_values=fv)
    flags.DEFINE_string("out", "", "also write the JSON here", flag_values=fv)


def main(argv: list[str]) -> dict:
    args = cli.command_flags(argv, _define, workdir=False, default_config="configs/tabletop.py")
    config = cli.checked(args.config)
    b = args.branches or int(config.rl.num_branches)
    n = args.chunks or int(config.rl.branch_chunks) or 2
    s, v, k = int(config.image_size), len(config.views), int(config.chunk_size)
    rng = np.random.default_rng(0)

    policy = Policy(config, loading.make_tokenizer(config.policy.tokenizer).vocab_size)
    wm = WorldModel(config)
    ptok = np.zeros((b, int(config.data.max_text_len)), np.int32)
    wtok = np.zeros((b, int(config.wm.max_text_len)), np.int32)
    ptok[:, :6] = rng.integers(3, policy.dims.vocab_size, (b, 6))
    wtok[:, :6] = rng.integers(3, 200, (b, 6))
    start = ImaginedState(images=jnp.asarray(rng.integers(0, 256, (b, v, s, s, 3)), jnp.uint8),
                          tokens=jnp.asarray(ptok), token_mask=jnp.asarray(ptok > 0),
                          wm_tokens=jnp.asarray(wtok), wm_token_mask=jnp.asarray(wtok > 0))
    world = ModelWorld(wm, float(config.rl.reward_threshold))
    obs = world.observe(start)
    params = policy.init(jax.random.key(0), jax.tree.map(lambda x: x[:1], obs))
    wparams = wm.init(jax.random.key(1))
    actions = jnp.asarray(rng.normal(0, 0.01, (b, k, 7)), jnp.float32)

    roll = jax.jit(lambda p, wp, st, key: rollout(policy, p, world, wp, st, key, n))
    sample = jax.jit(lambda p, o, key: policy.sample_sde(p, o, key))
    wstep = jax.jit(lambda wp, st, a, key: world.step(wp, st, a, key))
    key = jax.random.key(2)
    t_roll = timed(roll, params, wparams, start, key, repeats=args.repeats)
    t_policy = timed(sample, params, obs, key, repeats=args.repeats)
    t_world = timed(wstep, wparams, start, actions, key, repeats=args.repeats)
    result = {
        "device": str(jax.devices()[0].device_kind), "config": cli.config_spec(argv) or "configs/tabletop.py",
        "overrides": [a for a in argv if a.startswith("--config.")],
        "branches": b, "chunks_per_branch": n, "chunk_size": k,
        "view_decoding": str(config.wm.view_decoding), "num_sample_steps": int(config.wm.num_sample_steps),
        "policy_denoise_steps": int(config.policy.num_denoise_steps),
        "rollout_seconds": t_roll,
        "imagined_chunk_transitions_per_s": b * n / t_roll,
        "imagined_env_steps_per_s": b * n * k / t_roll,
        "one_chunk_seconds": {"policy_flow_sde": t_policy, "world_model_step": t_world},
        "world_model_share": t_world / (t_world + t_policy),
    }
    print(json.dumps(result, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
