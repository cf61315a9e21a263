"""The demos stage pieces: expert episodes in the Bridge RLDS layout, written and read back."""
import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from vlambpo_jax.envs import demos, tabletop


@pytest.fixture(scope="module")
def episodes():
    env = tabletop.TabletopEnv(task_names=("pick", "place"), horizons=(30, 30))
    eps, stats = demos.collect(env, jax.random.PRNGKey(0), episodes_per_task=2, noise=0.0, batch_size=4,
                               keep_failures=True, log=lambda *_: None)
    return env, eps, stats


def test_episode_layout(episodes):
    env, eps, stats = episodes
    assert len(eps) == 4 and set(stats) == {"pick", "place"}
    for ep in eps:
        steps, meta = ep["steps"], ep["episode_metadata"]
        t = meta["length"] + 1                  # L actions + the final observation
        assert steps["observation"]["image_0"].shape == (t, env.image_size, env.image_size, 3)
        assert steps["observation"]["image_1"].dtype == np.uint8
        assert steps["observation"]["state"].shape == (t, 7) and steps["action"].shape == (t, 7)
        assert steps["is_first"][0] and steps["is_first"].sum() == 1
        assert steps["is_last"][-1] and steps["is_last"].sum() == 1
        assert steps["is_terminal"][-1] == meta["success"]
        assert steps["reward"].sum() == float(meta["success"])
        assert steps["language_instruction"] in env.instructions
        # Head and wrist views differ; the no-op final action keeps the last gripper command.
        assert (steps["observation"]["image_0"] != steps["observation"]["image_1"]).any()
        np.testing.assert_array_equal(steps["action"][-1, :6], 0.0)
    # Zero-noise pick succeeds within 30 steps.
    assert all(ep["episode_metadata"]["success"] for ep in eps if ep["episode_metadata"]["task"] == "pick")


def test_written_rlds_reads_back(episodes, tmp_path):
    from vlambpo_jax.data.rlds_writer import write_rlds
    env, eps, _ = episodes
    out = write_rlds(tmp_path, eps, dataset_name="tabletop_demos_test", image_keys=("image_0", "image_1"),
                     image_shape=(env.image_size, env.image_size, 3))
    source = tfds.builder_from_directory(str(out)).as_data_source()["train"]
    assert len(source) == len(eps)
    got = sorted((source[i] for i in range(len(source))), key=lambda e: e["episode_metadata"]["episode_id"])
    for ep, want in zip(got, sorted(eps, key=lambda e: e["episode_metadata"]["episode_id"])):
        steps = list(ep["steps"])    # the decoded steps: one dict per step
        assert len(steps) == len(want["steps"]["action"])
        np.testing.assert_array_equal(np.stack([s["observation"]["image_0"] for s in steps]),
                                      want["steps"]["observation"]["image_0"])
        np.testing.assert_allclose(np.stack([s["action"] for s in steps]), want["steps"]["action"])


@pytest.mark.slow
def test_targets_per_scene_share_the_scene_and_change_the_target():
    """Groups of consecutive episodes start from one scene and differ only in the instructed object."""
    env = tabletop.TabletopEnv(task_names=("pick",), horizons=(12,))
    eps, _ = demos.collect(env, jax.random.PRNGKey(1), episodes_per_task=6, noise=0.0, batch_size=6,
                           keep_failures=True, log=lambda *_: None, targets_per_scene=3)
    first = [ep["steps"]["observation"]["image_0"][0] for ep in eps]
    words = [set(ep["steps"]["language_instruction"].split()) for ep in eps]
    for g in (0, 3):
        for i in (1, 2):
            np.testing.assert_array_equal(first[g], first[g + i])
        colours = [w & {"red", "green", "blue"} for w in words[g:g + 3]]
        assert sorted(c.pop() for c in colours) == ["blue", "green", "red"]
    assert (first[0] != first[3]).any()


@pytest.mark.slow
def test_expert_labels_are_the_noiseless_expert_at_the_visited_states():
    """DART labels: the same keys visit the same noisy states; replaying the executed actions in the
    simulator, each recorded label is the zero-noise expert action at that state."""
    from vlambpo_jax.envs import experts
    env = tabletop.TabletopEnv(task_names=("pick",), horizons=(12,))
    args = (jax.random.split(jax.random.PRNGKey(3), 1), jax.random.split(jax.random.PRNGKey(4), 1),
            np.zeros(1, np.int32), np.full(1, -1, np.int32))
    executed = jax.device_get(demos.make_collector(env, 0.5)(*args))
    labelled = jax.device_get(demos.make_collector(env, 0.5, expert_labels=True)(*args))
    np.testing.assert_array_equal(executed["images"], labelled["images"])
    step, clean = jax.jit(env.step), jax.jit(lambda s: experts.expert_action(env, s, jax.random.PRNGKey(0), 0.0))
    s = env.reset(args[0][0], args[2][0], args[3][0])
    for t in range(12):
        np.testing.assert_allclose(labelled["action"][0, t], np.asarray(clean(s)), atol=1e-6)
        s = step(s, executed["action"][0, t])
    assert np.abs(executed["action"][0, :, :6] - labelled["action"][0, :, :6]).max() > 1e-3


def test_takeover_hands_the_episode_to_the_expert_after_the_policy_chunks():
    """DAgger's takeover against a step-by-step replay: the policy's chunks act first, then the
    zero-noise expert; the cut episode starts at the handover state and keeps only the expert's part."""
    from vlambpo_jax.envs import experts
    env = tabletop.TabletopEnv(task_names=("pick",), horizons=(12,))
    chunk = np.tile(np.array([0.01, -0.005, 0.0, 0.0, 0.0, 0.05, 1.0], np.float32), (3, 1))
    policy_fn = lambda params, obs, key: params
    reset_key = jax.random.split(jax.random.PRNGKey(5), 1)
    rec = jax.device_get(demos.make_takeover_collector(env, policy_fn, 3, 0.0)(
        chunk, reset_key, jax.random.split(jax.random.PRNGKey(6), 1), np.zeros(1, np.int32), np.full(1, 2, np.int32)))
    step, clean = jax.jit(env.step), jax.jit(lambda s: experts.expert_action(env, s, jax.random.PRNGKey(0), 0.0))
    s = env.reset(reset_key[0], 0, -1)
    for t in range(12):
        want = chunk[t % 3] if t < 6 else np.asarray(clean(s))
        np.testing.assert_allclose(rec["action"][0, t], want, atol=1e-6)
        np.testing.assert_array_equal(rec["images"][0, t], np.asarray(s.obs["images"]))
        s = step(s, want)
    ep, = demos.episodes_from_batch(env, rec, np.zeros(1, np.int32), 0, 0.0, start=np.array([6]))
    assert ep["episode_metadata"]["length"] == int(rec["length"][0]) - 6
    np.testing.assert_array_equal(ep["steps"]["observation"]["image_0"][0], rec["images"][0, 6, 0])
    np.testing.assert_allclose(ep["steps"]["action"][:-1], rec["action"][0, 6:int(rec["length"][0])])
    assert not demos.episodes_from_batch(env, rec, np.zeros(1, np.int32), 0, 0.0,
                                         start=np.array([int(rec["length"][0])]))
