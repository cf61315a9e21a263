"""The `demos` stage: scripted-expert episodes written as RLDS, plus an expert evaluation.

Runs the experts with config.demos.noise for config.demos.episodes_per_task episodes of every task
(vlambpo_jax/envs/demos.py describes the episode layout) and writes them to <stage_dir>/rlds; the
summary's 'builder_dir' names it. The expert is then evaluated with the harness
(config.eval.episodes_per_task per task, zero noise) and config.eval.num_videos GIFs go to
<stage_dir>/videos.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import jax

from vlambpo_jax.data.rlds_writer import builder_dir as rlds_builder_dir
from vlambpo_jax.data.rlds_writer import write_rlds
from vlambpo_jax.envs import demos, evaluation, experts
from vlambpo_jax.envs.tabletop import make_env
from vlambpo_jax.errors import UserError
from vlambpo_jax.stages import common


def run(ctx) -> dict:
    config, d = ctx.config, ctx.config.demos
    stage_dir = Path(ctx.stage_dir)
    env = make_env(config)
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 0xDE30)
    start = time.time()
    episodes, stats = demos.collect(env, key, int(d.episodes_per_task), float(d.noise), int(d.batch_size),
                              bool(d.keep_failures), ctx.preemption,
                              targets_per_scene=int(d.targets_per_scene), expert_labels=bool(d.expert_labels))
    if episodes is None:
        return {}
    if not episodes:
        raise UserError("demos: no successful expert episode to write; check config.demos.noise "
                        "or set config.demos.keep_failures=True")
    collect_s = time.time() - start
    builder_dir = rlds_builder_dir(stage_dir / "rlds", d.dataset_name)
    common.write_once("demos_rlds", lambda: write_rlds(
        stage_dir / "rlds", episodes, dataset_name=d.dataset_name, image_keys=("image_0", "image_1"),
        image_shape=(env.image_size, env.image_size, 3), overwrite=True))
    steps = int(sum(len(e["steps"]["action"]) for e in episodes))
    rates = {k: v[0] / max(v[1], 1) for k, v in stats.items()}
    ctx.writer.scalars(0, {f"demos/success_{k}": v for k, v in rates.items()})

    eval_env = make_env(config, instruction_split=config.eval.instruction_split)
    result = evaluation.evaluate(eval_env, experts.expert_policy(eval_env, 0.0), None,
                                 jax.random.fold_in(key, 1), int(config.eval.episodes_per_task),
                                 privileged=True, video_dir=stage_dir / "videos",
                                 num_videos=int(config.eval.num_videos),
                                 video_size=int(config.eval.video_size))
    ctx.writer.scalars(0, {"expert_eval/success_rate": result["success_rate"],
                           **{f"expert_eval/success_{k}": v["success_rate"]
                              for k, v in result["per_task"].items()}})
    summary = {"builder_dir": str(builder_dir), "episodes": len(episodes), "steps": steps,
               "noise": float(d.noise), "demo_success_by_task": rates, "collect_seconds": collect_s,
               "expert_eval": {k: v for k, v in result.items() if k != "videos"},
               "videos": result["videos"]}
    (stage_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    print(f"[demos] wrote {len(episodes)} episodes ({steps} steps) to {builder_dir}; demo success "
          + ", ".join(f"{k} {v:.2f}" for k, v in rates.items())
          + f"; expert eval {result['success_rate']:.3f}")
    return summary
