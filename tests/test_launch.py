"""Launch scripts: dry runs print the expected gcloud commands; --help works."""
import shlex
import subprocess
import sys
import time
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


def _remote(cmd: str) -> str:
    """The shell command a printed `gcloud ... ssh --command=...` line runs on the workers."""
    (arg,) = [a for a in shlex.split(cmd) if a.startswith("--command=")]
    return arg.removeprefix("--command=")


def test_setup_copies_and_installs_on_all_workers():
    archive, scp, ssh = _dry("setup")
    assert archive.startswith("git -C") and "archive" in archive
    assert "tpu-vm scp" in scp and "--worker=all" in scp
    assert "tpu-vm ssh pod1" in ssh and "--worker=all" in ssh
    remote = _remote(ssh)   # TPU VM images ship Python 3.10; the package needs 3.11
    assert "uv venv --seed --allow-existing --python 3.11 ~/vlambpo_venv" in remote
    assert "~/vlambpo_venv/bin/python -m pip install -e '.[bridge]' 'jax[tpu]" in remote
    assert "gcsfuse" not in remote


def test_setup_mounts_the_bucket_on_every_worker():
    *_, ssh = _dry("setup", "--bucket=my-bucket")
    assert "--worker=all" in ssh
    assert _remote(ssh).endswith("(mountpoint -q /mnt/gcs/my-bucket || gcsfuse --implicit-dirs my-bucket "
                                 "/mnt/gcs/my-bucket)")


def test_run_on_all_workers_with_env():
    (cmd,) = _dry("run", "--config=configs/bridge.py", "--workdir=/mnt/gcs/b/run1", "--env=FOO=1", "--",
                  "--config.sft.steps=7")
    assert "tpu-vm ssh pod1" in cmd and "--worker=all" in cmd
    remote = _remote(cmd)
    for part in ("nohup ~/vlambpo_venv/bin/python -m vlambpo_jax.main", "--config=configs/bridge.py",
                 "--workdir=/mnt/gcs/b/run1", "--config.sft.steps=7", "FOO=1"):
        assert part in remote
    # jax.distributed is started explicitly: JAX finds the workers from the metadata of a GCE TPU VM,
    # where TPU_WORKER_HOSTNAMES (what 'auto' looks for) is not set; the user's flags come after it.
    assert remote.index("--config.distributed.enabled=yes") < remote.index("--config.sft.steps=7")


def test_stop_signals_the_run_and_not_its_own_shell():
    """The remote shell's command line holds the pattern too: pkill -f must not kill that shell (which
    would end `stop` with an error). Run here with the module name swapped for a unique one."""
    (cmd,) = _dry("stop")
    token = f"vlambpo_stop_probe_{time.time_ns()}"
    remote = _remote(cmd).replace("lambpo_jax.main", token[1:])   # the pattern is '[v]lambpo_jax.main'
    assert remote != _remote(cmd) and "pkill -TERM" in remote
    target = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", token])
    try:
        time.sleep(0.5)
        done = subprocess.run(["bash", "-c", remote], timeout=30)
        assert done.returncode == 0
        assert target.wait(timeout=10) == -15   # SIGTERM
    finally:
        target.kill()


@pytest.mark.parametrize("verb, expected", [("delete", "tpu-vm delete pod1"), ("logs", "tail -n 200 -f")])
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
