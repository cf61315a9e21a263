"""Two local processes joined by jax.distributed (127.0.0.1) train the smoke SFT with the same losses as
one process at the same global batch, and resume together from a checkpoint they saved together."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--config=configs/bridge.py:smoke", "--stages=sft", "--config.sft.in_memory=True",
        "--config.sft.steps=4", "--config.log.every_steps=1", "--config.checkpoint.every_steps=2"]


def _losses(workdir: Path):
    rows = [json.loads(line) for line in (workdir / "sft" / "metrics.jsonl").read_text().splitlines()]
    return np.array([r["loss"] for r in rows if "loss" in r])


def test_two_processes_match_one(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    one = subprocess.run([sys.executable, "-m", "vlambpo_jax.main", *ARGS, f"--workdir={tmp_path / 'one'}"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    def run_two():
        two = subprocess.run([sys.executable, "launch/local_multiprocess.py", "--processes=2", "--",
                              *ARGS, f"--workdir={tmp_path / 'two'}"],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert two.returncode == 0, two.stderr[-3000:]
        return two

    run_two()
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(a) == 4 and len(b) == 4
    np.testing.assert_allclose(a, b, rtol=1e-5)
    assert (tmp_path / "two" / "sft" / "DONE.json").exists()

    # As if preempted after step 2: both processes restore the step-2 checkpoint and redo steps 3-4.
    (tmp_path / "two" / "sft" / "DONE.json").unlink()
    shutil.rmtree(tmp_path / "two" / "sft" / "policy" / "4")
    again = run_two()
    assert "resuming from checkpoint step 2" in again.stdout
    np.testing.assert_allclose(_losses(tmp_path / "two")[4:], a[2:], rtol=1e-5)


def test_processes_with_different_configs_stop_with_a_clear_error(tmp_path):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for i, seed in enumerate((0, 1)):
        env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT),
               "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2",
               "JAX_PROCESS_ID": str(i)}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "vlambpo_jax.main", "--config=configs/bridge.py:smoke", "--stages=data",
             f"--config.seed={seed}", f"--workdir={tmp_path / 'wd'}"],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode != 0 for p in procs)
    assert any("disagree with process 0 on the config" in err for _, err in outs), outs[0][1][-2000:]
    assert not (tmp_path / "wd" / "data" / "DONE.json").exists()
