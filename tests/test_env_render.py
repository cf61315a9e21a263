"""The pure-JAX renderer: geometry (projection vs pixels, ray-box and ray-cylinder intervals), shading of
the round and flat shapes, camera motion, determinism under jit/vmap."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from mujoco import mjx

from vlambpo_jax.envs import render as render_lib
from vlambpo_jax.envs import scene as S
from vlambpo_jax.envs import tabletop

SIZE = 64


@pytest.fixture(scope="module")
def env():
    return tabletop.TabletopEnv()


@pytest.fixture(scope="module")
def draw(env):
    renderer = env.make_renderer(SIZE)
    return jax.jit(lambda p, c: renderer(p["geom_xpos"], p["geom_xmat"], p["cam_xpos"], p["cam_xmat"], c,
                                         return_ids=True))


def _move_gripper(env, state, pos):
    """The same scene with the gripper (and its wrist camera) placed at `pos`, kinematics updated."""
    d = state.data
    qpos = d.qpos.at[env._ee_qadr:env._ee_qadr + 3].set(pos)
    d = d.replace(qpos=qpos, mocap_pos=d.mocap_pos.at[env._ee_mocap].set(pos))
    d = mjx.camlight(env.mjx_model, mjx.kinematics(env.mjx_model, d))
    return d


@pytest.fixture(scope="module")
def scene(env):
    """A reset state with the gripper moved to hover 9 cm above the target object."""
    state = jax.jit(env.reset)(jax.random.PRNGKey(11), 0)
    obj = env.scene(state).obj_pos[int(state.info["obj"])]
    data = jax.jit(lambda s, p: _move_gripper(env, s, p))(state, obj + jnp.array([0.0, 0.0, 0.09]))
    return state, data


def test_object_projects_to_its_pixel_centroid(env, draw, scene):
    state, data = scene
    poses = env.render_poses(data)
    _, ids = draw(poses, state.info["rgb"])
    ids = np.asarray(ids)
    checked = 0
    for view, cam in enumerate(env.renderer.cam_ids):
        for i in range(S.NUM_OBJECTS):
            g = tabletop.RENDERED_GEOMS.index(tabletop.OBJECT_GEOMS[i])
            mask = ids[view] == g
            if mask.sum() < 12:      # too small or hidden in this view
                continue
            rows, cols = np.nonzero(mask)
            centre = np.asarray(data.geom_xpos[env.renderer.geom_ids[g]])
            row, col = render_lib.project(centre, np.asarray(data.cam_xpos[cam]), np.asarray(data.cam_xmat[cam]),
                                          env.renderer.fovy[view], SIZE, SIZE)
            # The visible faces shift the centroid a little from the projected centre.
            assert abs(rows.mean() + 0.5 - row) < 2.5 and abs(cols.mean() + 0.5 - col) < 2.5, (
                f"view {env.views[view]} {S.OBJECTS[i].name}: centroid ({rows.mean():.1f}, {cols.mean():.1f}) vs "
                f"projection ({row:.1f}, {col:.1f})")
            checked += 1
    # The target object is seen by both cameras (the wrist camera hovers right above it); all three
    # objects (cube, cylinder, block) are seen by the head camera.
    assert checked >= 4


def test_wrist_view_moves_with_the_gripper(env, draw, scene):
    state, data = scene
    obj = int(state.info["obj"])
    img_a, ids_a = draw(env.render_poses(data), state.info["rgb"])
    ee = np.asarray(data.qpos[env._ee_qadr:env._ee_qadr + 3])
    data_b = jax.jit(lambda s, p: _move_gripper(env, s, p))(state, jnp.asarray(ee + np.array([0.06, 0.0, 0.0])))
    img_b, ids_b = draw(env.render_poses(data_b), state.info["rgb"])
    # The wrist camera moved rigidly with the gripper.
    wrist = env.renderer.cam_ids[1]
    np.testing.assert_allclose(np.asarray(data_b.cam_xpos[wrist] - data.cam_xpos[wrist]), [0.06, 0, 0],
                               atol=1e-5)
    # The target object moved in the wrist image (the camera moved, the object did not) ...
    g = tabletop.RENDERED_GEOMS.index(tabletop.OBJECT_GEOMS[obj])
    ca = np.argwhere(np.asarray(ids_a[1]) == g).mean(0)
    cb = np.argwhere(np.asarray(ids_b[1]) == g).mean(0)
    assert np.abs(ca - cb).max() > 3, (ca, cb)
    # ... but not in the head image.
    ha = np.argwhere(np.asarray(ids_a[0]) == g).mean(0)
    hb = np.argwhere(np.asarray(ids_b[0]) == g).mean(0)
    assert np.abs(ha - hb).max() < 1.0
    assert (np.asarray(img_a[1]) != np.asarray(img_b[1])).mean() > 0.1


def test_views_differ_and_show_colours(env, draw, scene):
    state, data = scene
    img, _ = draw(env.render_poses(data), state.info["rgb"])
    img = np.asarray(img).astype(int)
    assert np.abs(img[0] - img[1]).mean() > 10
    # Distinct object colours reach the pixels: red-, green- and blue-dominant pixels all exist.
    head = img[0].reshape(-1, 3)
    for c in range(3):
        others = [o for o in range(3) if o != c]
        assert ((head[:, c] > 1.6 * head[:, others].max(1)) & (head[:, c] > 80)).sum() >= 4


def test_render_identical_under_jit_and_vmap(env):
    keys = jax.random.split(jax.random.PRNGKey(5), 4)
    states = jax.jit(jax.vmap(env.reset))(keys)
    single = jax.jit(lambda s: env.render(env.render_poses(s.data), s.info["rgb"]))
    batched = jax.jit(jax.vmap(lambda s: env.render(env.render_poses(s.data), s.info["rgb"])))(states)
    for i in range(4):
        one = single(jax.tree.map(lambda x: x[i], states))
        np.testing.assert_array_equal(np.asarray(one), np.asarray(batched[i]))
    # The observation rendered inside reset is the same picture too.
    np.testing.assert_array_equal(np.asarray(states.obs["images"]), np.asarray(batched))


@pytest.mark.parametrize("shape", ["box", "cylinder"])
def test_ray_intervals_match_point_sampling(shape):
    """The analytic [t_near, t_far] of random rays equals where points sampled along them are inside."""
    rng = np.random.default_rng(0)
    n, half = 4000, np.array([0.035, 0.02, 0.03], np.float32)
    radius, hh = 0.025, 0.03
    origin = rng.uniform(-0.08, 0.08, (n, 3)).astype(np.float32)
    d = rng.normal(size=(n, 3)).astype(np.float32)
    d[: n // 10, :2] = 0.0            # some rays parallel to the cylinder axis / box z
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    ts = np.linspace(-0.2, 0.2, 801, dtype=np.float32)
    pts = origin[:, None, :] + ts[None, :, None] * d[:, None, :]
    if shape == "box":
        t0, t1 = render_lib.box_interval(jnp.asarray(origin), jnp.asarray(d), jnp.asarray(half))
        inside = np.all(np.abs(pts) <= half, axis=-1)
    else:
        t0, t1 = render_lib.cylinder_interval(jnp.asarray(origin), jnp.asarray(d), radius, hh)
        inside = (pts[..., 0] ** 2 + pts[..., 1] ** 2 <= radius ** 2) & (np.abs(pts[..., 2]) <= hh)
    t0, t1 = np.asarray(t0)[:, None], np.asarray(t1)[:, None]
    analytic = (ts[None] >= t0) & (ts[None] <= t1)
    # Samples within 1e-4 of an interval end may go either way (float rounding).
    near_end = (np.abs(ts[None] - t0) < 1e-4) | (np.abs(ts[None] - t1) < 1e-4)
    assert inside.any(axis=1).mean() > 0.1 and (~inside).any(axis=1).mean() > 0.5   # hits and misses
    np.testing.assert_array_equal(analytic[~near_end], inside[~near_end])


def test_shapes_read_in_the_shading(env):
    """Without shadows, the cube and the block show at most three flat shades (one per visible face),
    the cylinder many: its side is lit by its radial normal, which turns across the image; its cap is
    the brightest part (the light is mostly overhead)."""
    renderer = env.make_renderer(128, shadows=False)
    state = jax.jit(env.reset)(jax.random.PRNGKey(11), 0)
    img, ids = jax.jit(lambda p, c: renderer(p["geom_xpos"], p["geom_xmat"], p["cam_xpos"], p["cam_xmat"], c,
                                             return_ids=True))(env.render_poses(state.data), state.info["rgb"])
    img, ids = np.asarray(img[0]).astype(int), np.asarray(ids[0])
    shades = {}
    for i, o in enumerate(S.OBJECTS):
        mask = ids == tabletop.RENDERED_GEOMS.index(tabletop.OBJECT_GEOMS[i])
        assert mask.sum() > 40, (o.name, mask.sum())
        shades[o.shape, o.noun] = np.unique(img[mask].sum(-1), return_counts=True)
    for (shape, noun), (values, counts) in shades.items():
        if shape == "box":
            assert len(values) <= 3, (noun, values)
        else:
            assert len(values) >= 6, (noun, values)
            assert values[np.argmax(counts)] == values.max()   # the flat cap: one bright shade, most pixels
