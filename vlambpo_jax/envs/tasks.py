"""Language-conditioned tasks on the tabletop scene: registry, instructions, success predicates.

Every task names a target object by colour and shape noun ("the green cylinder"; scene.OBJECTS: a red
cube, a green cylinder, a blue block) and, for some, a goal: a target square (zone) or a second object.
A task = instruction templates (seen and unseen paraphrase sets), a default horizon (control steps) and
a success predicate over the privileged scene quantities (`Scene` below). Rewards are sparse: 1 on a
step where the predicate holds (the episode ends there). Heights in the predicates are per object
(scene.OBJECT_HALF_HEIGHT): "on top" means the object's centre is its own half height plus the base's
half height above the base's centre.

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

OBJECTS = tuple(o.name for o in S.OBJECTS)   # ('red cube', 'green cylinder', 'blue block'): object i
ZONES = tuple(S.ZONE_COLOURS)                # ('yellow', 'purple')
RELEASE_MARGIN = 0.004     # finger gap above an object's grasp width at which it is no longer held
STACK_ALIGN = 0.015        # horizontal distance of the centres (m) within which X counts as on Y
STACK_HEIGHT_TOL = 0.005   # |centre height - (base centre + both half heights)| (m)


@struct.dataclass
class Scene:
    """Privileged quantities of one state, what predicates and experts read (unbatched)."""
    obj_pos: jnp.ndarray     # [3, 3]
    obj_yaw: jnp.ndarray     # [3] grasp heading of each object seen from above (radians, defined
    #                          mod its ObjectSpec.yaw_period; 0 for the cylinder)
    zone_pos: jnp.ndarray    # [2, 3]
    ee_pos: jnp.ndarray      # [3] commanded tool centre point (the mocap target)
    tcp_pos: jnp.ndarray     # [3] actual tool centre point (lags the target a little)
    ee_rpy: jnp.ndarray      # [3]
    gap: jnp.ndarray         # [] distance between the inner finger faces (m)
    obj: jnp.ndarray         # [] int32 target object
    goal: jnp.ndarray        # [] int32 zone index or base-object index (task dependent)


def half_height(i):
    """Centre height of object i (int or traced) resting upright on the table."""
    return jnp.asarray(S.OBJECT_HALF_HEIGHT)[i]


def released(s: Scene):
    """The fingers are open wider than the target object: it is not held."""
    return s.gap > jnp.asarray(S.OBJECT_GRASP_WIDTH)[s.obj] + RELEASE_MARGIN


def _in_zone(s: Scene):
    zone = s.zone_pos[s.goal]
    obj = s.obj_pos[s.obj]
    return jnp.all(jnp.abs(obj[:2] - zone[:2]) < S.ZONE_HALF - 0.005)


def _on_table(s: Scene):
    return s.obj_pos[s.obj, 2] < half_height(s.obj) + 0.008


def success_pick(s: Scene):
    return s.obj_pos[s.obj, 2] > half_height(s.obj) + 0.06


def success_push(s: Scene):
    return _in_zone(s) & _on_table(s)


def success_place(s: Scene):
    return _in_zone(s) & _on_table(s) & released(s)


def success_stack(s: Scene):
    obj, base = s.obj_pos[s.obj], s.obj_pos[s.goal]
    aligned = jnp.linalg.norm(obj[:2] - base[:2]) < STACK_ALIGN
    on_top = jnp.abs(obj[2] - base[2] - half_height(s.obj) - half_height(s.goal)) < STACK_HEIGHT_TOL
    base_down = base[2] < half_height(s.goal) + 0.008
    return aligned & on_top & base_down & released(s)


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    goal_kind: str                    # 'none' | 'zone' | 'object'
    horizon: int                      # default control steps per episode
    seen: tuple[str, ...]             # paraphrase templates with {obj} and {goal}
    unseen: tuple[str, ...]
    success: Callable[[Scene], jnp.ndarray]


REGISTRY: dict[str, Task] = {t.name: t for t in [
    Task("pick", "none", 50,
         seen=("pick up the {obj}", "lift the {obj}", "grab the {obj} and lift it",
               "raise the {obj} off the table"),
         unseen=("take the {obj} up into the air", "hold the {obj} up high"),
         success=success_pick),
    Task("push", "zone", 80,
         seen=("push the {obj} to the {goal} square", "slide the {obj} onto the {goal} square",
               "push the {obj} into the {goal} area", "move the {obj} to the {goal} square by pushing it"),
         unseen=("shove the {obj} over to the {goal} target", "nudge the {obj} into the {goal} zone"),
         success=success_push),
    Task("place", "zone", 80,
         seen=("put the {obj} on the {goal} square", "place the {obj} on the {goal} square",
               "pick up the {obj} and put it on the {goal} square", "move the {obj} onto the {goal} area"),
         unseen=("set the {obj} down on the {goal} target", "drop the {obj} onto the {goal} zone"),
         success=success_place),
    Task("stack", "object", 80,
         seen=("stack the {obj} on the {goal}", "put the {obj} on top of the {goal}",
               "place the {obj} onto the {goal}", "stack the {obj} on top of the {goal}"),
         unseen=("build a tower with the {obj} on the {goal}", "set the {obj} down on the {goal}"),
         success=success_stack),
]}


def goal_names(task: Task) -> tuple[str, ...]:
    return {"none": ("",), "zone": ZONES, "object": OBJECTS}[task.goal_kind]


@dataclasses.dataclass(frozen=True)
class InstructionTable:
    """All instruction strings of a task set and lookup tables for sampling them in JAX.

    strings: every instruction (seen and unseen), the tuple `env.instructions` indexes into.
    ids: int32 [T, 3, G, P] id of paraphrase p for (task, object, goal); `counts[split]` [T] how many
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
    max_goals = max(len(OBJECTS), len(ZONES))
    max_p = max(len(t.seen) + len(t.unseen) for t in tasks)
    ids = np.zeros((len(tasks), len(OBJECTS), max_goals, max_p), np.int32)
    for ti, task in enumerate(tasks):
        templates = task.seen + task.unseen
        goals = goal_names(task)
        for ci, gi, pi in itertools.product(range(len(OBJECTS)), range(max_goals), range(max_p)):
            if task.goal_kind == "object" and ci == gi:
                ids[ti, ci, gi, pi] = -1   # an object on itself: never sampled
                continue
            goal = goals[gi % len(goals)]
            text = templates[pi % len(templates)].format(obj=OBJECTS[ci], goal=goal)
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
