"""Commands that read a finished run (python -m vlambpo_jax.tools.<name> --help):

  wm_eval        a world-model stage's held-out metrics, recomputed from its checkpoint
  wm_agreement   does the world model's reward rank action chunks as the simulator does
  sweep          baselines and ablations of a finished run, as a results table

All take the command-line convention of vlambpo_jax/cli.py (--config=FILE[:ARG], --config.a.b=VALUE,
--workdir=DIR).
"""
