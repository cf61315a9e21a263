"""The `evaluate` stage: every trained policy in the simulator, deterministic sampling, same seeds.

Policies come from finished stages named in config.eval.policies (e.g. 'sft', 'mbpo'); each is run
for config.eval.episodes_per_task episodes per task from the same initial states, and gets a success
rate per task and overall with a 95% Wilson interval. Results go to <workdir>/evaluate/results.json and
a few episodes per policy to <workdir>/evaluate/videos/<policy>/.

Without a simulator (a config with no `env` section: the real-robot path of configs/bridge.py) the
stage runs the offline evaluation of vlambpo_jax/rl/offline.py instead: held-out action error against
the logged actions and the imagined success rate under the world model, per policy.
"""
from __future__ import annotations

import json
from pathlib import Path

import jax

from vlambpo_jax.train import sharding


def checkpoint_of(ctx, stage: str) -> str:
    summary = ctx.stage_summary(stage)
    if "checkpoint_dir" not in summary:
        raise RuntimeError(f"stage '{stage}' has no policy checkpoint to evaluate")
    return summary["checkpoint_dir"]


def run(ctx) -> dict:
    if "env" not in ctx.config:
        from vlambpo_jax.rl.offline import run_eval
        return run_eval(ctx)
    from vlambpo_jax.envs.evaluation import evaluate
    from vlambpo_jax.envs.tabletop import make_env
    from vlambpo_jax.models.policy import make_env_policy_fn
    from vlambpo_jax.models.sft import load_policy

    config = ctx.config
    env = make_env(config, instruction_split=config.eval.instruction_split)
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 0xE7A1)
    mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
    results = {}
    for name in config.eval.policies:
        policy, params, tokenizer, _ = load_policy(checkpoint_of(ctx, name), config)
        fn = make_env_policy_fn(policy, tokenizer, env.instructions, config.data.max_text_len)
        out = evaluate(env, fn, params, key, episodes_per_task=config.eval.episodes_per_task,
                       video_dir=Path(ctx.stage_dir) / "videos" / name, num_videos=config.eval.num_videos,
                       video_size=config.eval.video_size, mesh=mesh)
        results[name] = out
        lo, hi = out["ci95"]
        print(f"[evaluate] {name}: success {out['success_rate']:.3f} [{lo:.3f}, {hi:.3f}] over "
              f"{out['episodes']} episodes")
    (Path(ctx.stage_dir) / "results.json").write_text(json.dumps(results, indent=2, default=float))
    return {"results": str(Path(ctx.stage_dir) / "results.json"),
            **{f"{name}_success": r["success_rate"] for name, r in results.items()}}
