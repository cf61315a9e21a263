"""Online PPO throughput in the MJX simulator: env steps per second of the jitted rollout (policy
sampling + simulator + rendering, lax.scan over chunks) and PPO updates per second (one epoch of
minibatch steps as a lax.scan), at the config's branch count and minibatch size.

Usage: python benchmarks/ppo_throughput.py [--config=configs/tabletop.py[:ARG]] [--branches=N]
       [--repeats=3] [--out=FILE.json] [--config.policy.stochastic_step=all ...]

Random policy weights (the cost does not depend on training, except that episodes ending early are
frozen and still stepped). Prints one JSON object.
"""
from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
from absl import flags  # noqa: E402

from benchmarks.world_model_throughput import timed  # noqa: E402
from vlambpo_jax import cli, loading  # noqa: E402
from vlambpo_jax.envs import horizon_chunks  # noqa: E402
from vlambpo_jax.envs.tabletop import make_env  # noqa: E402
from vlambpo_jax.models.policy import Policy  # noqa: E402
from vlambpo_jax.rl import ppo  # noqa: E402
from vlambpo_jax.rl.rollout import SimWorld, rollout  # noqa: E402


def _define(fv: flags.FlagValues) -> None:
    flags.DEFINE_integer("branches", 0, "episodes per rollout (default config.rl.num_branches)", flag_values=fv)
    flags.DEFINE_integer("repeats", 3, "timed repeats", flag_values=fv)
    flags.DEFINE_string("out", "", "also write the JSON here", flag_values=fv)


def main(argv: list[str]) -> dict:
    args = cli.command_flags(argv, _define, workdir=False, default_config="configs/tabletop.py")
    config = cli.checked(args.config)
    rl = config.rl
    b = args.branches or int(rl.num_branches)
    env = make_env(config)
    tokenizer = loading.make_tokenizer(config.policy.tokenizer)
    tokens, mask = tokenizer.encode_batch(list(env.instructions), config.data.max_text_len)
    world = SimWorld(env, tokens, mask)
    policy = Policy(config, vocab_size=tokenizer.vocab_size, unnormalize=lambda a: a * 0.01)
    start = jax.jit(jax.vmap(env.reset))(jax.random.split(jax.random.PRNGKey(0), b))
    params = policy.init(jax.random.PRNGKey(1), jax.tree.map(lambda x: x[:1], world.observe(start)))
    n = horizon_chunks(config)
    k = int(config.chunk_size)

    window = (int(rl.vine_window) or n) if rl.advantage == "vine" else 0
    horizon = int(rl.vine_horizon) if window else 0
    roll = jax.jit(lambda p, s, key: rollout(policy, p, world, None, s, key, n, window, int(rl.group_size),
                                             horizon))
    t_roll = timed(roll, params, start, jax.random.PRNGKey(2), repeats=args.repeats)
    traj, bootstrap, _ = roll(params, start, jax.random.PRNGKey(2))
    buffer = jax.jit(lambda tr, v, bs: ppo.make_buffer(tr, v, bs, rl))(traj, traj.value, bootstrap)
    optimizer = ppo.make_optimizer(rl, params)
    epoch, _ = ppo.make_update_fns(policy, rl, optimizer)
    epoch = jax.jit(epoch)
    state = ppo.init_state(rl, optimizer, params)
    t_epoch = timed(epoch, state, buffer, jax.random.PRNGKey(3), repeats=args.repeats)
    if buffer.actor_rows is not None:   # vine: what re-scoring every row instead would cost
        t_all_rows = timed(epoch, state, buffer.replace(actor_rows=None), jax.random.PRNGKey(3),
                           repeats=args.repeats)
    samples = b * n
    minibatches = max(1, samples // int(rl.minibatch_size))
    result = {
        "device": str(jax.devices()[0].device_kind), "config": cli.config_spec(argv) or "configs/tabletop.py",
        "overrides": [a for a in argv if a.startswith("--config.")],
        "episodes": b, "chunks_per_episode": n, "chunk_size": k,
        "stochastic_step": str(config.policy.stochastic_step),
        "policy_denoise_steps": int(config.policy.num_denoise_steps),
        "rollout_seconds": t_roll, "env_steps_per_s": b * n * k / t_roll,
        "epoch_seconds": t_epoch, "minibatch_size": int(rl.minibatch_size), "minibatches_per_epoch": minibatches,
        "ppo_updates_per_s": minibatches / t_epoch, "ppo_samples_per_s": samples / t_epoch,
        "iteration_seconds_estimate": t_roll + t_epoch * (int(rl.epochs) + int(rl.critic_warmup_epochs)),
        "advantage": str(rl.advantage), "train_vlm": bool(rl.train_vlm),
    }
    if buffer.actor_rows is not None:
        result.update(actor_rows=len(buffer.actor_rows), epoch_seconds_scoring_every_row=t_all_rows)
    cli.emit_json(json.dumps(result, indent=1), args.out)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
