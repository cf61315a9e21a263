"""Runner + train loop: SIGTERM mid-stage checkpoints, the rerun resumes and matches a clean run."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

SCRIPT = Path(__file__).parent / "helpers" / "toy_stage.py"
ROOT = Path(__file__).resolve().parents[1]


def _run(workdir, steps, sleep):
    return subprocess.run([sys.executable, str(SCRIPT), str(workdir), str(steps), str(sleep)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_sigterm_checkpoints_and_rerun_resumes(tmp_path):
    steps = 40
    clean = _run(tmp_path / "clean", steps, 0.0)
    assert clean.returncode == 0, clean.stderr
    expected = np.load(tmp_path / "clean" / "toy" / "final.npy")

    workdir = tmp_path / "interrupted"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), str(workdir), str(steps), "0.1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    seen = 0
    for line in proc.stdout:
        seen += line.strip() == "step"
        if seen == 12:
            proc.send_signal(signal.SIGTERM)
            break
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "exit interrupted" in out
    assert not (workdir / "toy" / "DONE.json").exists()
    assert not (workdir / "toy" / "final.npy").exists()
    saved = sorted(int(p.name) for p in (workdir / "toy" / "ckpt").iterdir() if p.name.isdigit())
    assert saved and 12 <= saved[-1] < steps

    rerun = _run(workdir, steps, 0.0)
    assert rerun.returncode == 0, rerun.stderr
    assert f"resuming from checkpoint step {saved[-1]}" in rerun.stdout
    assert rerun.stdout.splitlines().count("step") == steps - saved[-1]
    np.testing.assert_array_equal(np.load(workdir / "toy" / "final.npy"), expected)
    assert (workdir / "toy" / "DONE.json").exists()

    again = _run(workdir, steps, 0.0)
    assert "already finished" in again.stdout and "step" not in again.stdout.splitlines()
