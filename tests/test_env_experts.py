"""Scripted experts through the evaluation harness: >= 95% success per task over 100+ episodes."""
import jax
import pytest

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
