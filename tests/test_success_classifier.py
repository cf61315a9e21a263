"""The separate success classifier (models/success_classifier.py): it learns a toy success rule that
depends on the instruction, its ensemble votes as documented, and it saves and loads exactly."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import bridge
from tests.helpers.fakes import RecordingWriter
from vlambpo_jax import pipeline
from vlambpo_jax.errors import UserError
from vlambpo_jax.models import success_classifier
from vlambpo_jax.models.success_classifier import ClassifiedWorldModel, SuccessClassifier
from vlambpo_jax.rl.rollout import HybridWorld, ImaginedState, ModelWorld
from vlambpo_jax.stages import common
from vlambpo_jax.stages import mbpo as mbpo_stage
from vlambpo_jax.stages import reward as reward_stage
from vlambpo_jax.train.preemption import NoPreemption

SMALL = dict(views=2, members=2, widths=(8, 16), features=16, text_dim=8, hidden=32)


def toy_frames(n, seed):
    """Success iff the head view shows a bright square in the corner the instruction names (token
    7: top left, token 9: bottom right); every frame shows one square, in a random corner, so the
    pictures alone cannot tell."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 60, (n, 2, 16, 16, 3)).astype(np.uint8)
    corner = rng.integers(0, 2, n)                # where the square is
    named = rng.integers(0, 2, n)                 # which corner the instruction names
    for i in range(n):
        r = 2 if corner[i] == 0 else 10
        images[i, 0, r:r + 4, r:r + 4] = 250
    tokens = np.stack([np.where(named == 0, 7, 9), np.full(n, 3), np.zeros(n, int)], 1).astype(np.int32)
    mask = np.array([[True, True, False]] * n)
    return {"images": images, "tokens": tokens, "token_mask": mask, "yes": corner == named}


def test_learns_an_instruction_dependent_success_rule():
    clf = SuccessClassifier(**SMALL)
    train, held = toy_frames(512, 0), toy_frames(256, 1)
    params = clf.init(jax.random.PRNGKey(0), (16, 16), 3)
    before = np.mean((clf.predict_frames(params, held) > 0.5) == held["yes"])
    params, info = clf.train(params, train, jax.random.PRNGKey(1), steps=150, batch_size=32, lr=3e-3, shift=1)
    after = np.mean((clf.predict_frames(params, held) > 0.5) == held["yes"])
    assert before < 0.7 and after > 0.9, (before, after, info)


def test_ensemble_votes_and_round_trip(tmp_path):
    frames = toy_frames(8, 2)
    args = [jnp.asarray(frames[k]) for k in ("images", "tokens", "token_mask")]
    for aggregate, reduce in (("min", np.min), ("mean", np.mean)):
        clf = SuccessClassifier(**SMALL, aggregate=aggregate)
        params = clf.init(jax.random.PRNGKey(3), (16, 16), 3)
        members = np.asarray(jax.nn.sigmoid(clf.logits(params, *args)))
        assert members.shape == (2, 8) and np.ptp(members, axis=0).max() > 1e-4   # members differ
        np.testing.assert_allclose(clf.probability(params, *args), reduce(members, 0), rtol=1e-6)
        params = dict(params, threshold=jnp.float32(0.3))
        success_classifier.save(tmp_path / "c.msgpack", clf, params)
        loaded, loaded_params = success_classifier.load(tmp_path / "c.msgpack")
        assert loaded == clf and float(loaded_params["threshold"]) == pytest.approx(0.3)
        np.testing.assert_array_equal(loaded.probability(loaded_params, *args), clf.probability(params, *args))
    with pytest.raises(ValueError, match="aggregate"):
        SuccessClassifier(aggregate="max")


def test_classified_world_model_takes_only_the_reward_from_the_classifier():
    clf = SuccessClassifier(**SMALL)
    frames = toy_frames(4, 3)
    args = [jnp.asarray(frames[k]) for k in ("images", "tokens", "token_mask")]
    params = {"wm": None, "classifier": clf.init(jax.random.PRNGKey(4), (16, 16), 3)}
    model = ClassifiedWorldModel(None, clf)
    np.testing.assert_array_equal(model.reward(params, *args), clf.probability(params["classifier"], *args))
    with pytest.raises(ValueError, match="cannot predict"):
        model.predict(params, *args, jnp.zeros((4, 2, 7)), jax.random.PRNGKey(0))


def _reward_context(tmp_path, **reward):
    config = bridge.get_config("smoke")
    with config.unlocked():
        config.log.progress = "off"
        config.log.tensorboard = False
        config.reward.update(reward)
    (tmp_path / "reward").mkdir()
    return pipeline.StageContext(config, tmp_path, "reward", RecordingWriter(), NoPreemption())


def test_reward_stage_labels_every_frame_by_its_outcome_and_saves_a_loadable_classifier(tmp_path):
    """On the Bridge fixture (no simulator): every training frame is an example, Yes exactly on the
    last frame of each successful episode; the saved classifier loads with the chosen threshold."""
    ctx = _reward_context(tmp_path)
    config = ctx.config
    splits, _ = reward_stage.load_split(ctx)
    assert list(splits) == ["config.data"]            # no collected rollouts
    train_eps, heldout_eps = splits["config.data"]
    summary = reward_stage.run(ctx)
    assert summary["train_frames"] == sum(ep["length"] for ep in train_eps)
    assert summary["train_yes"] == sum(bool(ep["success"]) for ep in train_eps) > 0
    assert summary["heldout_real"]["frames"] == sum(ep["length"] for ep in heldout_eps)
    clf, params = success_classifier.load(summary["classifier"])
    assert clf == reward_stage.classifier_from_config(config)
    assert float(params["threshold"]) == pytest.approx(summary["threshold"])
    assert 0 < summary["threshold"] < 1    # the fixture holds no held-out success: the 0.5 fallback
    frames = reward_stage.real_frames(config, heldout_eps)
    p = clf.predict_frames(params, frames)
    assert p.shape == (len(frames["yes"]),) and np.all((p >= 0) & (p <= 1))


def test_value_classifier_labels_every_frame_by_its_episode_outcome(tmp_path):
    """The value (config.reward.value) learns P(the episode succeeds) from every frame of the
    collected rollouts: Yes on all frames of a successful episode, No on all of a failed one; the
    stage says so in one line where there are no collected rollouts."""
    ctx = _reward_context(tmp_path, value=True)
    with pytest.raises(UserError, match="collect stage"):
        reward_stage.run(ctx)
    episodes = [dict(ep) for ep in reward_stage.load_split(ctx)[0]["config.data"][0]]
    episodes[0]["success"] = False                    # the fixture's training episodes all succeed
    frames = reward_stage.value_frames(ctx.config, episodes)
    expected = np.concatenate([np.full(ep["length"], bool(ep["success"])) for ep in episodes])
    np.testing.assert_array_equal(frames["yes"], expected)
    assert 0 < expected.sum() < len(expected)
    summary = reward_stage.fit(ctx, "value", frames, {"real": frames}, tmp_path / "reward" / "v.msgpack", 1)
    assert summary["train_yes"] == expected.sum() and summary["heldout_real"]["yes_rate"] == expected.mean()
    clf, params = success_classifier.load(summary["classifier"])
    p = clf.predict_frames(params, frames)
    assert summary["heldout_real"]["mean_probability"] == pytest.approx(float(p.mean()), abs=1e-6)


def test_mbpo_bootstraps_from_the_saved_value_classifier_on_the_views_the_policy_sees(tmp_path):
    """rl.bootstrap_model='classifier': the mbpo stage's bootstrap is the reward stage's value
    classifier read on the branch's last views with the world model's tokens, in a world model and in
    the hybrid world whose views are the world model's; without the file, one line says what to run."""
    ctx = _reward_context(tmp_path)
    pipeline.mark_done(tmp_path, "reward", {}, 1.0)
    with pytest.raises(UserError, match="reward.value=True"):
        mbpo_stage.value_bootstrap(ctx, ModelWorld(None))
    clf = SuccessClassifier(**SMALL)
    params = clf.init(jax.random.PRNGKey(3), (16, 16), 3)
    success_classifier.save(tmp_path / "reward" / common.VALUE_CLASSIFIER_FILE, clf, params)
    frames = toy_frames(6, 2)
    imagined = ImaginedState(images=jnp.asarray(frames["images"]), tokens=jnp.zeros((6, 2), jnp.int32),
                             token_mask=jnp.ones((6, 2), bool), wm_tokens=jnp.asarray(frames["tokens"]),
                             wm_token_mask=jnp.asarray(frames["token_mask"]))
    expected = clf.predict_frames(params, frames)
    np.testing.assert_allclose(mbpo_stage.value_bootstrap(ctx, ModelWorld(None))(imagined), expected, atol=1e-6)
    hybrid = HybridWorld(None, ModelWorld(None), views="model")
    np.testing.assert_allclose(mbpo_stage.value_bootstrap(ctx, hybrid)((None, imagined)), expected, atol=1e-6)
