#!/usr/bin/env python3
"""Starts N CPU processes of vlambpo_jax.main on this machine, joined by jax.distributed on 127.0.0.1.

A stand-in for a multi-host pod when testing: each process gets its own devices and its own data
shard, process 0 writes logs and reports, orbax saves across processes.

  python launch/local_multiprocess.py --processes=2 -- --config=configs/bridge.py:smoke --workdir=/tmp/mp

Exits with the first non-zero exit code of any process. Use --dry-run to print the commands.
"""
from __future__ import annotations

import argparse
import os
import shlex
import socket
import subprocess
import sys


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def commands(processes: int, port: int, main_args: list[str], devices_per_process: int):
    for i in range(processes):
        env = {"JAX_PLATFORMS": "cpu", "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
               "JAX_NUM_PROCESSES": str(processes), "JAX_PROCESS_ID": str(i),
               "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices_per_process}"}
        yield env, [sys.executable, "-m", "vlambpo_jax.main", *main_args]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=2, help="number of processes")
    parser.add_argument("--devices_per_process", type=int, default=1, help="emulated CPU devices each")
    parser.add_argument("--port", type=int, default=0, help="coordinator port (default: a free one)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("main_args", nargs="*", help="flags for vlambpo_jax.main (after --)")
    args = parser.parse_args(argv)
    port = args.port or free_port()
    procs = []
    for env, cmd in commands(args.processes, port, args.main_args, args.devices_per_process):
        print("+ " + " ".join(f"{k}={v}" for k, v in env.items()) + " " + shlex.join(cmd), flush=True)
        if not args.dry_run:
            procs.append(subprocess.Popen(cmd, env={**os.environ, **env}))
    codes = [p.wait() for p in procs]
    return next((c for c in codes if c), 0)


if __name__ == "__main__":
    sys.exit(main())
