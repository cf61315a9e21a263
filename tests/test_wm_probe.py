"""Multi-view consistency probe (models/state_probe.py): hand-computed metrics, and a probe trained on
synthetic two-view frames reads a shared state from either view (low disagreement on consistent
pairs, high on mismatched ones)."""
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from configs import bridge
from vlambpo_jax import pipeline
from vlambpo_jax.errors import UserError
from vlambpo_jax.models import state_probe
from vlambpo_jax.stages import wm_common

ROOT = Path(__file__).resolve().parents[1]


def test_metrics_by_hand():
    # readings [B=2, views=2, D=5]: xyz, one unused dim, grip (last)
    r = np.zeros((2, 2, 5), np.float32)
    r[0, 0, :3], r[0, 1, :3] = [0.0, 0.0, 0.0], [0.3, 0.4, 0.0]      # 0.5 m apart
    r[0, 0, 4], r[0, 1, 4] = 1.0, 0.25
    r[1, 0, :3], r[1, 1, :3] = [1.0, 2.0, 2.0], [1.0, 2.0, 2.0]       # agree
    r[1, :, 3] = [5.0, -5.0]                                          # ignored dim
    state = np.zeros((2, 5), np.float32)
    state[1, :3] = [1.0, 0.0, 2.0]
    m = state_probe.metrics(r, state, prefix="p_")
    np.testing.assert_allclose(m["p_consistency_pos"], [0.5, 0.0], atol=1e-6)
    np.testing.assert_allclose(m["p_consistency_grip"], [0.75, 0.0], atol=1e-6)
    np.testing.assert_allclose(m["p_probe_err_pos_head"], [0.0, 2.0], atol=1e-6)
    np.testing.assert_allclose(m["p_probe_err_pos_wrist"], [0.5, 2.0], atol=1e-6)
    assert set(state_probe.metrics(r)) == {"consistency_pos", "consistency_grip"}


def render(state, view):
    """A 6 px square whose place encodes (x, y) and whose colour encodes grip; the wrist view uses a
    different mapping (mirrored, other colour channel), like two cameras seeing one scene."""
    n = len(state)
    img = np.zeros((n, 32, 32, 3), np.uint8)
    for i, (x, y, _, g) in enumerate(state):
        r, c = int(round(x * 24)), int(round(y * 24))
        if view == 1:
            r, c = 24 - c, 24 - r
        img[i, r:r + 8, c:c + 8, view] = 255
        img[i, r:r + 8, c:c + 8, 2] = int(40 + 200 * g)
    return img


def probe_checks(tmp_path: str):
    """The trained probe's checks (run by the test below in a subprocess)."""
    tmp_path = Path(tmp_path)
    rng = np.random.default_rng(0)
    n = 512
    state = np.stack([rng.uniform(0, 1, n), rng.uniform(0, 1, n), np.zeros(n),
                      rng.integers(0, 2, n).astype(float)], 1).astype(np.float32)
    images = np.stack([render(state, 0), render(state, 1)], 1)
    probe, info = state_probe.train(images[:384], state[:384], jax.random.key(0), steps=300,
                                    batch_size=64, lr=3e-3)
    assert info["train_err_pos_0"] < 0.1 and info["train_err_pos_1"] < 0.1, info
    test_imgs, test_state = images[384:], state[384:]
    real = state_probe.metrics(state_probe.read_jit(probe, test_imgs), test_state)
    assert np.mean(real["probe_err_pos_head"]) < 0.1 and np.mean(real["probe_err_pos_wrist"]) < 0.1
    # mismatched pairs: the wrist view of another sample (an inconsistent 'prediction')
    swapped = test_imgs.copy()
    swapped[:, 1] = np.roll(test_imgs[:, 1], 7, axis=0)
    bad = state_probe.metrics(state_probe.read_jit(probe, swapped), test_state)
    true_gap = np.mean(np.linalg.norm(test_state[:, :2] - np.roll(test_state[:, :2], 7, axis=0), axis=1))
    assert np.mean(real["consistency_pos"]) < 0.1
    assert np.mean(bad["consistency_pos"]) > 3 * np.mean(real["consistency_pos"])
    assert abs(np.mean(bad["consistency_pos"]) - true_gap) < 0.1  # the probe measures the real gap
    assert np.mean(bad["consistency_grip"]) > 3 * np.mean(real["consistency_grip"])
    # save / load round trip gives the same readings
    state_probe.save(tmp_path / "p.msgpack", probe)
    again = state_probe.load(tmp_path / "p.msgpack")
    np.testing.assert_allclose(state_probe.read_jit(again, test_imgs[:4]), state_probe.read_jit(probe, test_imgs[:4]),
                               atol=1e-6)


def test_probe_reads_a_shared_state_from_both_views(tmp_path):
    # The suite's XLA:CPU optimisation level 0 (tests/conftest.py) runs this conv-net fit 12x slower, so
    # it runs in a subprocess at XLA's default level.
    flags = os.environ.get("XLA_FLAGS", "").replace("--xla_backend_optimization_level=0", "")
    r = subprocess.run([sys.executable, "-c", f"from tests.test_wm_probe import probe_checks; "
                        f"probe_checks({str(tmp_path)!r})"], cwd=ROOT, capture_output=True, text=True,
                       timeout=900, env={**os.environ, "XLA_FLAGS": flags, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr[-3000:]


def test_a_fresh_probe_fits_every_collected_frame(tmp_path):
    """wm_agreement --probe_steps: a probe fitted on every real frame of the collected rollouts (here
    the Bridge fixture in their place), and one clear line where there are none."""
    config = bridge.get_config("smoke")
    ctx = pipeline.StageContext(config, tmp_path, "report", None, None)
    with pytest.raises(UserError, match="no collected rollouts"):
        wm_common.fit_probe_on_rollouts(ctx, 2)
    with config.unlocked():
        config.wm.finetune_data = config.data.builder_dir
    probe, info = wm_common.fit_probe_on_rollouts(ctx, 3)
    episodes = wm_common.load_episodes(ctx, config.data.builder_dir)[0]
    assert info["frames"] == sum(ep["length"] for ep in episodes) and info["steps"] == 3
    images = episodes[0]["images"][:2]
    assert state_probe.read_jit(probe, images).shape == (2, images.shape[1], episodes[0]["state"].shape[-1])
