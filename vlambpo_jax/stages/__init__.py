"""Pipeline stages: one module per stage, each with `run(ctx) -> dict` (a JSON-able summary).

A stage orchestrates the library below it (data/, envs/, models/, rl/) and loads what earlier stages
trained through vlambpo_jax.loading; `ctx` is a vlambpo_jax.pipeline.StageContext. stages/common.py and
stages/wm_common.py hold what several stages share.
"""

# Stage name -> module; the order here is the pipeline order. The runner imports a stage's module
# when the stage runs, so a missing optional dependency of one stage does not break the others.
STAGES: dict[str, str] = {
    "data": "vlambpo_jax.stages.data",
    "demos": "vlambpo_jax.stages.demos",
    "sft": "vlambpo_jax.stages.sft",
    "collect": "vlambpo_jax.stages.collect",
    "logged_roots": "vlambpo_jax.stages.logged_roots",
    "wm_pretrain": "vlambpo_jax.stages.wm_pretrain",
    "wm_finetune": "vlambpo_jax.stages.wm_finetune",
    "reward": "vlambpo_jax.stages.reward",
    "mbpo": "vlambpo_jax.stages.mbpo",
    "wm_bc": "vlambpo_jax.stages.wm_bc",
    "evaluate": "vlambpo_jax.stages.evaluate",
    "report": "vlambpo_jax.stages.report",
}
