"""Metric writer (JSONL + TensorBoard) and the plain-line progress mode."""
import json

import numpy as np

from configs import common
from vlambpo_jax.train.metrics import MetricWriter, progress


def test_jsonl_and_tensorboard(tmp_path):
    writer = MetricWriter(tmp_path / "sft", "sft", common.log_config())
    writer.scalars(5, {"loss": np.float32(1.5), "lr": 0.1})
    writer.scalars(10, {"loss": np.asarray(0.5)})
    writer.close()
    rows = [json.loads(line) for line in (tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in rows] == [(5, 1.5), (10, 0.5)]
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "sft" / "tb").iterdir())
    again = MetricWriter(tmp_path / "sft", "sft", common.log_config())   # a resumed stage appends
    again.scalars(15, {"loss": 0.25})
    again.close()
    assert len((tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()) == 3


def test_progress_lines(capsys):
    assert list(progress(total=20, desc="work", mode="lines")) == list(range(20))
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("work: 20/20") and len(err) == 10
    assert list(progress(total=5, initial=3, mode="off")) == [3, 4]
