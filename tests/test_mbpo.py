"""MBPO iterations in a (random, tiny) world model: resuming mid-run gives identical numbers."""
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import bridge, tabletop
from tests.helpers.fakes import RecordingWriter
from vlambpo_jax import loading, pipeline
from vlambpo_jax.data.tokenizer import ByteTokenizer
from vlambpo_jax.errors import UserError
from vlambpo_jax.models.policy import Policy
from vlambpo_jax.models.world_model import WorldModel
from vlambpo_jax.rl import mbpo, ppo
from vlambpo_jax.rl.rollout import ModelWorld
from vlambpo_jax.stages import mbpo as mbpo_stage
from vlambpo_jax.stages import wm_common
from vlambpo_jax.stages.evaluate import evaluation_key
from vlambpo_jax.train.loop import train_loop
from vlambpo_jax.train.metrics import MetricWriter
from vlambpo_jax.train.preemption import NoPreemption


class _StopAfter:
    """A preemption guard that fires once `n` steps have run (a SIGTERM at a known point)."""
    def __init__(self, writer_calls):
        self.calls = writer_calls

    @property
    def requested(self):
        return self.calls[0] >= 2


def _roots(config, n=6):
    rng = np.random.default_rng(0)
    texts = ["pick up the red cube", "push the blue cube to the green zone"] * (n // 2)
    tok, mask = ByteTokenizer().encode_batch(texts, config.data.max_text_len)
    wtok, wmask = ByteTokenizer().encode_batch(texts, config.wm.max_text_len)
    s = config.image_size
    return {"images": rng.integers(0, 255, (n, 2, s, s, 3), np.uint8), "tokens": tok, "token_mask": mask,
            "wm_tokens": wtok, "wm_token_mask": wmask, "t": np.zeros(n, np.int32)}


def _parts(bootstrap_fn=None, threshold: float = 0.3):
    """-> (config, policy, params, optimizer, iteration) of a tiny MBPO in a random world model whose
    chunks succeed where its P(Yes) > threshold."""
    config = tabletop.get_config("smoke")
    with config.unlocked():
        config.policy.tokenizer = "byte"
        config.rl.num_branches = 4
        config.rl.minibatch_size = 4
        config.rl.epochs = 2
        config.checkpoint.every_steps = 1
        config.log.progress = "off"
    policy = Policy(config, loading.make_tokenizer(config.policy.tokenizer).vocab_size)
    roots = _roots(config)
    start_fn = mbpo.branch_sampler(roots, config.rl.num_branches, seed=3)
    example = {k: jnp.asarray(roots[k][:1]) for k in ("images", "tokens", "token_mask")}
    params = policy.init(jax.random.PRNGKey(0), example)
    wm = WorldModel(config)
    world = ModelWorld(wm, threshold=threshold)
    optimizer = ppo.make_optimizer(config.rl, params)
    iteration = mbpo.make_iteration(policy, config.rl, world, wm.init(jax.random.PRNGKey(5)), start_fn,
                                    num_chunks=2, seed=3, optimizer=optimizer, bootstrap_fn=bootstrap_fn)
    return config, policy, params, optimizer, iteration


def _run(workdir: Path, num_steps: int, stop_after_two: bool = False):
    config, policy, params, optimizer, iteration = _parts()
    calls = [0]

    def step_fn(state, i):
        out = iteration(state, i)
        calls[0] += 1
        return out

    writer = MetricWriter(workdir / "mbpo", "mbpo", config.log)
    ctx = pipeline.StageContext(config, workdir, "mbpo", writer,
                                _StopAfter(calls) if stop_after_two else NoPreemption())
    (workdir / "mbpo").mkdir(parents=True, exist_ok=True)
    state = ppo.init_state(config.rl, optimizer, params)
    result = train_loop(ctx, name="ppo", state=state, step_fn=step_fn, batch_fn=lambda i: i,
                        num_steps=num_steps, params_fn=lambda s: s.params, log_every=1)
    writer.close()
    return result, calls[0]


def test_resume_mid_mbpo_is_identical(tmp_path):
    full, _ = _run(tmp_path / "full", 3)
    part, ran = _run(tmp_path / "resumed", 3, stop_after_two=True)
    assert part.interrupted and ran == 2
    resumed, ran = _run(tmp_path / "resumed", 3)
    assert ran == 1 and resumed.step == 3
    for a, b in zip(jax.tree.leaves(full.state), jax.tree.leaves(resumed.state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    rows = [json.loads(x) for x in (tmp_path / "full" / "mbpo" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in rows)
    # imagined branches take no real env step (4 branches x 2 chunks of the smoke config's k)
    assert all("env_steps_taken" not in r and 0 < r["imagined_steps_taken"] <= 8 * 10 for r in rows)


def test_a_fixed_bootstrap_replaces_the_critics_value_of_the_last_state():
    """rl.bootstrap_model='classifier': the value bootstrap_fn gives the branches' last states is the
    one the advantages add (logged as bootstrap_mean over the branches still alive), and it steers
    the update. No branch succeeds (threshold 1), so every one stops short and is bootstrapped."""
    updated = {}
    for value in (0.0, 1.0):
        def bootstrap_fn(final, value=value):
            return jnp.full(final.images.shape[:1], value)
        config, _, params, optimizer, iteration = _parts(bootstrap_fn, threshold=1.0)
        state, metrics = iteration(ppo.init_state(config.rl, optimizer, params), 0)
        assert float(metrics["bootstrap_mean"]) == value
        updated[value] = state.params
    _, _, params, optimizer, iteration = _parts(threshold=1.0)
    _, metrics = iteration(ppo.init_state(config.rl, optimizer, params), 0)
    assert float(metrics["bootstrap_mean"]) not in (0.0, 1.0)     # the critic's own value
    diff = [float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(updated[0.0]), jax.tree.leaves(updated[1.0]))]
    assert max(diff) > 0


class _CopyModel:
    """A world model that predicts the current views (so each anchor pair names its frames)."""
    def predict(self, params, images, tokens, token_mask, actions, key):
        return images


def test_value_anchor_pairs_each_chunk_boundary_with_the_real_frame_a_chunk_later(tmp_path):
    """rl.value_anchor's pairs on the Bridge fixture as the collected rollouts: one per chunk boundary
    t whose next boundary t + k is not the episode's last frame, the prediction made from frame t and
    the real frame t + k, with the policy's tokens of the instruction; without rollouts, one line."""
    config = bridge.get_config("smoke")
    with config.unlocked():
        config.log.progress = "off"
        config.chunk_size = 2      # the fixture's episodes are short
    ctx = pipeline.StageContext(config, tmp_path, "mbpo", RecordingWriter(), NoPreemption())
    tokenizer = loading.make_tokenizer(config.policy.tokenizer)
    with pytest.raises(UserError, match="collect stage"):
        mbpo_stage.value_anchor_pairs(ctx, tokenizer, _CopyModel(), None)
    with config.unlocked():
        config.wm.finetune_data = config.data.builder_dir
    pairs = mbpo_stage.value_anchor_pairs(ctx, tokenizer, _CopyModel(), None, batch_size=3)
    k = config.chunk_size
    episodes = wm_common.load_episodes(ctx, config.data.builder_dir)[0]
    expected = [(ep, t) for ep in episodes for t in range(ep["length"]) if t % k == 0 and t + k < ep["length"] - 1]
    assert 0 < len(expected) == len(pairs["real"]["images"])
    np.testing.assert_array_equal(pairs["predicted"]["images"], np.stack([ep["images"][t] for ep, t in expected]))
    np.testing.assert_array_equal(pairs["real"]["images"], np.stack([ep["images"][t + k] for ep, t in expected]))
    tokens, _ = tokenizer.encode_batch([str(ep["instruction"][t]) for ep, t in expected], config.data.max_text_len)
    np.testing.assert_array_equal(pairs["real"]["tokens"], tokens)
    # the return that followed frame t + k: 1 on the last of the episode's remaining steps, gamma per step
    gamma = config.rl.gamma
    by_hand = [bool(ep["success"]) * gamma ** (ep["length"] - 1 - (t + k) - 1) for ep, t in expected]
    np.testing.assert_allclose(pairs["returns"], by_hand, rtol=1e-6)
    assert any(by_hand) and set(np.round(pairs["returns"], 6)) != {1.0}


def test_the_value_anchor_joins_the_critics_rows_and_logs_its_gap():
    """rl.value_anchor: anchor_gap is the critic's mean value of the predicted views minus that of the
    real ones at the refill, on the pairs drawn for the iteration."""
    rng = np.random.default_rng(4)
    config, policy, params, optimizer, iteration = _parts()
    obs = lambda: {"images": rng.integers(0, 255, (5, 2, config.image_size, config.image_size, 3), np.uint8),  # noqa: E731
                   "tokens": np.ones((5, config.data.max_text_len), np.int32),
                   "token_mask": np.ones((5, config.data.max_text_len), bool)}
    anchor = {"predicted": obs(), "real": obs(), "returns": rng.uniform(0, 1, 5).astype(np.float32)}
    idx = np.random.default_rng([3, 0, 0xA7]).integers(0, 5, 16)
    gap = policy.value(params, jax.tree.map(lambda x: x[idx], anchor["predicted"])) - policy.value(
        params, jax.tree.map(lambda x: x[idx], anchor["real"]))
    fresh = lambda: ppo.init_state(config.rl, optimizer, jax.tree.map(jnp.copy, params))  # noqa: E731 (donated)
    _, plain = iteration(fresh(), 0)
    assert "anchor_gap" not in plain
    with config.unlocked():
        config.rl.value_anchor = 16
    anchored = mbpo.make_iteration(policy, config.rl, ModelWorld(WorldModel(config), 0.3),
                                   WorldModel(config).init(jax.random.PRNGKey(5)),
                                   mbpo.branch_sampler(_roots(config), config.rl.num_branches, seed=3),
                                   num_chunks=2, seed=3, optimizer=optimizer, anchor=anchor)
    _, metrics = anchored(fresh(), 0)
    assert float(metrics["anchor_gap"]) == pytest.approx(float(jnp.mean(gap)), abs=1e-5)
    v_predicted = policy.value(params, jax.tree.map(lambda x: x[idx], anchor["predicted"]))
    assert float(metrics["anchor_return_gap"]) == pytest.approx(
        float(jnp.mean(v_predicted - anchor["returns"][idx])), abs=1e-5)


def test_the_periodic_check_draws_its_episodes_from_the_seed_and_not_the_final_tables():
    data = lambda k: tuple(np.asarray(jax.random.key_data(k)).ravel())  # noqa: E731
    keys = {(seed, step): data(mbpo_stage.periodic_eval_key(seed, step)) for seed in (0, 1) for step in (0, 12, 24)}
    assert len(set(keys.values())) == len(keys)
    config = tabletop.get_config("smoke")
    assert data(evaluation_key(config)) not in keys.values()
