"""MJX env physics vs native MuJoCo, and the functional API (reset/step/step_chunk/AutoReset)."""
import chex
import jax
import jax.numpy as jnp
import mujoco
import numpy as np
import pytest

from vlambpo_jax.envs import experts, tabletop
from vlambpo_jax.envs import scene as S


@pytest.fixture(scope="module")
def env():
    return tabletop.TabletopEnv()


def _parity_actions(env, state, n):
    """A fixed sequence: fly toward the target object, come down next to it (not touching), close and
    reopen the fingers in the air, turn and tilt; the objects rest on the table the whole time (contacts:
    box-plane, the cylinder through its box foot)."""
    obj = np.asarray(env.scene(state).obj_pos)[int(state.info["obj"])]
    pos = np.asarray(state.info["ee_pos"]).copy()
    acts = []
    for t in range(n):
        target = obj + np.array([0.0, 0.0, 0.10 if t < 20 else 0.07])
        grip = 0.0 if 20 <= t < 35 else 1.0
        d = np.clip(target - pos, -env.max_delta_pos, env.max_delta_pos)
        pos = np.clip(pos + d, tabletop.WORKSPACE_LO, tabletop.WORKSPACE_HI)
        rot = [0.02 * np.sin(t / 5), -0.02 * np.cos(t / 7), 0.05]
        acts.append(np.concatenate([d, rot, [grip]]))
    return np.asarray(acts, np.float32)


def test_native_mujoco_parity(env):
    """Same initial state and 50 control steps: MJX env vs mj_step agree on qpos within 1e-4."""
    state = jax.jit(env.reset)(jax.random.PRNGKey(7), 0)
    actions = _parity_actions(env, state, 50)
    final, _, _ = jax.jit(lambda s, a: env.step_chunk(s, a, render=False))(state, jnp.asarray(actions))

    m = env.mj_model
    d = mujoco.MjData(m)
    d.qpos[:] = np.asarray(state.data.qpos)
    d.qvel[:] = np.asarray(state.data.qvel)
    d.mocap_pos[:] = np.asarray(state.data.mocap_pos)
    d.mocap_quat[:] = np.asarray(state.data.mocap_quat)
    info = jax.tree.map(np.asarray, state.info)
    for a in actions:   # the env's own control law, stepped natively
        pos, rpy, ctrl, _ = (np.asarray(x) for x in env.control(info, a))
        for i in range(env.substeps):
            p, q = env.substep_pose(info["ee_pos"], info["ee_rpy"], pos, rpy, i)
            d.mocap_pos[env._ee_mocap], d.mocap_quat[env._ee_mocap] = np.asarray(p), np.asarray(q)
            d.ctrl[:] = ctrl
            mujoco.mj_step(m, d)
        info = dict(info, ee_pos=pos, ee_rpy=rpy)
    mjx_qpos = np.asarray(final.data.qpos)
    # Not a trivial comparison: the gripper moved and turned and the fingers closed and opened.
    assert np.abs(d.qpos - np.asarray(state.data.qpos)).max() > 0.05
    assert d.ncon > 0
    # Every object rests on the table in contact with it (the cylinder through its box foot).
    plane = m.geom("table_plane").id
    touching = {m.geom(int(g)).name for c in d.contact[:d.ncon] for g in (c.geom1, c.geom2)
                if plane in (c.geom1, c.geom2)}
    assert {"obj0", "obj1_foot", "obj2"} <= touching, touching
    err = np.abs(mjx_qpos - d.qpos).max()
    assert err < 1e-4, f"qpos differs by {err:.2e} after 50 steps"


def test_reset_and_step_shapes(env):
    keys = jax.random.split(jax.random.PRNGKey(0), 3)
    states = jax.jit(jax.vmap(env.reset))(keys)
    chex.assert_shape(states.obs["images"], (3, 2, env.image_size, env.image_size, 3))
    assert states.obs["images"].dtype == jnp.uint8
    chex.assert_shape(states.obs["state"], (3, 7))
    assert states.obs["state"].dtype == jnp.float32
    assert states.obs["instruction_id"].dtype == jnp.int32 and states.obs["task_id"].dtype == jnp.int32
    assert all(0 <= int(i) < len(env.instructions) for i in states.obs["instruction_id"])
    actions = jnp.zeros((3, 4, 7)).at[..., 2].set(0.01).at[..., 6].set(1.0)
    chunk = jax.jit(jax.vmap(env.step_chunk))
    nxt, rewards, success = chunk(states, actions)
    chex.assert_shape(rewards, (3, 4))
    chex.assert_shape(success, (3, 4))
    assert rewards.dtype == jnp.float32 and success.dtype == jnp.bool_
    np.testing.assert_array_equal(nxt.info["step"], 4)
    # Moving up 1 cm per step, clipped at max_delta_pos: the commanded z rose by 4 cm.
    np.testing.assert_allclose(nxt.obs["state"][:, 2] - states.obs["state"][:, 2], 0.04, atol=1e-5)
    # The new images were rendered after the chunk (the gripper moved, so the pictures changed).
    assert (np.asarray(nxt.obs["images"]) != np.asarray(states.obs["images"])).any()


def test_done_state_is_frozen_and_autoreset_restarts(env):
    state = jax.jit(env.reset)(jax.random.PRNGKey(1), 0)
    state = state.replace(done=jnp.array(True))
    step = jax.jit(env.step_chunk)
    nxt, rewards, _ = step(state, jnp.ones((3, 7)) * 0.01)
    np.testing.assert_array_equal(nxt.data.qpos, state.data.qpos)
    assert float(rewards.sum()) == 0.0
    auto = tabletop.AutoReset(env)
    fresh, _, _ = jax.jit(auto.step_chunk)(state, jnp.zeros((3, 7)).at[:, 6].set(1.0))
    assert int(fresh.info["step"]) == 3 and not bool(fresh.done)


def test_instruction_splits_are_disjoint(env):
    seen_env, unseen_env = env, env.with_split("unseen")
    reset_seen = jax.jit(jax.vmap(seen_env.reset))
    reset_unseen = jax.jit(jax.vmap(unseen_env.reset))
    keys = jax.random.split(jax.random.PRNGKey(3), 64)
    seen = {env.instructions[int(i)] for i in reset_seen(keys).obs["instruction_id"]}
    unseen = {env.instructions[int(i)] for i in reset_unseen(keys).obs["instruction_id"]}
    assert seen and unseen and not seen & unseen
    # Every instruction names the target object by colour and shape ("the green cylinder").
    s = reset_seen(keys)
    for i, obj in zip(s.obs["instruction_id"], s.info["obj"]):
        assert f"the {S.OBJECTS[int(obj)].name}" in env.instructions[int(i)]


def test_objects_rest_and_each_shape_is_grasped(env):
    """Every object sits still at its own half height after reset (no interpenetration jolts), and the
    pick expert lifts each one: the cube, the cylinder (box fingers vs its convex prism in MJX) and the
    block (grasped across its short side)."""
    keys = jax.random.split(jax.random.PRNGKey(21), S.NUM_OBJECTS)

    def run(key, obj):
        state = env.reset(key, 0)   # pick
        state = state.replace(info=dict(state.info, obj=obj))
        z0 = env.scene(state).obj_pos[:, 2]
        rest, _, _ = env.step_chunk(state, jnp.zeros((10, 7)).at[:, 6].set(1.0), render=False)
        z_rest = env.scene(rest).obj_pos[:, 2]

        def body(s, k):
            return env.step_chunk(s, experts.expert_action(env, s, k)[None], render=False)[0], None
        final, _ = jax.lax.scan(body, state, jax.random.split(key, env.horizons[0]))
        return z0, z_rest, env.scene(final).obj_pos[obj, 2], final.success

    z0, z_rest, z_final, success = jax.jit(jax.vmap(run))(keys, jnp.arange(S.NUM_OBJECTS))
    np.testing.assert_allclose(np.asarray(z0), np.broadcast_to(S.OBJECT_HALF_HEIGHT, z0.shape), atol=1e-6)
    np.testing.assert_allclose(np.asarray(z_rest), np.asarray(z0), atol=1e-3)
    for i, o in enumerate(S.OBJECTS):
        assert bool(success[i]), f"{o.name} not lifted: z {float(z_final[i]):.3f}"
        assert float(z_final[i]) > o.half_height + 0.06
