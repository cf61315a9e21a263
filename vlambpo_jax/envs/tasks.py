"""Language-conditioned tasks on the tabletop scene: registry, instructions, success predicates.

Every task names a target cube (by colour) and, for some, a goal: a target square (zone) or a second
cube. A task = instruction templates (seen and unseen paraphrase sets), a default horizon (control
steps) and a success predicate over the privileged scene quantities (`Scene` below). Rewards are
sparse: 1 on a step where the predicate holds (the episode ends there).

Registry names: 'pick', 'push', 'place', 'stack'. A config picks a subset by name (config.env.tasks).
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Callable

import jax.numpy as jnp
import numpy as np
from flax import struct

from vlambpo_jax.envs import scene as S

CUBES = tuple(S.CUBE_COLOURS)    # ('red', 'green', 'blue'): cube i has colour CUBES[i]
ZONES = tuple(S.ZONE_COLOURS)    # ('yellow', 'purple')
RELEASE_GAP = 2 * S.CUBE_HALF + 0.004   # finger gap above which a cube is no longer held


@struct.dataclass
class Scene:
    """Privileged quantities of one state, what predicates and experts read (unbatched)."""
    cube_pos: jnp.ndarray    # [3, 3]
    cube_yaw: jnp.ndarray    # [3] heading of each cube seen from above (radians, defined mod pi/2)
    zone_pos: jnp.ndarray    # [2, 3]
    ee_pos: jnp.ndarray      # [3] commanded tool centre point (the mocap target)
    tcp_pos: jnp.ndarray     # [3] actual tool centre point (lags the target a little)
    ee_rpy: jnp.ndarray      # [3]
    gap: jnp.ndarray         # [] distance between the inner finger faces (m)
    obj: jnp.ndarray         # [] int32 target cube
    goal: jnp.ndarray        # [] int32 zone index or base-cube index (task dependent)


def _in_zone(s: Scene):
    zone = s.zone_pos[s.goal]
    cube = s.cube_pos[s.obj]
    return jnp.all(jnp.abs(cube[:2] - zone[:2]) < S.ZONE_HALF - 0.005)


def _on_table(s: Scene):
    return s.cube_pos[s.obj, 2] < S.CUBE_HALF + 0.008


def success_pick(s: Scene):
    return s.cube_pos[s.obj, 2] > S.CUBE_HALF + 0.06


def success_push(s: Scene):
    return _in_zone(s) & _on_table(s)


def success_place(s: Scene):
    return _in_zone(s) & _on_table(s) & (s.gap > RELEASE_GAP)


def success_stack(s: Scene):
    cube, base = s.cube_pos[s.obj], s.cube_pos[s.goal]
    aligned = jnp.linalg.norm(cube[:2] - base[:2]) < 0.6 * S.CUBE_HALF
    on_top = jnp.abs(cube[2] - base[2] - 2 * S.CUBE_HALF) < 0.01
    base_down = base[2] < S.CUBE_HALF + 0.008
    return aligned & on_top & base_down & (s.gap > RELEASE_GAP)


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    goal_kind: str                    # 'none' | 'zone' | 'cube'
    horizon: int                      # default control steps per episode
    seen: tuple[str, ...]             # paraphrase templates with {obj} and {goal}
    unseen: tuple[str, ...]
    success: Callable[[Scene], jnp.ndarray]


REGISTRY: dict[str, Task] = {t.name: t for t in [
    Task("pick", "none", 50,
         seen=("pick up the {obj} cube", "lift the {obj} cube", "grab the {obj} cube and lift it",
               "raise the {obj} block off the table"),
         unseen=("take the {obj} cube up into the air", "hold the {obj} block up high"),
         success=success_pick),
    Task("push", "zone", 80,
         seen=("push the {obj} cube to the {goal} square", "slide the {obj} cube onto the {goal} square",
               "push the {obj} block into the {goal} area", "move the {obj} cube to the {goal} square "
               "by pushing it"),
         unseen=("shove the {obj} cube over to the {goal} target", "nudge the {obj} block into the "
                 "{goal} zone"),
         success=success_push),
    Task("place", "zone", 80,
         seen=("put the {obj} cube on the {goal} square", "place the {obj} cube on the {goal} square",
               "pick up the {obj} cube and put it on the {goal} square",
               "move the {obj} block onto the {goal} area"),
         unseen=("set the {obj} cube down on the {goal} target", "drop the {obj} block onto the "
                 "{goal} zone"),
         success=success_place),
    Task("stack", "cube", 80,
         seen=("stack the {obj} cube on the {goal} cube", "put the {obj} cube on top of the {goal} cube",
               "place the {obj} block onto the {goal} block", "stack the {obj} block on top of the "
               "{goal} one"),
         unseen=("build a tower with the {obj} cube on the {goal} cube", "set the {obj} cube down on "
                 "the {goal} block"),
         success=success_stack),
]}


def goal_names(task: Task) -> tuple[str, ...]:
    return {"none": ("",), "zone": ZONES, "cube": CUBES}[task.goal_kind]


@dataclasses.dataclass(frozen=True)
class InstructionTable:
    """All instruction strings of a task set and lookup tables for sampling them in JAX.

    strings: every instruction (seen and unseen), the tuple `env.instructions` indexes into.
    ids: int32 [T, 3, G, P] id of paraphrase p for (task, cube, goal); `counts[split]` [T] how many
    paraphrases of each task belong to that split (seen first, then unseen: the split's slice of p
    is [0, n_seen) or [n_seen, n_seen + n_unseen)).
    """
    strings: tuple[str, ...]
    ids: np.ndarray
    offset: dict[str, np.ndarray]
    counts: dict[str, np.ndarray]


def build_instructions(tasks: list[Task]) -> InstructionTable:
    strings: list[str] = []
    index: dict[str, int] = {}
    max_goals = max(len(CUBES), len(ZONES))
    max_p = max(len(t.seen) + len(t.unseen) for t in tasks)
    ids = np.zeros((len(tasks), len(CUBES), max_goals, max_p), np.int32)
    for ti, task in enumerate(tasks):
        templates = task.seen + task.unseen
        goals = goal_names(task)
        for ci, gi, pi in itertools.product(range(len(CUBES)), range(max_goals), range(max_p)):
            if task.goal_kind == "cube" and ci == gi:
                ids[ti, ci, gi, pi] = -1   # a cube on itself: never sampled
                continue
            goal = goals[gi % len(goals)]
            text = templates[pi % len(templates)].format(obj=CUBES[ci], goal=goal)
            if text not in index:
                index[text] = len(strings)
                strings.append(text)
            ids[ti, ci, gi, pi] = index[text]
    return InstructionTable(
        strings=tuple(strings), ids=ids,
        offset={"seen": np.zeros(len(tasks), np.int32),
                "unseen": np.array([len(t.seen) for t in tasks], np.int32)},
        counts={"seen": np.array([len(t.seen) for t in tasks], np.int32),
                "unseen": np.array([len(t.unseen) for t in tasks], np.int32)})


def get_tasks(names) -> list[Task]:
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise ValueError(f"config.env.tasks: unknown task(s) {unknown}; known: {sorted(REGISTRY)}")
    if not names:
        raise ValueError("config.env.tasks: empty task set")
    return [REGISTRY[n] for n in names]
