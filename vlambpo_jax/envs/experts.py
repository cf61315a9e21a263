"""Scripted experts: closed-loop, stateless controllers over the privileged scene.

Each expert maps (env, state) -> action f32[7] from privileged quantities (object poses, zone positions,
finger gap, commanded end-effector pose); the phase of the motion is read off the scene itself
(aligned? at grasp height? holding?), so no expert memory is needed and any state is a valid start.
`expert_action` adds Gaussian noise (std = noise x the action scale, per dim) for demonstrations.

pick/place/stack: rise to hover height, move above the object while turning the gripper to the
object's grasp yaw (the cube: mod 90 degrees; the block: across its short side, mod 180 degrees; the
cylinder: any), descend to its centre, close, then lift (pick) or carry to above the goal, lower until
the object rests there (on a square at its own half height, on another object at the sum of both half
heights) and open. push: close the gripper, come down behind the object on the line from the goal
through it (at its extent along that line), push along that line; back off and re-approach when the
object slides off it.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from vlambpo_jax.envs import scene as S
from vlambpo_jax.envs import tasks as tasks_lib

HOVER = 0.07          # hover height of the tool centre above an object's centre
CARRY_Z = 0.15        # object centre height while carrying (clears any two objects stacked)
CLOSED_GAP = 2 * S.FINGER_OPEN_HALF_GAP - 2 * S.FINGER_TRAVEL
CARRY_MAX = 0.009      # m per step while holding an object (slower than the 0.015 maximum)
PUSH_SPEED = 0.007     # m per step while pushing


def _wrap(a, period):
    return (a + period / 2) % period - period / 2


def _toward(current, target, gain=1.0):
    return gain * (target - current)


def _rot(scene, yaw_target, period):
    """Rotation deltas: level roll/pitch, turn yaw to yaw_target (mod period)."""
    dyaw = _wrap(yaw_target - scene.ee_rpy[2], period)
    return jnp.array([-scene.ee_rpy[0], -scene.ee_rpy[1], dyaw])


def _table(values):
    return jnp.asarray(np.asarray(values, np.float32))


# Per object: footprint half extents along its local x and y (the cylinder: its radius), cylinder flag.
_FOOT = np.array([o.size[:2] if o.shape == "box" else (o.size[0], o.size[0]) for o in S.OBJECTS], np.float32)
_IS_CYL = np.array([o.shape == "cylinder" for o in S.OBJECTS])
_PERIOD = np.array([o.yaw_period for o in S.OBJECTS], np.float32)


def _extent(scene: tasks_lib.Scene, direction):
    """Half extent of the target object's footprint along a horizontal unit direction."""
    foot = _table(_FOOT)[scene.obj]
    phi = jnp.arctan2(direction[1], direction[0]) - scene.obj_yaw[scene.obj]
    box = foot[0] * jnp.abs(jnp.cos(phi)) + foot[1] * jnp.abs(jnp.sin(phi))
    return jnp.where(jnp.asarray(_IS_CYL)[scene.obj], foot[0], box)


def _grasp_rot(scene: tasks_lib.Scene):
    """Rotation deltas toward the target object's grasp yaw (none for a cylinder)."""
    period = _table(_PERIOD)[scene.obj]
    any_yaw = period == 0
    target = jnp.where(any_yaw, scene.ee_rpy[2], scene.obj_yaw[scene.obj])
    return _rot(scene, target, jnp.where(any_yaw, 2 * math.pi, period))


def _grasp(scene: tasks_lib.Scene, goal_xyz, lift_only):
    """Pick (lift_only) or pick-and-place the target object at goal_xyz (its centre)."""
    ee, obj = scene.ee_pos, scene.obj_pos[scene.obj]
    width = _table(S.OBJECT_GRASP_WIDTH)[scene.obj]
    d_xy = jnp.linalg.norm(obj[:2] - ee[:2])
    tcp = scene.tcp_pos
    between = (jnp.linalg.norm(obj[:2] - tcp[:2]) < 0.025) & (jnp.abs(obj[2] - tcp[2]) < 0.025)
    holding = between & (scene.gap < width + 0.0015) & (scene.gap > CLOSED_GAP + 0.004)
    # Already put down at the goal (place/stack): let go and back off instead of grasping again.
    at_goal = (~lift_only & (jnp.linalg.norm(goal_xyz[:2] - obj[:2]) < 0.012)
               & (jnp.abs(obj[2] - goal_xyz[2]) < 0.006))
    rot = _grasp_rot(scene)

    # --- not holding: approach, descend, close.
    low = ee[2] < obj[2] + HOVER - 0.02
    at_height = jnp.abs(ee[2] - obj[2]) < 0.005
    yaw_ok = jnp.abs(rot[2]) < 0.03
    aligned = (d_xy < jnp.where(at_height, 0.012, 0.005)) & (yaw_ok | at_height)
    hover = jnp.array([obj[0], obj[1], obj[2] + HOVER])
    rise = jnp.array([0.0, 0.0, 1.0])
    move = _toward(ee, hover)
    approach = jnp.where(low & (d_xy > 0.02), rise, move)
    descend = jnp.array([obj[0] - ee[0], obj[1] - ee[1], obj[2] - ee[2]])
    fully_closed = scene.gap < CLOSED_GAP + 0.004
    free_move = jnp.where(aligned & ~fully_closed, descend, approach)
    free_move = jnp.where(fully_closed & ~between, rise, free_move)
    free_grip = jnp.where(aligned & at_height & ~fully_closed, 0.0, 1.0)
    free_move = jnp.where(at_goal, rise, free_move)
    free_grip = jnp.where(at_goal, 1.0, free_grip)

    # --- holding: lift, or carry above the goal, lower, open.
    offset = goal_xyz[:2] - obj[:2]
    over_goal = jnp.linalg.norm(offset) < 0.006
    carry_low = obj[2] < CARRY_Z - 0.02
    carry = jnp.where(carry_low & (jnp.linalg.norm(offset) > 0.02), rise,
                      jnp.array([offset[0], offset[1], CARRY_Z - obj[2]]))
    lower = jnp.array([offset[0], offset[1], goal_xyz[2] - obj[2]])
    placed = jnp.abs(obj[2] - goal_xyz[2]) < 0.004
    held_move = jnp.where(over_goal, lower, carry)
    held_grip = jnp.where(over_goal & placed, 1.0, 0.0)
    lift = jnp.array([0.0, 0.0, 1.0])
    held_move = jnp.where(lift_only, lift, held_move)
    held_grip = jnp.where(lift_only, 0.0, held_grip)

    move = jnp.where(holding, jnp.clip(held_move, -CARRY_MAX, CARRY_MAX), free_move)
    grip = jnp.where(holding, held_grip, free_grip)
    rot = jnp.where(holding, jnp.array([-scene.ee_rpy[0], -scene.ee_rpy[1], 0.0]), rot)
    return jnp.concatenate([move, rot, grip[None]])


def _push(scene: tasks_lib.Scene, goal_xy):
    ee, obj = scene.ee_pos, scene.obj_pos[scene.obj]
    to_goal = goal_xy - obj[:2]
    direction = to_goal / jnp.maximum(jnp.linalg.norm(to_goal), 1e-6)
    ext = _extent(scene, direction)
    standoff = ext + 0.03
    pre = obj[:2] - direction * standoff
    rel = ee[:2] - obj[:2]
    along = rel @ direction
    lateral = rel - along * direction
    push_z = 0.015     # tool centre height: fingertips 5 mm above the table, low enough not to tip the block
    # Behind the object and on the line: the commanded tool centre at least the object's smallest half
    # extent (a turned block touches the pusher nearer than its extent along the line) plus 3 mm back;
    # the pusher's front is 12 mm ahead of it, and the commanded pose leads the gripper by ~4 mm.
    near_side = jnp.min(_table(_FOOT)[scene.obj])
    behind = (along < -(near_side + 0.003)) & (jnp.linalg.norm(lateral) < 0.012)
    low = ee[2] < push_z + 0.03
    near_pre = jnp.linalg.norm(ee[:2] - pre) < 0.008
    # The push: along the line, correcting sideways drift toward the line through the object.
    push_xy = direction * PUSH_SPEED - lateral * 0.5
    push = jnp.array([push_xy[0], push_xy[1], push_z - ee[2]])
    reposition = jnp.array([pre[0] - ee[0], pre[1] - ee[1], obj[2] + HOVER - ee[2]])
    descend = jnp.array([pre[0] - ee[0], pre[1] - ee[1], push_z - ee[2]])
    # Off the line or too close: back away from the object while rising (rising straight up in contact
    # would drag it up by friction and tip it).
    back_off = jnp.array([-direction[0] * 0.01, -direction[1] * 0.01, 0.015])
    move = jnp.where(low, jnp.where(behind, push, back_off), jnp.where(near_pre, descend, reposition))
    # Face the push direction with the gripper's x axis (the wider closed-finger side is its y extent).
    yaw_target = jnp.arctan2(direction[1], direction[0])
    rot = _rot(scene, yaw_target, math.pi)
    return jnp.concatenate([move, rot, jnp.zeros((1,))])


def scripted_action(env, state) -> jax.Array:
    """The zero-noise expert action f32[7] for one (unbatched) state; raw, the env clips it."""
    sc = env.scene(state)
    zone = sc.zone_pos[jnp.clip(sc.goal, 0, S.NUM_ZONES - 1)]
    base = sc.obj_pos[sc.goal]
    h_obj, h_base = tasks_lib.half_height(sc.obj), tasks_lib.half_height(sc.goal)
    place_goal = jnp.array([zone[0], zone[1], h_obj])
    stack_goal = jnp.array([base[0], base[1], base[2] + h_base + h_obj + 0.002])
    branches = {
        "pick": lambda: _grasp(sc, place_goal, True),
        "place": lambda: _grasp(sc, place_goal, False),
        "stack": lambda: _grasp(sc, stack_goal, False),
        "push": lambda: _push(sc, zone[:2]),
    }
    return jax.lax.switch(state.info["task_id"], [branches[name] for name in env.task_names])


def expert_action(env, state, key, noise: float = 0.0) -> jax.Array:
    """Expert action with Gaussian noise (std = noise x action scale) on the 6 motion dims; the
    gripper command is flipped with probability noise / 10. Returned clipped to the action scale."""
    a = scripted_action(env, state)
    scale = jnp.array([env.max_delta_pos] * 3 + [env.max_delta_rot] * 3)
    move = jnp.clip(a[:6], -scale, scale)
    k1, k2 = jax.random.split(key)
    move = jnp.clip(move + noise * scale * jax.random.normal(k1, (6,)), -scale, scale)
    flip = jax.random.uniform(k2) < noise / 10
    grip = jnp.where(flip, 1.0 - a[6], a[6])
    return jnp.concatenate([move, grip[None]]).astype(jnp.float32)


def expert_policy(env, noise: float = 0.0):
    """A privileged chunk policy for evaluation.evaluate(..., privileged=True): one closed-loop step
    per call, `(params, state, key) -> f32[1, 7]`."""
    def policy(params, state, key):
        del params
        return expert_action(env, state, key, noise)[None]
    return policy
