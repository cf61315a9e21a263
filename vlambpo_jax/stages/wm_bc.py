"""The `wm_bc` stage: "BC on world-model data", a baseline for VLA-MBPO that uses the same world model
and roots but no RL: rounds of imagined full-horizon branches from the SFT policy, filtered to the
successful ones, then flow-matching steps on their (observation, action chunk) pairs (rl/wm_bc.py
describes a round and the resumable round data).

Output: `<stage>/policy/` in the sft stage's checkpoint format (params + assets), so
`--config.eval.policies="('sft','wm_bc')"` evaluates it; the summary and `<stage>/rounds.json` give per
round the imagined success rate, the branches and pairs kept, the dataset size and the mean BC loss.
"""
from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from vlambpo_jax import loading
from vlambpo_jax.models import policy_train
from vlambpo_jax.rl import wm_bc
from vlambpo_jax.rl.rollout import ModelWorld
from vlambpo_jax.stages import common
from vlambpo_jax.train import sharding
from vlambpo_jax.train.loop import train_loop


def train(ctx, policy, params, assets: dict, world, world_params, roots: dict,
          num_chunks: int | None = None) -> dict:
    """Rounds of (imagined rollouts -> filter -> BC steps) from `params`; saves <stage>/policy."""
    config, rl = ctx.config, ctx.config.rl
    if policy.dims.use_state:
        raise ValueError("wm_bc: the world model predicts images only; a policy with "
                         "config.policy.use_state=True cannot act in it")
    stage_dir = Path(ctx.stage_dir)
    seed = int(config.seed) * 7919 + 29
    num_chunks = num_chunks or common.episode_chunks(config, roots)
    rounds, steps_per_round = int(rl.bc_rounds), int(rl.bc_steps)
    total = rounds * steps_per_round
    batch_size = int(rl.bc_batch_size)

    tx, schedule = wm_bc.bc_optimizer(config, total)
    dp = sharding.DataParallel(config.mesh)
    state = policy_train.SFTState(step=jnp.zeros((), jnp.int32), params=params, ema_params=params, head_params={},
                             opt_state=tx.init((params, {})))
    state, state_shardings = dp.place(state)
    step = dp.jit_step(policy_train.make_train_step(policy, tx, schedule, 0.0, seed + 1), state_shardings)
    data = wm_bc.RoundData(stage_dir / "data", wm_bc.make_collector(config, policy, world, world_params, roots,
                                                        num_chunks, seed))
    losses: dict[int, list] = {}

    def step_fn(state, i: int):
        r = i // steps_per_round
        for stats in data.ensure(r, state.params):
            ctx.writer.scalars(i, {f"round/{k}": v for k, v in stats.items() if v is not None})
            print(f"[{ctx.stage}] round {stats['round']}: imagined success {stats['imagined_success']:.3f} "
                  f"({stats['kept_branches']}/{stats['branches']} branches, {stats['kept_pairs']} pairs "
                  f"kept; dataset {data.size})")
        n = data.size
        if n == 0:  # no imagined success yet: nothing to clone, the policy stays as it is
            return state.replace(step=state.step + 1), {"dataset_size": 0}
        pool = data.dataset()
        idx = np.random.default_rng([seed, i, 3]).integers(0, n, batch_size)
        batch = {k: pool[k][idx] for k in pool}
        batch["image_mask"] = np.ones(batch["images"].shape[:2], bool)
        batch["action_mask"] = np.ones(batch["actions"].shape[:2], bool)
        state, metrics = step(state, dp.shard(batch, is_global=True))
        losses.setdefault(r, []).append(metrics["loss"])
        return state, {**metrics, "dataset_size": n}

    sft_assets = dict(assets)
    sft_assets["config"] = json.loads(config.to_json_best_effort())
    result = train_loop(ctx, name=wm_bc.CKPT_NAME, state=state, step_fn=step_fn, batch_fn=lambda i: i,
                        num_steps=total, params_fn=lambda s: s.params, assets=sft_assets)
    if total == 0 and rounds:  # bc_steps = 0: only measure the imagined success of the SFT policy
        data.ensure(rounds - 1, result.state.params)
    per_round = []
    for r in sorted(data.stats):
        row = dict(data.stats[r])
        row["dataset_size"] = sum(len(data.pairs[q]["actions"]) for q in range(r + 1))
        row["bc_loss"] = (float(np.mean(jax.device_get(losses[r]))) if losses.get(r) else None)
        per_round.append(row)
    (stage_dir / "rounds.json").write_text(json.dumps(per_round, indent=2))
    summary = {"checkpoint_dir": str(stage_dir / wm_bc.CKPT_NAME), "steps": result.step,
               "interrupted": result.interrupted, "rounds": per_round, "branch_chunks": num_chunks,
               "imagined_transitions": int(sum(s["branches"] for s in data.stats.values()) * num_chunks),
               "dataset_size": data.size, "env_steps": 0,
               "final_loss": next((r["bc_loss"] for r in reversed(per_round) if r["bc_loss"] is not None),
                                  None)}
    (stage_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    return summary


def run(ctx) -> dict:
    config = ctx.config
    policy, params, _, assets = loading.load_policy(ctx.stage_summary("sft")["checkpoint_dir"], config)
    wm, wm_params, threshold = common.rl_world_model(ctx)   # the world model and reward MBPO reads
    # the same roots MBPO draws from: 'collect' or 'logged_roots'
    roots = dict(np.load(ctx.stage_summary(common.roots_stage(ctx))["roots"]))
    return train(ctx, policy, params, assets, ModelWorld(wm, threshold), wm_params, roots)
