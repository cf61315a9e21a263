"""The embedded MJX tabletop simulator.

  scene.py       the MJCF (table, a red cube, a green cylinder and a blue block, two target squares, a
                 welded two-finger gripper, cameras)
  tabletop.py    TabletopEnv: functional reset / step / step_chunk (jit + vmap), State, AutoReset, make_env
  render.py      pure-JAX analytic ray caster for the head and wrist views
  tasks.py       task registry (pick, push, place, stack): instructions (seen/unseen), success predicates
  experts.py     scripted closed-loop experts over privileged state, with optional action noise
  evaluation.py  evaluate(): any chunk policy, M episodes per task in one jitted scan; Wilson CIs; GIFs
  demos.py       the `demos` pipeline stage: expert episodes -> RLDS (Bridge layout) + expert evaluation
"""
