#!/usr/bin/env python3
"""Runs vlambpo_jax on a GCP Cloud TPU pod slice with gcloud: create, setup, run, logs, stop, delete.

Every subcommand takes --dry-run, which prints the gcloud commands instead of running them.

  python launch/tpu_pod.py create --name=vlambpo --zone=us-central2-b --type=v4-32 --spot
  python launch/tpu_pod.py setup  --name=vlambpo --zone=us-central2-b --bucket=BUCKET
  python launch/tpu_pod.py run    --name=vlambpo --zone=us-central2-b \\
      --config=configs/bridge.py --workdir=/mnt/gcs/BUCKET/runs/bridge1 -- --config.sft.steps=20000
  python launch/tpu_pod.py logs   --name=vlambpo --zone=us-central2-b
  python launch/tpu_pod.py stop   --name=vlambpo --zone=us-central2-b
  python launch/tpu_pod.py delete --name=vlambpo --zone=us-central2-b

`setup` copies this checkout (git archive of HEAD) to every worker and installs it with jax[tpu] in a
Python 3.11 virtual environment (TPU VM images ship Python 3.10); with --bucket it also mounts
gs://BUCKET at /mnt/gcs/BUCKET (gcsfuse) on every worker. `run` starts `python -m vlambpo_jax.main` on
all workers at once (`--worker=all`) with `--config.distributed.enabled=yes`: JAX finds the other
workers from the TPU VM metadata, so no coordinator flags are needed. The workdir must be the mounted
bucket, so that every worker writes checkpoints to the same place (orbax saves each host's shards
there); datasets can stay gs:// URLs (`--config.data.builder_dir=gs://...`).
"""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REMOTE_DIR = "~/vlambpo_jax"
REMOTE_LOG = "~/vlambpo_jax_run.log"
REMOTE_VENV = "~/vlambpo_venv"
REMOTE_PYTHON = f"{REMOTE_VENV}/bin/python"   # left unquoted in remote commands, so that ~ expands
MOUNT_ROOT = "/mnt/gcs"


def _tpu(args, verb: str, *extra: str) -> list[str]:
    cmd = ["gcloud", "compute", "tpus", "tpu-vm", verb, args.name, f"--zone={args.zone}"]
    if args.project:
        cmd.append(f"--project={args.project}")
    return cmd + list(extra)


def _ssh_all(args, remote: str) -> list[str]:
    return _tpu(args, "ssh", "--worker=all", f"--command={remote}")


def plan_create(args) -> list[list[str]]:
    extra = [f"--accelerator-type={args.type}", f"--version={args.runtime}"]
    if args.spot:
        extra.append("--spot")
    elif args.preemptible:
        extra.append("--preemptible")
    return [_tpu(args, "create", *extra)]


def plan_setup(args) -> list[list[str]]:
    tarball = "/tmp/vlambpo_jax_src.tar.gz"
    install = (f"rm -rf {REMOTE_DIR} && mkdir -p {REMOTE_DIR} && tar xzf ~/vlambpo_jax_src.tar.gz -C "
               f"{REMOTE_DIR} && cd {REMOTE_DIR} && python3 -m pip install --user -U uv && "
               f"python3 -m uv venv --seed --allow-existing --python 3.11 {REMOTE_VENV} && "
               f"{REMOTE_PYTHON} -m pip install -U pip && "
               f"{REMOTE_PYTHON} -m pip install -e '.[bridge]' 'jax[tpu]>=0.10.2'")
    if args.bucket:
        install += " && " + _mount_bucket(args.bucket)
    return [
        ["git", "-C", str(ROOT), "archive", "--format=tar.gz", f"--output={tarball}", "HEAD"],
        ["gcloud", "compute", "tpus", "tpu-vm", "scp", tarball, f"{args.name}:~/vlambpo_jax_src.tar.gz",
         f"--zone={args.zone}", "--worker=all"] + ([f"--project={args.project}"] if args.project else []),
        _ssh_all(args, install),
    ]


def _mount_bucket(bucket: str) -> str:
    """Shell commands that install gcsfuse (Google's apt repository) and mount gs://bucket at
    MOUNT_ROOT/bucket, unless it is mounted already."""
    mount = f"{MOUNT_ROOT}/{bucket}"
    return ("(command -v gcsfuse > /dev/null || (echo \"deb [signed-by=/usr/share/keyrings/cloud.google.asc] "
            "https://packages.cloud.google.com/apt gcsfuse-$(lsb_release -c -s) main\" | sudo tee "
            "/etc/apt/sources.list.d/gcsfuse.list && curl -fsSL https://packages.cloud.google.com/apt/doc/"
            "apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc > /dev/null && sudo apt-get update "
            f"-q && sudo apt-get install -y -q gcsfuse)) && sudo mkdir -p {mount} && sudo chown $USER {mount} "
            f"&& (mountpoint -q {mount} || gcsfuse --implicit-dirs {shlex.quote(bucket)} {mount})")


def plan_run(args) -> list[list[str]]:
    flags = ["--config.distributed.enabled=yes", *args.main_args]   # the user's flags win
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in
                   [("TF_CPP_MIN_LOG_LEVEL", "2"), *(e.split("=", 1) for e in args.env)])
    main = f"{REMOTE_PYTHON} -m vlambpo_jax.main " + shlex.join(
        [f"--config={args.config}", f"--workdir={args.workdir}", *flags])
    remote = (f"cd {REMOTE_DIR} && {env} nohup {main} > {REMOTE_LOG} 2>&1 &"
              if not args.foreground else f"cd {REMOTE_DIR} && {env} {main}")
    return [_ssh_all(args, remote)]


def plan_logs(args) -> list[list[str]]:
    return [_tpu(args, "ssh", f"--worker={args.worker}", f"--command=tail -n 200 -f {REMOTE_LOG}")]


def plan_stop(args) -> list[list[str]]:
    # SIGTERM: each stage checkpoints and exits cleanly; rerunning `run` resumes.
    # The pattern's brackets keep pkill from matching (and killing) the remote shell running this line.
    return [_ssh_all(args, "pkill -TERM -f '[v]lambpo_jax.main' || true")]


def plan_delete(args) -> list[list[str]]:
    return [_tpu(args, "delete", "--quiet")]


PLANS = {"create": plan_create, "setup": plan_setup, "run": plan_run, "logs": plan_logs,
         "stop": plan_stop, "delete": plan_delete}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_text in [("create", "create the TPU pod slice"),
                            ("setup", "copy this checkout to every worker and install it"),
                            ("run", "start the pipeline on all workers"),
                            ("logs", "stream the run log of one worker"),
                            ("stop", "SIGTERM the run on all workers (checkpoints, then exits)"),
                            ("delete", "delete the TPU pod slice")]:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--name", required=True, help="TPU VM name")
        p.add_argument("--zone", required=True, help="GCP zone, e.g. us-central2-b")
        p.add_argument("--project", default="", help="GCP project (default: gcloud's)")
        p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
        if name == "create":
            p.add_argument("--type", default="v4-32", help="accelerator type, e.g. v4-32, v5litepod-16")
            p.add_argument("--runtime", default="tpu-ubuntu2204-base", help="TPU VM runtime version")
            p.add_argument("--preemptible", action="store_true", help="preemptible capacity")
            p.add_argument("--spot", action="store_true", help="spot capacity")
        if name == "setup":
            p.add_argument("--bucket", default="", help=f"also mount gs://BUCKET at {MOUNT_ROOT}/BUCKET on every "
                           "worker (gcsfuse), for the workdir")
        if name == "run":
            p.add_argument("--config", required=True, help="config file[:arg], relative to the repo")
            p.add_argument("--workdir", required=True, help=f"output dir shared by the workers: the bucket "
                           f"mounted by `setup --bucket`, {MOUNT_ROOT}/BUCKET/...")
            p.add_argument("--env", action="append", default=[], help="extra NAME=VALUE for the run")
            p.add_argument("--foreground", action="store_true", help="stay attached instead of nohup")
            p.add_argument("main_args", nargs="*", help="more flags for vlambpo_jax.main (after --)")
        if name == "logs":
            p.add_argument("--worker", default="0", help="worker index to stream")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    for cmd in PLANS[args.command](args):
        print("+ " + shlex.join(cmd), flush=True)
        if not args.dry_run:
            result = subprocess.run(cmd)
            if result.returncode != 0:
                return result.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
