"""Faults a user or the machine causes: a full disk, an unwritable workdir, SIGKILL mid-stage, a process of
a multi-process run that dies. Each ends in one clear line, and nothing half-written counts as done."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "launch"))

import local_multiprocess  # noqa: E402

ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}


def _main(*args):
    return subprocess.run([sys.executable, "-m", "vlambpo_jax.main", "--config=configs/bridge.py:smoke", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=300, env=ENV)


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_full_disk_ends_in_one_line_and_the_stage_is_not_done(tmp_path):
    """Every write to /dev/full fails with ENOSPC, as on a full disk: here the stage's metrics file."""
    workdir = tmp_path / "wd"
    (workdir / "data").mkdir(parents=True)
    (workdir / "data" / "metrics.jsonl").symlink_to("/dev/full")
    r = _main("--stages=data", f"--workdir={workdir}")
    assert r.returncode == 2, r.stderr[-2000:]
    lines = _error_lines(r.stderr)
    assert len(lines) == 1 and "Traceback" not in r.stdout, r.stderr[-3000:]
    assert lines[0].startswith("error: cannot write ") and "No space left on device" in lines[0], lines[0]
    assert not (workdir / "data" / "DONE.json").exists()
    # With space again, the same command finishes the stage.
    (workdir / "data" / "metrics.jsonl").unlink()
    again = _main("--stages=data", f"--workdir={workdir}")
    assert again.returncode == 0, again.stderr[-2000:]
    assert (workdir / "data" / "DONE.json").exists()


def test_unwritable_workdir_ends_in_one_line(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    r = _main("--stages=data", f"--workdir={blocker / 'wd'}")  # a file where a directory must go
    assert r.returncode == 2
    lines = _error_lines(r.stderr)
    assert len(lines) == 1 and lines[0].startswith(f"error: cannot write the workdir {blocker / 'wd'}"), r.stderr


def test_sigkill_mid_stage_resumes_to_the_same_numbers(tmp_path):
    """benchmarks/kill9_stress.py with one SIGKILL in sft: the rerun ends with the uninterrupted run's
    parameters, bit for bit, and its final loss."""
    r = subprocess.run([sys.executable, "benchmarks/kill9_stress.py", "--stage=sft", "--kills=1", "--seed=3",
                        f"--workdir={tmp_path}"], capture_output=True, text=True, cwd=ROOT, timeout=900, env=ENV)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-2000:])
    result = json.loads(r.stdout)
    assert result["identical"] == 1 and not result["trials"][0]["finished_before_kill"], result


def test_a_failed_process_brings_the_others_down_with_one_line(capsys):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    failing = subprocess.Popen([sys.executable, "-c", "import sys; sys.exit(3)"])
    start = time.time()
    assert local_multiprocess.wait_all([sleeper, failing], [None, "/tmp/p1.log"]) == 3
    assert time.time() - start < 30 and sleeper.returncode is not None
    lines = _error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith("error: process 1 exited with status 3"), lines
