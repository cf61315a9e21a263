"""Diagnostic commands, most on a finished run (python -m vlambpo_jax.tools.<name> --help):

  wm_eval        a world-model stage's held-out metrics, recomputed from its checkpoint
  wm_agreement   does the world model's reward rank action chunks as the simulator does
  grounding_eval does the SFT policy find the instructed object in new scenes (its grounding head, in cm)
  state_offset   how much position error a truth policy bears (its true positions shifted)
  sweep          baselines and ablations of a finished run, as a results table
  compare_runs   do two finished runs give the same numbers
  ppo_toy        does PPO learn: a config's policy and PPO settings in a world with a known answer

The ones that read a config take the command-line convention of vlambpo_jax/cli.py
(--config=FILE[:ARG], --config.a.b=VALUE, and --workdir=DIR for those that read a run).
"""
