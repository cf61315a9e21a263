"""The MJX tabletop environment: functional reset/step/step_chunk, jit- and vmap-able.

Action f32[7] = [dx, dy, dz, droll, dpitch, dyaw, gripper] (Bridge convention). Translations are
metres and rotations radians per control step, clipped to +-max_delta_pos / +-max_delta_rot
(config.env.max_delta_pos, .max_delta_rot); gripper in [0, 1], 1 = open, 0 = closed (the finger
position target is proportional: 0.5 = half closed). The end effector (a mocap body) follows the
commanded pose, interpolated linearly over the `substeps` physics steps of one control step; its
position is clipped to the workspace box and roll/pitch to +-max_tilt.

Observation (unbatched; vmap adds the batch axis):
  images: uint8 [V, H, W, 3], V = 2: index 0 = head camera, 1 = wrist camera.
  state: f32 [7] = [x, y, z, roll, pitch, yaw, gripper opening in [0, 1], 1 = fully open]; with
    privileged_state, f32 [11]: those 7, then the instructed object's xy and the goal's xy in metres
    (grounding_targets' first four values: the truth a policy otherwise has to read from the images).
  instruction_id: int32 [] index into env.instructions.   task_id: int32 [] index into env.task_names.

Episodes end (`done`) when the task's success predicate holds or after the task's horizon. A done
state is frozen: stepping it changes nothing and gives reward 0 (AutoReset resets it instead).
"""
from __future__ import annotations

import contextlib
import copy
import io
import math
import sys
from typing import Any

import jax
import jax.numpy as jnp
import mujoco
import numpy as np
from flax import struct

from vlambpo_jax.envs import render as render_lib
from vlambpo_jax.envs import scene as S
from vlambpo_jax.envs import tasks as tasks_lib

# Importing mujoco.mjx probes its optional NVIDIA Warp backend and prints "Failed to import warp: No
# module named 'warp'" (and the same for mujoco_warp) when it is not installed. That is the normal case
# here (MJX's JAX backend is used), and a new user reads it as an error: drop exactly those lines.
WARP_ABSENT_LINES = ("Failed to import warp: No module named 'warp'",
                     "Failed to import mujoco_warp: No module named 'warp'")
with contextlib.redirect_stdout(io.StringIO()) as _mjx_import_output:
    from mujoco import mjx
sys.stdout.write("".join(line for line in _mjx_import_output.getvalue().splitlines(keepends=True)
                         if line.strip() not in WARP_ABSENT_LINES))

OBJECT_GEOMS = tuple(f"obj{i}" for i in range(S.NUM_OBJECTS))   # the drawn geom of each object
RENDERED_GEOMS = ("table", "zone0", "zone1", "palm", "finger_l", "finger_r") + OBJECT_GEOMS
SHADOW_CASTERS = ("palm", "finger_l", "finger_r") + OBJECT_GEOMS
WORKSPACE_LO = np.array([-0.22, -0.22, 0.012], np.float32)   # tool centre point bounds
WORKSPACE_HI = np.array([0.22, 0.22, 0.30], np.float32)
PRIVILEGED_POSITIONS = slice(7, 11)   # privileged state: instructed object xy, goal xy (grounding targets 0:4)
SLOT_SPACING = 0.11     # initial positions: a 3x3 grid of slots, jittered
SLOT_JITTER = 0.015


@struct.dataclass
class State:
    """One environment state (a pytree; batched states have a leading axis on every leaf)."""
    data: mjx.Data
    obs: dict[str, jax.Array]
    reward: jax.Array      # f32 [] reward of the last step
    done: jax.Array        # bool []
    success: jax.Array     # bool [] task predicate held at the last step (stays True once done)
    info: dict[str, Any]   # task_id, obj, goal, instruction_id, step, ee_pos, ee_rpy, grip, rgb, rng,
    #                        diverged (the physics went non-finite: episode ended as a failure)


def quat_from_rpy(rpy):
    """Extrinsic x-y-z (roll, pitch, yaw) -> MuJoCo quaternion (w, x, y, z); R = Rz Ry Rx."""
    r, p, y = rpy[..., 0] / 2, rpy[..., 1] / 2, rpy[..., 2] / 2
    cr, sr, cp, sp, cy, sy = jnp.cos(r), jnp.sin(r), jnp.cos(p), jnp.sin(p), jnp.cos(y), jnp.sin(y)
    return jnp.stack([cr * cp * cy + sr * sp * sy, sr * cp * cy - cr * sp * sy,
                      cr * sp * cy + sr * cp * sy, cr * cp * sy - sr * sp * cy], -1)


def _local_axes(q):
    w, x, y, z = q[0], q[1], q[2], q[3]
    ax = jnp.array([1 - 2 * (y * y + z * z), 2 * (x * y + w * z), 2 * (x * z - w * y)])   # local x
    ay = jnp.array([2 * (x * y - w * z), 1 - 2 * (x * x + z * z), 2 * (y * z + w * x)])   # local y
    return ax, ay


def box_yaw(q):
    """Yaw (mod pi/2) of a box seen from above, whichever face it rests on: the heading of its most
    horizontal local axis. q: quaternion (w, x, y, z)."""
    ax, ay = _local_axes(q)
    v = jnp.where(jnp.abs(ax[2]) < jnp.abs(ay[2]), ax, ay)
    return jnp.arctan2(v[1], v[0])


def long_axis_yaw(q):
    """Yaw (mod pi) of an oblong box's long (local x) axis seen from above; box_yaw when that axis
    points (mostly) up, i.e. the box stands on its square end."""
    ax, _ = _local_axes(q)
    return jnp.where(jnp.abs(ax[2]) < 0.7, jnp.arctan2(ax[1], ax[0]), box_yaw(q))


def object_yaw(spec: S.ObjectSpec, q):
    """The grasp-relevant yaw of an object (see ObjectSpec.yaw_period); 0 for a cylinder."""
    if spec.yaw_period == 0.0:
        return jnp.zeros(())
    return box_yaw(q) if abs(spec.yaw_period - math.pi / 2) < 1e-6 else long_axis_yaw(q)


def _tree_where(cond, a, b):
    return jax.tree.map(lambda x, y: jnp.where(cond, x, y), a, b)


class TabletopEnv:
    """Batched MJX tabletop manipulation with language tasks. Build with `make_env(config)`.

    Args:
      task_names: registry names (vlambpo_jax.envs.tasks.REGISTRY) of the task set.
      horizons: control steps per episode for each task (same order), or None for the defaults.
      image_size: square view resolution.
      instruction_split: 'seen' or 'unseen': which paraphrases reset() samples.
      physics: dict of scene.scene_xml() arguments (timestep, solver_iterations, ...).
      substeps: physics steps per control step.
      max_delta_pos, max_delta_rot, max_tilt: action scale and orientation limits (m, rad).
      shadows: renderer shadows.
    """

    views = ("head", "wrist")

    def __init__(self, task_names=("pick", "push", "place", "stack"), horizons=None, image_size=32,
                 instruction_split="seen", physics=None, substeps=4, max_delta_pos=0.015,
                 max_delta_rot=0.1, max_tilt=0.5, shadows=True, privileged_state=False):
        if instruction_split not in ("seen", "unseen"):
            raise ValueError(f"instruction_split must be 'seen' or 'unseen', got {instruction_split!r}")
        self.tasks = tasks_lib.get_tasks(list(task_names))
        self.task_names = tuple(t.name for t in self.tasks)
        hz = [t.horizon for t in self.tasks] if horizons is None else [int(h) for h in horizons]
        if len(hz) != len(self.tasks) or min(hz) < 1:
            raise ValueError(f"horizons {hz} must give one positive horizon per task {self.task_names}")
        self.horizons = tuple(hz)
        self.image_size = int(image_size)
        self.instruction_split = instruction_split
        self.physics = dict(physics or {})
        self.substeps = int(substeps)
        self.max_delta_pos = float(max_delta_pos)
        self.max_delta_rot = float(max_delta_rot)
        self.max_tilt = float(max_tilt)
        self.shadows = bool(shadows)
        self.privileged_state = bool(privileged_state)

        self.mj_model = mujoco.MjModel.from_xml_string(S.scene_xml(**self.physics))
        # On this process's own device: MJX's default, global device 0, belongs to process 0 only.
        self._device = jax.local_devices()[0]
        self.mjx_model = mjx.put_model(self.mj_model, device=self._device, impl="jax")
        m = self.mj_model
        self._ee_mocap = int(m.body_mocapid[m.body("ee_target").id])
        self._ee_qadr = int(m.jnt_qposadr[m.joint("ee").id])
        self._zone_mocap = np.array([m.body_mocapid[m.body(f"zone{i}").id] for i in range(S.NUM_ZONES)])
        self._obj_qadr = np.array([m.jnt_qposadr[m.joint(f"obj{i}").id] for i in range(S.NUM_OBJECTS)])
        self._obj_dadr = np.array([m.jnt_dofadr[m.joint(f"obj{i}").id] for i in range(S.NUM_OBJECTS)])
        self._finger_qadr = np.array([m.jnt_qposadr[m.joint(n).id] for n in ("finger_l", "finger_r")])
        self.renderer = self.make_renderer(self.image_size)
        self._rendered_objs = np.array([RENDERED_GEOMS.index(g) for g in OBJECT_GEOMS])
        self._rendered_zones = np.array([RENDERED_GEOMS.index(f"zone{i}") for i in range(S.NUM_ZONES)])
        self.table = tasks_lib.build_instructions(self.tasks)
        self.instructions = self.table.strings
        self._goal_kind = np.array([{"none": 0, "zone": 1, "object": 2}[t.goal_kind] for t in self.tasks],
                                   np.int32)
        self._data0 = mjx.make_data(self.mjx_model, device=self._device)
        self._slots = np.array([(x, y) for x in (-1, 0, 1) for y in (-1, 0, 1)], np.float32) * SLOT_SPACING

    # ----------------------------------------------------------------------------------- helpers
    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    @property
    def max_horizon(self) -> int:
        return max(self.horizons)

    def make_renderer(self, size: int, shadows: bool | None = None) -> render_lib.Renderer:
        """A renderer for both views at another resolution (e.g. for videos)."""
        return render_lib.Renderer(self.mj_model, self.views, size, size, RENDERED_GEOMS,
                                   shadow_casters=SHADOW_CASTERS,
                                   shadows=self.shadows if shadows is None else shadows)

    def with_split(self, split: str) -> "TabletopEnv":
        """The same env sampling instructions from the other paraphrase split."""
        if split not in ("seen", "unseen"):
            raise ValueError(f"instruction_split must be 'seen' or 'unseen', got {split!r}")
        other = copy.copy(self)
        other.instruction_split = split
        return other

    def state_arrays(self, state: State) -> dict[str, jax.Array]:
        """Every leaf of a (batched) State by its key path ('data.qpos', "info['rng']", ...): what
        `restore` needs to rebuild the state bit for bit (savable with np.savez)."""
        return {jax.tree_util.keystr(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(state)}

    def restore(self, arrays: dict) -> State:
        """The State `state_arrays` recorded (any leading batch shape): the simulator continues from it
        exactly as from the original (the branch roots of MBPO with a perfect world model).
        Raises KeyError naming a missing leaf."""
        template = jax.eval_shape(self.reset, jax.random.PRNGKey(0))
        paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(template)]
        missing = [p for p in paths if p not in arrays]
        if missing:
            raise KeyError(f"simulator state arrays lack {missing[0]} ({len(missing)} of {len(paths)} "
                           "leaves missing): record them with TabletopEnv.state_arrays")
        return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(template),
                                            [jnp.asarray(arrays[p]) for p in paths])

    def render_poses(self, data: mjx.Data) -> dict[str, jax.Array]:
        """The pose arrays the renderer reads (small enough to record every step for videos)."""
        return dict(geom_xpos=data.geom_xpos, geom_xmat=data.geom_xmat, cam_xpos=data.cam_xpos,
                    cam_xmat=data.cam_xmat)

    def render(self, poses: dict, rgb, renderer=None) -> jax.Array:
        r = renderer or self.renderer
        return r(poses["geom_xpos"], poses["geom_xmat"], poses["cam_xpos"], poses["cam_xmat"], rgb)

    def scene(self, state: State) -> tasks_lib.Scene:
        """Privileged scene quantities (for success predicates and scripted experts)."""
        return self._scene(state.data, state.info)

    def _scene(self, d: mjx.Data, info: dict) -> tasks_lib.Scene:
        obj_pos = jnp.stack([d.qpos[a:a + 3] for a in self._obj_qadr])
        obj_yaw = jnp.stack([object_yaw(o, d.qpos[a + 3:a + 7]) for o, a in zip(S.OBJECTS, self._obj_qadr)])
        fingers = d.qpos[self._finger_qadr]
        gap = 2 * S.FINGER_OPEN_HALF_GAP - fingers[0] - fingers[1]
        return tasks_lib.Scene(obj_pos=obj_pos, obj_yaw=obj_yaw, zone_pos=d.mocap_pos[self._zone_mocap],
                               ee_pos=info["ee_pos"], tcp_pos=d.qpos[self._ee_qadr:self._ee_qadr + 3],
                               ee_rpy=info["ee_rpy"], gap=gap, obj=info["obj"],
                               goal=info["goal"])

    def grounding_targets(self, state: State) -> jax.Array:
        """What the instruction refers to, in metres, for the policy's grounding co-training (unbatched):
        f32[13] = instructed object xy, goal xy (the zone for push/place, the base object for stack, the
        object itself for pick), the xy of every object in fixed order (red cube, green cylinder, blue
        block), and the commanded tool centre point xyz."""
        return self._grounding_targets(state.data, state.info)

    def _grounding_targets(self, data: mjx.Data, info: dict) -> jax.Array:
        sc = self._scene(data, info)
        kind = jnp.asarray(self._goal_kind)[info["task_id"]]
        target = sc.obj_pos[sc.obj, :2]
        goal = jnp.where(kind == 1, sc.zone_pos[jnp.clip(sc.goal, 0, S.NUM_ZONES - 1), :2],
                         jnp.where(kind == 2, sc.obj_pos[sc.goal, :2], target))
        return jnp.concatenate([target, goal, sc.obj_pos[:, :2].reshape(-1), sc.ee_pos]).astype(jnp.float32)

    def _success(self, state: State) -> jax.Array:
        sc = self.scene(state)
        return jax.lax.switch(state.info["task_id"], [t.success for t in self.tasks], sc)

    def observe(self, state: State) -> dict:
        """A state's observation, rendered (for states stepped with render=False)."""
        return self._observe(state.data, state.info)

    def _observe(self, data: mjx.Data, info: dict, render: bool = True, images=None) -> dict:
        fingers = data.qpos[self._finger_qadr]
        opening = 1.0 - (fingers[0] + fingers[1]) / (2 * S.FINGER_TRAVEL)
        state = jnp.concatenate([info["ee_pos"], info["ee_rpy"], opening[None]]).astype(jnp.float32)
        if self.privileged_state:
            state = jnp.concatenate([state, self._grounding_targets(data, info)[:4]])
        if render:
            images = self.render(self.render_poses(data), info["rgb"])
        elif images is None:
            images = jnp.zeros((len(self.views), self.image_size, self.image_size, 3), jnp.uint8)
        return {"images": images, "state": state, "instruction_id": info["instruction_id"],
                "task_id": info["task_id"]}

    # ------------------------------------------------------------------------------------- reset
    def reset(self, key: jax.Array, task_id: jax.Array | int | None = None,
              target: jax.Array | int | None = None) -> State:
        """New episode. `task_id` (index into task_names) defaults to a uniformly random task; `target`
        (an object index; negative = random) overrides the instructed object and leaves the scene (poses,
        colours) as the key draws it."""
        ks = jax.random.split(key, 11)
        if task_id is None:
            task_id = jax.random.randint(ks[0], (), 0, self.num_tasks)
        task_id = jnp.asarray(task_id, jnp.int32)
        obj = jax.random.randint(ks[1], (), 0, S.NUM_OBJECTS)
        if target is not None:
            obj = jnp.where(jnp.asarray(target) >= 0, jnp.asarray(target, jnp.int32), obj)
        kind = jnp.asarray(self._goal_kind)[task_id]
        zone = jax.random.randint(ks[2], (), 0, S.NUM_ZONES)
        other = (obj + 1 + jax.random.randint(ks[2], (), 0, S.NUM_OBJECTS - 1)) % S.NUM_OBJECTS
        goal = jnp.where(kind == 1, zone, jnp.where(kind == 2, other, 0)).astype(jnp.int32)

        slots = jax.random.permutation(ks[3], jnp.asarray(self._slots))
        xy = slots[:S.NUM_OBJECTS + S.NUM_ZONES] + jax.random.uniform(
            ks[4], (S.NUM_OBJECTS + S.NUM_ZONES, 2), minval=-SLOT_JITTER, maxval=SLOT_JITTER)
        yaw = jax.random.uniform(ks[5], (S.NUM_OBJECTS,), minval=-math.pi / 2, maxval=math.pi / 2)
        qpos = self._data0.qpos
        for i, a in enumerate(self._obj_qadr):
            pos = jnp.array([xy[i, 0], xy[i, 1], S.OBJECT_HALF_HEIGHT[i]])
            quat = quat_from_rpy(jnp.array([0.0, 0.0, yaw[i]]))
            qpos = qpos.at[a:a + 7].set(jnp.concatenate([pos, quat]))
        ke = jax.random.split(ks[6], 2)
        ee_pos = jnp.concatenate([jax.random.uniform(ke[0], (2,), minval=-0.05, maxval=0.05),
                                  jax.random.uniform(ke[1], (1,), minval=0.12, maxval=0.16)])
        ee_rpy = jnp.array([0.0, 0.0, 1.0]) * jax.random.uniform(ks[7], (), minval=-0.3, maxval=0.3)
        qpos = qpos.at[self._ee_qadr:self._ee_qadr + 7].set(
            jnp.concatenate([ee_pos, quat_from_rpy(ee_rpy)]))
        mocap_pos = self._data0.mocap_pos.at[self._ee_mocap].set(ee_pos)
        mocap_quat = self._data0.mocap_quat.at[self._ee_mocap].set(quat_from_rpy(ee_rpy))
        zones = jnp.concatenate([xy[S.NUM_OBJECTS:], jnp.zeros((S.NUM_ZONES, 1))], -1)
        mocap_pos = mocap_pos.at[self._zone_mocap].set(zones)
        data = self._data0.replace(qpos=qpos, mocap_pos=mocap_pos, mocap_quat=mocap_quat,
                                   ctrl=jnp.zeros_like(self._data0.ctrl))
        data = mjx.camlight(self.mjx_model, mjx.kinematics(self.mjx_model, data))

        # Per-episode colour jitter of objects and zones (brightness and a little hue).
        rgb = jnp.asarray(self.renderer.default_rgb)
        movable = np.concatenate([self._rendered_objs, self._rendered_zones])
        scale = jax.random.uniform(ks[8], (len(movable), 1), minval=0.85, maxval=1.1)
        tint = jax.random.uniform(ks[8], (len(movable), 3), minval=-0.04, maxval=0.04)
        rgb = rgb.at[movable].set(jnp.clip(rgb[movable] * scale + tint, 0.0, 1.0))

        split = self.instruction_split
        p = jnp.asarray(self.table.offset[split])[task_id] + jax.random.randint(
            ks[9], (), 0, jnp.asarray(self.table.counts[split])[task_id])
        instruction_id = jnp.asarray(self.table.ids)[task_id, obj, goal, p]
        info = dict(task_id=task_id, obj=obj, goal=goal, instruction_id=instruction_id,
                    step=jnp.zeros((), jnp.int32), ee_pos=ee_pos.astype(jnp.float32),
                    ee_rpy=ee_rpy.astype(jnp.float32), grip=jnp.ones((), jnp.float32), rgb=rgb,
                    rng=ks[10], diverged=jnp.zeros((), bool))
        obs = self._observe(data, info)
        zero = jnp.zeros((), jnp.float32)
        return State(data=data, obs=obs, reward=zero, done=jnp.zeros((), bool),
                     success=jnp.zeros((), bool), info=info)

    # -------------------------------------------------------------------------------------- step
    def control(self, info: dict, action: jax.Array):
        """Clipped action -> (new ee position, new ee rpy, finger ctrl [2], gripper command)."""
        action = jnp.asarray(action, jnp.float32)
        dpos = jnp.clip(action[:3], -self.max_delta_pos, self.max_delta_pos)
        drot = jnp.clip(action[3:6], -self.max_delta_rot, self.max_delta_rot)
        grip = jnp.clip(action[6], 0.0, 1.0)
        pos = jnp.clip(info["ee_pos"] + dpos, WORKSPACE_LO, WORKSPACE_HI)
        rpy = info["ee_rpy"] + drot
        lim = jnp.array([self.max_tilt, self.max_tilt, math.pi])
        rpy = jnp.clip(rpy, -lim, lim)
        ctrl = jnp.full((2,), (1.0 - grip) * S.FINGER_TRAVEL)
        return pos, rpy, ctrl, grip

    def substep_pose(self, pos0, rpy0, pos1, rpy1, i):
        """End-effector target (position, quaternion) for physics substep i (0-based) of a control
        step that moves the target from pose 0 to pose 1 (linear interpolation)."""
        alpha = (i + 1) / self.substeps
        return pos0 + alpha * (pos1 - pos0), quat_from_rpy(rpy0 + alpha * (rpy1 - rpy0))

    def _advance(self, state: State, action: jax.Array) -> State:
        """One control step without rendering (obs images are left as they were)."""
        info = state.info
        pos, rpy, ctrl, grip = self.control(info, action)

        def substep(data, i):
            p, q = self.substep_pose(info["ee_pos"], info["ee_rpy"], pos, rpy, i)
            data = data.replace(mocap_pos=data.mocap_pos.at[self._ee_mocap].set(p),
                                mocap_quat=data.mocap_quat.at[self._ee_mocap].set(q), ctrl=ctrl)
            return mjx.step(self.mjx_model, data), None

        data, _ = jax.lax.scan(substep, state.data, jnp.arange(self.substeps))
        # A diverged simulation (non-finite state) ends the episode as a failure, frozen before it.
        diverged = ~(jnp.all(jnp.isfinite(data.qpos)) & jnp.all(jnp.isfinite(data.qvel)))
        data = _tree_where(diverged, state.data, data)
        info = dict(info, ee_pos=jnp.where(diverged, info["ee_pos"], pos),
                    ee_rpy=jnp.where(diverged, info["ee_rpy"], rpy), grip=grip, step=info["step"] + 1,
                    diverged=info["diverged"] | diverged)
        new = state.replace(data=data, info=info)
        success = self._success(new) & ~diverged
        horizon = jnp.asarray(self.horizons, jnp.int32)[info["task_id"]]
        done = success | diverged | (info["step"] >= horizon)
        obs = self._observe(data, info, render=False, images=state.obs["images"])
        return new.replace(obs=obs, reward=success.astype(jnp.float32), done=done, success=success)

    def step(self, state: State, action: jax.Array) -> State:
        """One control step; a done state is returned unchanged (with reward 0)."""
        new = self._advance(state, action)
        new = new.replace(obs=self._observe(new.data, new.info))
        frozen = state.replace(reward=jnp.zeros_like(state.reward))
        return _tree_where(state.done, frozen, new)

    def step_chunk(self, state: State, actions: jax.Array, render: bool = True):
        """k control steps in one lax.scan; renders only the state after the chunk.

        Args:
          state: State.   actions: f32 [k, 7].
          render: False leaves obs['images'] stale (for privileged policies such as the experts).
        Returns:
          (state after the chunk, rewards f32 [k], success bool [k]). After `done` the state is frozen,
          rewards are 0 and success repeats the final flag.
        """
        state, rewards, success, _ = self.rollout_chunk(state, actions, render=render, record=False)
        return state, rewards, success

    def rollout_chunk(self, state: State, actions: jax.Array, render: bool = True, record: bool = False):
        """step_chunk that can also return the per-step render poses ([k, ...] each) for videos."""
        def body(s, a):
            new = self._advance(s, a)
            frozen = s.replace(reward=jnp.zeros_like(s.reward))
            new = _tree_where(s.done, frozen, new)
            out = (new.reward, new.success, self.render_poses(new.data) if record else None)
            return new, out

        state, (rewards, success, poses) = jax.lax.scan(body, state, actions)
        if render:
            state = state.replace(obs=self._observe(state.data, state.info))
        return state, rewards, success, poses


class AutoReset:
    """Wraps an env for training loops: stepping a done state first resets it (new random task and
    scene from the state's own rng), then steps. The returned state of the terminal step keeps its
    terminal observation, reward and done=True; the next call starts the new episode."""

    def __init__(self, env: TabletopEnv):
        self.env = env

    def __getattr__(self, name):
        return getattr(self.env, name)

    def reset(self, key, task_id=None, target=None) -> State:
        return self.env.reset(key, task_id, target)

    def _maybe_reset(self, state: State) -> State:
        fresh = self.env.reset(jax.random.fold_in(state.info["rng"], state.info["step"]))
        return _tree_where(state.done, fresh, state)

    def step(self, state: State, action) -> State:
        return self.env.step(self._maybe_reset(state), action)

    def step_chunk(self, state: State, actions, render: bool = True):
        return self.env.step_chunk(self._maybe_reset(state), actions, render=render)


def make_env(config, instruction_split: str | None = None, image_size: int | None = None) -> TabletopEnv:
    """Builds the env from a full config (config.env + config.image_size)."""
    e = config.env
    missing = [name for name in e.tasks if name not in e.horizons]
    if missing:
        raise ValueError(f"config.env.horizons: no horizon for task(s) {missing}")
    horizons = [int(e.horizons[name]) for name in e.tasks]
    physics = {k: e.physics[k] for k in e.physics}
    return TabletopEnv(task_names=tuple(e.tasks), horizons=horizons,
                       image_size=image_size or config.image_size,
                       instruction_split=instruction_split or e.instruction_split, physics=physics,
                       substeps=e.substeps, max_delta_pos=e.max_delta_pos, max_delta_rot=e.max_delta_rot,
                       max_tilt=e.max_tilt, shadows=e.shadows, privileged_state=e.privileged_state)
