"""The embedded MJX tabletop simulator.

  scene.py       the MJCF (table, a red cube, a green cylinder and a blue block, two target squares, a
                 welded two-finger gripper, cameras)
  tabletop.py    TabletopEnv: functional reset / step / step_chunk (jit + vmap), State, AutoReset, make_env
  render.py      pure-JAX analytic ray caster for the head and wrist views
  tasks.py       task registry (pick, push, place, stack): instructions (seen/unseen), success predicates
  experts.py     scripted closed-loop experts over privileged state, with optional action noise
  evaluation.py  evaluate(): any chunk policy, M episodes per task in one jitted scan; Wilson CIs; GIFs
  demos.py       expert episodes in the RLDS (Bridge) layout, for the `demos` stage

Two facts about a run's config live here, so every layer reads them the same way: whether it has a
simulator (`has_simulator`) and how many chunks a whole episode takes (`horizon_chunks`).
"""
from __future__ import annotations

import math


def has_simulator(config) -> bool:
    """True when the config has a simulator section (config.env); the real-robot path has none."""
    return "env" in config


def horizon_chunks(config, episode_lengths=None) -> int:
    """Chunks of config.chunk_size that cover a whole episode: the longest task horizon of config.env,
    or, without a simulator, the longest of `episode_lengths` (logged episodes, in steps)."""
    k = int(config.chunk_size)
    if has_simulator(config):
        return math.ceil(max(int(config.env.horizons[name]) for name in config.env.tasks) / k)
    if episode_lengths is None or len(episode_lengths) == 0:
        raise ValueError("horizon_chunks: a config without a simulator needs the logged episode lengths")
    return max(1, math.ceil(int(max(episode_lengths)) / k))
