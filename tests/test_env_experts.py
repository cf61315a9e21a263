"""Scripted experts through the evaluation harness: >= 95% success per task over 100+ episodes."""
import jax
import numpy as np
import pytest
from scipy import stats

from vlambpo_jax.envs import evaluation, experts, tabletop

EPISODES = 100


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    env = tabletop.TabletopEnv()
    out = tmp_path_factory.mktemp("videos")
    res = evaluation.evaluate(env, experts.expert_policy(env), None, jax.random.PRNGKey(0), EPISODES,
                              privileged=True, video_dir=out, num_videos=2, video_size=48)
    return env, res, out


def test_each_expert_succeeds(result):
    env, res, _ = result
    rates = {k: v["success_rate"] for k, v in res["per_task"].items()}
    print("expert success:", rates, "mean length:", {k: v["mean_length"] for k, v in res["per_task"].items()})
    assert set(rates) == set(env.task_names)
    for name, v in res["per_task"].items():
        assert v["episodes"] == EPISODES
        assert v["success_rate"] >= 0.95, f"{name}: expert success {v['success_rate']:.2f} < 0.95"
        lo, hi = v["ci95"]
        assert lo <= v["success_rate"] <= hi
        assert 1 <= v["mean_length"] <= env.horizons[env.task_names.index(name)]
    assert len(res["successes"]) == EPISODES * len(env.task_names)
    assert np.mean(res["successes"]) == pytest.approx(res["success_rate"])


def test_harness_writes_videos(result):
    env, res, out = result
    assert len(res["videos"]) == 2
    import imageio.v2 as imageio
    frames = imageio.mimread(res["videos"][0])
    assert len(frames) >= 2 and frames[0].shape[:2] == (48, 2 * 48 + 2)
    # The first video is of the first task, the second of the second task (spread over tasks).
    assert env.task_names[0] in res["videos"][0] and env.task_names[1] in res["videos"][1]


def test_wilson_interval():
    lo, hi = evaluation.wilson_interval(95, 100)
    assert 0.88 < lo < 0.89 and 0.978 < hi < 0.979   # the textbook values 0.8883, 0.9785
    assert evaluation.wilson_interval(0, 10)[0] == 0.0
    assert evaluation.wilson_interval(10, 10)[1] == pytest.approx(1.0)
    assert evaluation.wilson_interval(0, 0) == (0.0, 1.0)


def test_paired_comparison_is_mcnemars_exact_test():
    base = np.array([1] * 50 + [1] + [0] * 9 + [0] * 40, bool)     # 1 episode only base wins, 9 only other
    other = np.array([1] * 50 + [0] + [1] * 9 + [0] * 40, bool)
    p = evaluation.paired_comparison(base, other)
    assert (p["episodes"], p["only_base"], p["only_other"]) == (100, 1, 9)
    assert p["p_value"] == pytest.approx(22 / 1024)   # 2 * (C(10,0) + C(10,1)) / 2^10, by hand
    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b = rng.random(200) < rng.random(), rng.random(200) < rng.random()
        q = evaluation.paired_comparison(a, b)
        n = q["only_base"] + q["only_other"]
        want = stats.binomtest(q["only_base"], n, 0.5).pvalue if n else 1.0
        assert q["p_value"] == pytest.approx(want)
    assert evaluation.paired_comparison(base, base)["p_value"] == 1.0
    with pytest.raises(ValueError, match="same episodes"):
        evaluation.paired_comparison(base, other[:10])
