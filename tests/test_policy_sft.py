"""The `sft` stage on a tiny synthetic RLDS dataset: trains, checkpoints with assets, resumes exactly,
and the saved policy loads for inference."""
from pathlib import Path

import jax
import numpy as np
import pytest

from configs import tabletop
from tests.helpers.fakes import RecordingWriter
from vlambpo_jax import loading, pipeline
from vlambpo_jax.data.rlds_writer import write_rlds
from vlambpo_jax.data.synthetic import synthetic_episode
from vlambpo_jax.stages import sft


class _StopAfter:
    """Preemption guard that fires after `n` training steps (the loop polls once per step)."""

    def __init__(self, n):
        self.n, self.polls = n, 0

    @property
    def requested(self):
        self.polls += 1
        return self.polls >= self.n


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    rng = np.random.default_rng(0)
    eps = [synthetic_episode(rng, 12, image_shape=(32, 32, 3), instruction="pick up the red cube")
           for _ in range(3)]
    return write_rlds(tmp_path_factory.mktemp("demos"), iter(eps), dataset_name="toy", image_shape=(32, 32, 3))


def _config(dataset):
    c = tabletop.get_config("smoke")
    c.data.builder_dir = str(dataset)
    c.data.batch_size = 4
    c.sft.steps = 6
    c.sft.eval_every = 0
    c.sft.eval_episodes = 0  # the simulator is tested by its own suite
    c.checkpoint.every_steps = 100
    c.checkpoint.async_save = False
    c.log.every_steps = 2
    c.log.progress = "off"
    return c


def _run(config, workdir: Path, preemption, writer=None):
    ctx = pipeline.StageContext(config, workdir, "sft", writer or RecordingWriter(), preemption)
    ctx.stage_dir.mkdir(parents=True, exist_ok=True)
    return sft.run(ctx)


def test_sft_trains_checkpoints_resumes_and_loads(dataset, tmp_path):
    config = _config(dataset)
    writer = RecordingWriter()
    full = _run(config, tmp_path / "a", _StopAfter(10 ** 9), writer)
    assert full["steps"] == 6 and not full["interrupted"]
    assert np.isfinite(full["final_loss"])
    # The smoke config co-trains grounding, so the exact resumption below covers the head's state too.
    assert config.sft.grounding_weight > 0 and "grounding_loss" in writer.last

    part = _run(config, tmp_path / "b", _StopAfter(3))
    assert part["interrupted"] and part["steps"] == 3
    rest = _run(config, tmp_path / "b", _StopAfter(10 ** 9))
    assert rest["steps"] == 6 and rest["steps_run"] == 3

    pol_a, params_a, tok, assets = loading.load_policy(tmp_path / "a" / "sft" / sft.CKPT_NAME)
    _, params_b, _, _ = loading.load_policy(tmp_path / "b" / "sft" / sft.CKPT_NAME)
    for x, y in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b)):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    assert set(assets) >= {"config", "norm_stats", "tokenizer"} and assets["tokenizer"]["kind"] == "words"

    # The loaded policy samples environment-unit actions (unnormalized with the saved statistics).
    ids, mask = tok.encode_batch(["pick up the red cube"], config.data.max_text_len)
    obs = dict(images=np.zeros((1, 2, 32, 32, 3), np.uint8), image_mask=np.ones((1, 2), bool),
               tokens=ids, token_mask=mask)
    sample = jax.jit(lambda p, o, k: pol_a.sample(p, o, k, mode="eval", return_info=True))
    actions, info = sample(params_a, obs, jax.random.key(0))
    assert actions.shape == (1, config.chunk_size, 7)
    assert not np.allclose(actions, info["actions_normalized"])
