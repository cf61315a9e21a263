"""Two local processes joined by jax.distributed (127.0.0.1) train the smoke SFT with the same losses as
one process at the same global batch."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--config=configs/bridge.py:smoke", "--stages=sft", "--config.sft.in_memory=True",
        "--config.sft.steps=3", "--config.log.every_steps=1"]


def _losses(workdir: Path):
    rows = [json.loads(line) for line in (workdir / "sft" / "metrics.jsonl").read_text().splitlines()]
    return np.array([r["loss"] for r in rows if "loss" in r])


def test_two_processes_match_one(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    one = subprocess.run([sys.executable, "-m", "vlambpo_jax.main", *ARGS, f"--workdir={tmp_path / 'one'}"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "launch/local_multiprocess.py", "--processes=2", "--",
                          *ARGS, f"--workdir={tmp_path / 'two'}"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(a) == 3 and len(b) == 3
    np.testing.assert_allclose(a, b, rtol=1e-5)
    assert (tmp_path / "two" / "sft" / "DONE.json").exists()
