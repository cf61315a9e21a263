"""The RL algorithms, on any policy and world given as arguments.

rollout.py        the chunk-level rollout (lax.scan) in a World: SimWorld (MJX) or ModelWorld (imagined)
gae.py, ppo_loss.py, ppo.py   chunk-level GAE, the clipped losses, PPO update epochs
mbpo.py           one VLA-MBPO iteration: branches from real roots, PPO on them
collect.py        policy rollouts recorded as RLDS episodes and branch roots
offline.py        the real-robot path: roots and evaluation from logged episodes
wm_bc.py          filtered behaviour cloning on imagined successes (a baseline)
wm_agreement.py   does the imagined reward rank chunks as the simulator does
theory.py, branch_length.py   Thm 4.2 bounds and the adaptive branch length
"""
