"""Launch scripts: dry runs print the expected gcloud commands; --help works."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TPU = ROOT / "launch" / "tpu_pod.py"


def _dry(verb, *args):
    out = subprocess.run([sys.executable, str(TPU), verb, "--name=pod1", "--zone=us-central2-b",
                          "--project=proj", "--dry-run", *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [line[2:] for line in out.stdout.splitlines() if line.startswith("+ ")]


def test_create_spot():
    (cmd,) = _dry("create", "--type=v4-32", "--spot")
    assert cmd.startswith("gcloud compute tpus tpu-vm create pod1")
    for part in ("--zone=us-central2-b", "--accelerator-type=v4-32", "--spot", "--project=proj",
                 "--version=tpu-ubuntu2204-base"):
        assert part in cmd


def test_setup_copies_and_installs_on_all_workers():
    archive, scp, ssh = _dry("setup")
    assert archive.startswith("git -C") and "archive" in archive
    assert "tpu-vm scp" in scp and "--worker=all" in scp
    assert "tpu-vm ssh pod1" in ssh and "--worker=all" in ssh and "pip install -e" in ssh
    assert "jax[tpu]" in ssh


def test_run_on_all_workers_with_env():
    (cmd,) = _dry("run", "--config=configs/bridge.py", "--workdir=gs://b/run1", "--env=FOO=1", "--",
                  "--config.sft.steps=7")
    assert "tpu-vm ssh pod1" in cmd and "--worker=all" in cmd
    for part in ("python3 -m vlambpo_jax.main", "--config=configs/bridge.py", "--workdir=gs://b/run1",
                 "--config.sft.steps=7", "FOO=1", "nohup"):
        assert part in cmd


@pytest.mark.parametrize("verb, expected", [("stop", "pkill -TERM"), ("delete", "tpu-vm delete pod1"),
                                             ("logs", "tail -n 200 -f")])
def test_other_verbs(verb, expected):
    (cmd,) = _dry(verb)
    assert expected in cmd


def test_help_and_local_launcher_dry_run():
    for script in (TPU, ROOT / "launch" / "local_multiprocess.py"):
        out = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True)
        assert out.returncode == 0 and "--dry-run" in out.stdout
    out = subprocess.run([sys.executable, str(ROOT / "launch" / "local_multiprocess.py"), "--processes=2",
                          "--port=1234", "--dry-run", "--", "--config=configs/bridge.py:smoke"],
                         capture_output=True, text=True)
    lines = [line for line in out.stdout.splitlines() if line.startswith("+ ")]
    assert len(lines) == 2
    assert "JAX_PROCESS_ID=0" in lines[0] and "JAX_PROCESS_ID=1" in lines[1]
    assert all("JAX_COORDINATOR_ADDRESS=127.0.0.1:1234" in line and "JAX_NUM_PROCESSES=2" in line
               for line in lines)
