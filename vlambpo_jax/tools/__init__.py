"""Diagnostic commands, most on a finished run (python -m vlambpo_jax.tools.<name> --help):

  wm_eval        a world-model stage's held-out metrics, recomputed from its checkpoint
  wm_agreement   does the world model's reward rank action chunks as the simulator does
  grounding_eval does the SFT policy find the instructed object in new scenes (its grounding head, in cm)
  state_offset   how much position error a truth policy bears (its true positions shifted)
  sweep          a run with its baselines and ablations (run beside it in lanes), as a results table
  compare_runs   do two finished runs give the same numbers
  ppo_toy        does PPO learn: a config's policy and PPO settings in a world with a known answer

The ones that read a config take the command-line convention of vlambpo_jax/cli.py
(--config=FILE[:ARG], --config.a.b=VALUE, and --workdir=DIR for those that read a run).
"""

from vlambpo_jax import cli, pipeline
from vlambpo_jax.errors import UserError
from vlambpo_jax.stages import common


def sft_checkpoint(config, workdir: str) -> str:
    """The policy checkpoint the finished sft stage of the run in `workdir` wrote; exits with a one-line
    error when there is none."""
    ctx = pipeline.StageContext(config, cli.workdir_path(workdir), "sft", None, None)
    try:
        return common.checkpoint_of(ctx, "sft")
    except UserError as e:
        cli.fail(str(e))
