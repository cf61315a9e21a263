"""vlambpo_jax.loading: a world model loads only under the layout settings it was trained with; the
mbpo stage run from the command line under other settings stops with one line naming the setting."""
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tabletop
from tests.helpers.serve_checkpoint import make_checkpoint
from vlambpo_jax import loading, pipeline
from vlambpo_jax.data import normalization
from vlambpo_jax.models.world_model import WorldModel
from vlambpo_jax.stages.wm_common import CKPT_WM
from vlambpo_jax.train.checkpoints import Checkpointer

ROOT = Path(__file__).resolve().parents[1]


def _save_world_model(config, directory: Path) -> None:
    """An untrained world model checkpoint in the wm stages' format, trained (saved) under `config`."""
    stats = normalization.ArrayStats(*(np.full(7, v, np.float32) for v in (0, 1, -2, 2, -3, 3)),
                                     mask=np.ones(7, bool), count=10)
    norm = normalization.NormStats({"action": stats, "state": stats}, fingerprint="t", num_episodes=1)
    params = WorldModel(config).init(jax.random.key(1), stats.min, stats.max)
    ckpt = Checkpointer(directory, async_save=False)
    ckpt.save(0, {"step": jnp.zeros((), jnp.int32)}, params,
              {"config": json.loads(config.to_json_best_effort()), "norm_stats": norm.to_dict()}, force=True)
    ckpt.close()


@pytest.fixture(scope="module")
def interleaved_model(tmp_path_factory):
    config = tabletop.get_config("smoke")
    config.wm.view_decoding = "interleaved"
    directory = tmp_path_factory.mktemp("wm") / CKPT_WM
    _save_world_model(config, directory)
    return directory


def test_world_model_loads_under_its_own_layout_only(interleaved_model):
    trained = tabletop.get_config("smoke")
    trained.wm.view_decoding = "interleaved"
    wm, params, assets = loading.load_world_model(interleaved_model, trained)
    assert wm.spec.view_decoding == "interleaved" and "norm_stats" in assets
    wm, _, _ = loading.load_world_model(interleaved_model)            # the saved config by default
    assert wm.spec.view_decoding == "interleaved"
    other = tabletop.get_config("smoke")
    other.wm.view_decoding = "independent"
    with pytest.raises(loading.LayoutMismatch, match="wm.view_decoding='interleaved'.*'independent'") as e:
        loading.load_world_model(interleaved_model, other)
    assert "\n" not in str(e.value)
    other = tabletop.get_config("smoke")
    other.wm.view_decoding = "interleaved"
    other.wm.timestep_shift = other.wm.timestep_shift + 1.0
    with pytest.raises(loading.LayoutMismatch, match="wm.timestep_shift"):
        loading.load_world_model(interleaved_model, other)
    other = tabletop.get_config("smoke")          # decoding alone may differ from training
    other.wm.update(view_decoding="interleaved", delta_pixels=not trained.wm.delta_pixels)
    assert loading.load_world_model(interleaved_model, other)[0].spec.delta_pixels is not trained.wm.delta_pixels


def test_mbpo_stage_refuses_another_layout_in_one_line(interleaved_model, tmp_path):
    config = tabletop.get_config("smoke")
    sft_dir = make_checkpoint(tmp_path / "sft" / "policy")
    wm_dir = tmp_path / "wm_finetune" / CKPT_WM
    wm_dir.parent.mkdir(parents=True)
    os.symlink(interleaved_model, wm_dir)
    (tmp_path / "collect").mkdir()
    for stage, summary in (("sft", {"checkpoint_dir": str(sft_dir)}), ("wm_finetune", {}),
                           ("collect", {"roots": str(tmp_path / "collect" / "roots.npz")})):
        pipeline.mark_done(tmp_path, stage, summary, 0.0)
    assert config.wm.view_decoding == "independent"
    r = subprocess.run([sys.executable, "-m", "vlambpo_jax.main", "--config=configs/tabletop.py:smoke",
                        "--stages=mbpo", f"--workdir={tmp_path}", "--config.wm.view_decoding=independent"],
                       capture_output=True, text=True, cwd=ROOT, timeout=300,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "wm.view_decoding='interleaved'" in errors[0], r.stderr
    assert r.stderr.strip().splitlines()[-1] == errors[0]
    assert not (tmp_path / "mbpo" / pipeline.DONE_FILE).exists()
