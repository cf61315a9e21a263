"""Checkpointer: round trip, params-only load, fallback past corrupted or half-written steps."""
import logging
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from vlambpo_jax.train.checkpoints import Checkpointer, CheckpointError, load_params


def _state(v):
    return {"params": {"w": jnp.full((4, 3), v, jnp.float32), "b": jnp.arange(3.0) + v},
            "step": jnp.asarray(int(v), jnp.int32)}


def _save_steps(directory, steps):
    ckpt = Checkpointer(directory, keep=5, async_save=True)
    for s in steps:
        st = _state(float(s))
        ckpt.save(s, st, st["params"], {"norm": {"mean": [float(s)]}, "tokenizer": "byte"})
    ckpt.close()


def test_round_trip_and_params_only(tmp_path):
    _save_steps(tmp_path, [1, 2])
    step, state, assets = Checkpointer(tmp_path).restore(_state(0.0))
    assert step == 2
    np.testing.assert_array_equal(state["params"]["w"], np.full((4, 3), 2.0))
    assert int(state["step"]) == 2 and assets["norm"]["mean"] == [2.0]
    params, assets = load_params(tmp_path)
    np.testing.assert_array_equal(np.asarray(params["b"]), np.arange(3.0) + 2)
    assert assets["tokenizer"] == "byte"


def test_no_checkpoint_gives_none(tmp_path):
    assert Checkpointer(tmp_path / "empty").restore(_state(0.0)) is None
    with pytest.raises(CheckpointError):
        load_params(tmp_path / "empty")


def _data_files(step_dir: Path):
    return [p for p in step_dir.rglob("*") if p.is_file() and p.stat().st_size > 0
            and "train_state" in p.parts and "_METADATA" not in p.name
            and "_CHECKPOINT_METADATA" not in p.name]


def test_truncated_newest_falls_back_with_warning(tmp_path, caplog):
    _save_steps(tmp_path, [1, 2])
    for f in _data_files(tmp_path / "2"):
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 3])
    with caplog.at_level(logging.WARNING):
        step, state, _ = Checkpointer(tmp_path).restore(_state(0.0))
    assert step == 1
    np.testing.assert_array_equal(state["params"]["w"], np.full((4, 3), 1.0))
    assert any("unreadable" in r.message for r in caplog.records)


def test_half_written_newest_falls_back(tmp_path):
    _save_steps(tmp_path, [1, 2])
    # An interrupted save leaves a step directory whose item data is missing.
    for item in (tmp_path / "2").iterdir():
        if item.is_dir() and item.name == "train_state":
            for p in sorted(item.rglob("*"), reverse=True):
                p.unlink() if p.is_file() else p.rmdir()
    step, _, _ = Checkpointer(tmp_path).restore(_state(0.0))
    assert step == 1


def test_wrong_structure_is_not_loaded(tmp_path):
    _save_steps(tmp_path, [1])
    other = {"params": {"w": jnp.zeros((5, 3)), "b": jnp.zeros(3)}, "step": jnp.asarray(0)}
    assert Checkpointer(tmp_path).restore(other) is None
