"""The imagined-reward check: AUCs against hand-computed values, and a copy-the-frame world model
scores exactly like the current frame."""
import json

import flax
import jax
import jax.numpy as jnp
import numpy as np

from configs import tabletop
from vlambpo_jax.envs.tabletop import make_env
from vlambpo_jax.rl import wm_agreement
from vlambpo_jax.stages import report


def test_auc_by_hand():
    label = np.array([1, 1, 0, 0, 0], bool)
    assert wm_agreement.auc(np.array([.9, .8, .1, .2, .3]), label) == 1.0
    assert wm_agreement.auc(np.array([.1, .2, .9, .8, .7]), label) == 0.0
    # pairs (pos, neg): .5 vs (.5, .4, .6) -> tie, win, loss; .7 vs them -> 3 wins: (0.5 + 1 + 0 + 3) / 6
    assert np.isclose(wm_agreement.auc(np.array([.5, .7, .5, .4, .6]), label), 4.5 / 6)
    assert np.isnan(wm_agreement.auc(np.array([.1, .2]), np.array([True, True])))


def test_within_state_auc_uses_only_mixed_states():
    group = np.array([0, 0, 1, 1, 2, 2])
    success = np.array([1, 0, 1, 1, 0, 1], bool)
    score = np.array([.9, .1, .5, .5, .8, .2])  # state 0 ranked right, state 2 wrong, state 1 not mixed
    m = wm_agreement.agreement_metrics(group, success, {"s": score})
    assert m["mixed_states"] == 2 and m["within_auc_s"] == 0.5
    assert m["within_auc_s_per_state"] == [1.0, 0.0] and m["within_auc_s_ci95"] == [0.0, 1.0]
    assert np.isclose(m["auc_s"], wm_agreement.auc(score, success))
    assert np.isclose(m["success_rate"], 4 / 6)
    single = wm_agreement.agreement_metrics(group[:2], np.ones(2, bool), {"s": score[:2]})
    assert json.loads(wm_agreement.to_json(single))["auc_s"] is None  # strict JSON, no NaN
    assert single["within_auc_s_ci95"] is None and single["within_auc_s_per_state"] == []


def test_best_f1_threshold_by_hand():
    label = np.array([1, 0, 1, 0, 0], bool)
    # calling the top 1, 2, 3, 4, 5 scores successes: F1 2/3, 1/2, 4/5, 2/3, 4/7
    t, best = wm_agreement.best_f1_threshold(np.array([.9, .8, .7, .3, .2]), label)
    assert np.isclose(t, 0.5) and np.isclose(best, 0.8)
    # a tie cannot be cut: top 1 (2/3) or top 3 (4/5), never top 2
    t, best = wm_agreement.best_f1_threshold(np.array([.9, .5, .5, .1]), np.array([1, 1, 0, 0], bool))
    assert np.isclose(t, 0.3) and np.isclose(best, 0.8)
    t, best = wm_agreement.best_f1_threshold(np.array([.2, .1]), np.array([1, 1], bool))
    assert t < 0.1 and best == 1.0                                      # all called successes
    assert np.isnan(wm_agreement.best_f1_threshold(np.array([.2]), np.array([False]))[0])
    m = wm_agreement.agreement_metrics(np.zeros(5, int), label, {"s": np.array([.9, .8, .7, .3, .2])},
                                       threshold=0.75)
    assert np.isclose(m["positive_rate_s"], 0.4) and np.isclose(m["f1_s"], 0.5)
    assert np.isclose(m["best_f1_threshold_s"], 0.5) and np.isclose(m["best_f1_s"], 0.8)


def test_bootstrap_interval_of_a_mean():
    """The percentile bootstrap of a mean narrows like 1 / sqrt(n) around it (values of std 0.5)."""
    values = np.tile([0.0, 1.0], 50)                          # mean 0.5, std 0.5, n = 100: se 0.05
    lo, hi = wm_agreement.bootstrap_ci(values)
    assert lo < 0.5 < hi and 0.17 < hi - lo < 0.23           # about 2 x 1.96 x 0.05
    assert wm_agreement.bootstrap_ci(np.full(5, 0.7)) == [0.7, 0.7]


def test_copy_model_scores_like_the_current_frame():
    config = tabletop.get_config("smoke")
    env = make_env(config)
    scale = jnp.asarray([0.015] * 3 + [0.1] * 3 + [1.0])

    def sample_fn(obs, key, mode):
        b = obs["images"].shape[0]
        return jax.random.uniform(key, (b, config.chunk_size, 7), minval=-1, maxval=1) * scale

    def reward_fn(images, ids):  # any deterministic function of the wrist view
        return jnp.mean(images[:, 1].astype(jnp.float32), axis=(1, 2, 3)) / 255.0 + 0.0 * ids

    m, samples = wm_agreement.measure(env, sample_fn, lambda images, ids, actions, key: images, reward_fn,
                                      jax.random.PRNGKey(0), num_states=3, samples_per_state=2,
                                      num_chunks=2, return_samples=True, value_fn=reward_fn, max_chunks=2)
    np.testing.assert_array_equal(samples["value_imagined"], samples["value_current"])
    assert m["eventual_within_auc_value_imagined"] == m["eventual_within_auc_value_current"] or \
        m["eventual_mixed_states"] == 0
    assert samples["eventual"].dtype == bool and "eventual_auc_value_real_next" in m
    assert m["samples"] == 12 and samples["group"].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
    np.testing.assert_array_equal(samples["imagined"], samples["current"])
    np.testing.assert_array_equal(samples["mse_predicted"], samples["mse_copy"])
    assert m["mse_copy_view1"] > 0  # the random chunks moved the wrist camera: real next != current
    assert not np.array_equal(samples["real_next"], samples["current"])


def test_pair_differences_by_hand():
    rng = np.random.default_rng(0)
    real = rng.integers(0, 200, (6, 2, 4, 4, 3)).astype(np.uint8)         # 2 states x 3 chunks
    cos, ratio = wm_agreement.pair_differences(real, real, 3)
    assert cos.shape == (6, 2)                                              # 2 states x 3 pairs, 2 views
    np.testing.assert_allclose(cos, 1.0, rtol=1e-6)
    np.testing.assert_allclose(ratio, 1.0, rtol=1e-6)
    still = np.repeat(real[::3], 3, axis=0)                                 # the action changes nothing
    cos, ratio = wm_agreement.pair_differences(still, real, 3)
    np.testing.assert_array_equal(cos, 0.0)
    np.testing.assert_array_equal(ratio, 0.0)
    # one pixel, two chunks: real difference (10, 0), predicted (3, 4): cosine 3/5, ratio 5/10
    real = np.zeros((2, 1, 1, 2, 1), np.uint8)
    real[0, 0, 0, 0, 0] = 10
    pred = np.zeros_like(real)
    pred[0, 0, 0, :, 0] = (3, 4)
    cos, ratio = wm_agreement.pair_differences(pred, real, 2)
    np.testing.assert_allclose(cos, [[0.6]], rtol=1e-6)
    np.testing.assert_allclose(ratio, [[0.5]], rtol=1e-6)
    assert np.isnan(wm_agreement.pair_differences(pred, np.zeros_like(real), 2)[0]).all()


def _real_frames_model(env, key, num_states):
    """A 'world model' that steps its own copy of the simulator from open_loop_drift's initial states."""
    state = [jax.vmap(env.reset)(jax.random.split(jax.random.fold_in(key, 0), num_states))]

    def predict_fn(images, ids, actions, k):
        state[0] = jax.vmap(env.step_chunk)(state[0], actions)[0]
        return state[0].obs["images"]
    return predict_fn


def test_open_loop_drift_of_a_copy_model_is_copying():
    config = tabletop.get_config("smoke")
    env = make_env(config)
    scale = jnp.asarray([0.015] * 3 + [0.1] * 3 + [1.0])

    def sample_fn(obs, key, mode):   # a steady push along +x, so the gripper moves away from its start
        b = obs["images"].shape[0]
        return jnp.broadcast_to(jnp.asarray([1.0, 0, 0, 0, 0, 0, 1.0]) * scale, (b, config.chunk_size, 7))

    def read_fn(images):              # a fake probe: the mean colour of each view as "xyz"
        x = images.astype(jnp.float32).mean(axis=(2, 3)) / 255.0           # [B, V, 3]
        return jnp.concatenate([x, jnp.zeros(x.shape[:2] + (4,))], axis=-1)

    m = wm_agreement.open_loop_drift(env, sample_fn, lambda images, ids, actions, key: images, read_fn,
                                     jax.random.PRNGKey(0), num_states=2, num_chunks=2)
    for v in range(2):
        assert len(m[f"drift_imagined_view{v}"]) == 2
        assert m[f"drift_imagined_view{v}"] == m[f"drift_copy_view{v}"]
        assert m[f"drift_imagined_vs_real_view{v}"] == m[f"drift_copy_vs_real_view{v}"]
        assert m[f"motion_gain_imagined_view{v}"] == [0.0, 0.0]    # a copy does not move
        assert m[f"drift_ratio_ci_view{v}"][1] == [1.0, 1.0]       # exactly copying, whatever the resample
        # a copy misses by the whole real move, all of it along the move
        np.testing.assert_allclose(m[f"drift_along_vs_real_view{v}"], m[f"drift_copy_vs_real_view{v}"], rtol=1e-5)
        np.testing.assert_allclose(m[f"drift_across_vs_real_view{v}"], 0.0, atol=1e-6)
    assert m["drift_real_view1"] != m["drift_copy_view1"]   # the wrist camera moved with the gripper
    assert min(m["drift_copy_vs_real_view1"]) > 0
    # a model that shows the real frames reads as the real views do: no distance to them
    key = jax.random.PRNGKey(0)
    real_model = wm_agreement.open_loop_drift(env, sample_fn, _real_frames_model(env, key, 2), read_fn, key,
                                              num_states=2, num_chunks=2, exact_fn=lambda views, real: real)
    for v in range(2):
        assert real_model[f"drift_exact_view{v}"] == real_model[f"drift_real_view{v}"]
        np.testing.assert_allclose(real_model[f"drift_imagined_vs_real_view{v}"], 0.0, atol=1e-6)
        np.testing.assert_allclose(real_model[f"drift_imagined_view{v}"], real_model[f"drift_real_view{v}"], rtol=1e-6)
        np.testing.assert_allclose(real_model[f"motion_gain_imagined_view{v}"], 1.0, rtol=1e-5)
        np.testing.assert_allclose(real_model[f"drift_ratio_ci_view{v}"], 0.0, atol=1e-4)
        np.testing.assert_allclose(real_model[f"drift_across_vs_real_view{v}"], 0.0, atol=1e-6)


def test_bootstrap_ratio_ci_covers_the_ratio_and_narrows_with_more_pairs():
    rng = np.random.default_rng(1)
    den = rng.uniform(4, 6, 400)
    num = 0.5 * den + rng.normal(0, 0.5, 400)        # imagined at half of copying, with noise
    few, many = wm_agreement.bootstrap_ratio_ci(num[:25], den[:25]), wm_agreement.bootstrap_ratio_ci(num, den)
    ratio = num.sum() / den.sum()
    assert many[0] < ratio < many[1] and few[0] < 0.5 < few[1]
    assert many[1] - many[0] < few[1] - few[0] < 0.2


def test_the_reports_drift_table_gives_imagined_over_copying_for_both_readings():
    m = {"drift_imagined_view0": [0.03, 0.06], "drift_copy_view0": [0.06, 0.08],
         "drift_real_view0": [0.02, 0.02], "drift_imagined_vs_real_view0": [0.01, 0.04],
         "drift_copy_vs_real_view0": [0.05, 0.0]}
    lines = report.drift_lines(m, ("head",))
    assert "| head, imagined | 3.0 | 6.0 |" in lines
    assert lines[-1].endswith("head 0.50 / 0.75 against the simulator; head 0.20 / - against the real view.")
    with_ci = report.drift_lines(dict(m, drift_ratio_ci_view0=[[0.1, 0.3], [0.6, 0.9]]), ("head",))
    assert with_ci[-1].endswith("head 0.20 [0.10, 0.30] / - [0.60, 0.90] against the real view.")
    gain = report.drift_lines(dict(m, motion_gain_imagined_view0=[0.456, 0.5]), ("head",))
    assert gain[:-2] == lines and gain[-1].endswith("head 0.46 / 0.50.")
    assert report.drift_lines({}, ("head",)) == []


@flax.struct.dataclass
class _CountdownState:
    """A toy episode: it ends after `left` chunks of any action, in success iff `wins`."""
    left: jax.Array
    wins: jax.Array
    obs: dict
    done: jax.Array
    success: jax.Array


class _CountdownEnv:
    def step_chunk(self, state, actions):
        left = jnp.maximum(state.left - 1, 0)
        done = left == 0
        success = done & state.wins
        return state.replace(left=left, done=done, success=success), jnp.zeros(actions.shape[:1]), \
            jnp.full(actions.shape[:1], success)


def test_eventual_success_plays_every_episode_to_its_end():
    left = jnp.asarray([0, 1, 3, 5, 2])
    wins = jnp.asarray([False, True, True, True, False])
    state = _CountdownState(left=left, wins=wins, obs={"images": jnp.zeros((5, 1))}, done=left == 0,
                            success=jnp.zeros(5, bool))
    calls = []

    def sample_fn(obs, key, mode):
        calls.append(mode)
        return jnp.zeros((obs["images"].shape[0], 2, 7))

    eventual = wm_agreement.eventual_success(_CountdownEnv().step_chunk, state, sample_fn, jax.random.PRNGKey(0), 10)
    assert eventual.tolist() == [False, True, True, True, False]
    assert calls == ["eval"] * 5            # stops once every episode is over
    short = wm_agreement.eventual_success(_CountdownEnv().step_chunk, state, sample_fn, jax.random.PRNGKey(0), 3)
    assert short.tolist() == [False, True, True, False, False]   # the 5-chunk episode is cut short
