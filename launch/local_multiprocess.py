#!/usr/bin/env python3
"""Starts N CPU processes of vlambpo_jax.main on this machine, joined by jax.distributed on 127.0.0.1.

A stand-in for a multi-host pod when testing: each process gets its own devices and its own data
shard, process 0 writes logs and reports, orbax saves across processes.

  python launch/local_multiprocess.py --processes=2 -- --config=configs/bridge.py:smoke --workdir=/tmp/mp

Process 0 prints to this terminal; process i > 0 writes to <logs>/process<i>.log (default logs: the
run's <workdir>/processes). When a process fails, the others are killed at once (they would otherwise
wait minutes at the next barrier) and one line names the process, its exit status and its log.
Exits with that process's status (0 when all succeed). Use --dry-run to print the commands.
"""
from __future__ import annotations

import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time


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


def logs_dir(main_args: list[str], given: str) -> str:
    """--logs, else <workdir>/processes (a local --workdir), else a new temporary directory."""
    if given:
        return given
    workdir = next((a.split("=", 1)[1] for a in main_args if a.startswith("--workdir=")), "")
    if workdir and "://" not in workdir:
        return os.path.join(workdir, "processes")
    return tempfile.mkdtemp(prefix="vlambpo_processes_")


def last_line(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def wait_all(procs: list[subprocess.Popen], logs: list[str | None], poll_s: float = 0.2) -> int:
    """Waits for every process; on the first failure kills the rest and prints one line."""
    while True:
        codes = [p.poll() for p in procs]
        failed = next((i for i, c in enumerate(codes) if c not in (None, 0)), None)
        if failed is not None:
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGKILL)
            for p in procs:
                p.wait()
            where = f"; its log: {logs[failed]} (last line: {last_line(logs[failed])})" if logs[failed] else ""
            print(f"error: process {failed} exited with status {codes[failed]}{where}; stopped the "
                  f"other {len(procs) - 1} process(es)", file=sys.stderr, flush=True)
            return codes[failed]
        if all(c == 0 for c in codes):
            return 0
        time.sleep(poll_s)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=2, help="number of processes")
    parser.add_argument("--devices_per_process", type=int, default=1, help="emulated CPU devices each")
    parser.add_argument("--port", type=int, default=0, help="coordinator port (default: a free one)")
    parser.add_argument("--logs", default="", help="directory of the process<i>.log files of processes "
                        "1..N-1 (default: <workdir>/processes)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("main_args", nargs="*", help="flags for vlambpo_jax.main (after --)")
    args = parser.parse_args(argv)
    port = args.port or free_port()
    procs, logs = [], []
    for i, (env, cmd) in enumerate(commands(args.processes, port, args.main_args, args.devices_per_process)):
        print("+ " + " ".join(f"{k}={v}" for k, v in env.items()) + " " + shlex.join(cmd), flush=True)
        if args.dry_run:
            continue
        log = None
        if i > 0:
            directory = logs_dir(args.main_args, args.logs)
            os.makedirs(directory, exist_ok=True)
            log = os.path.join(directory, f"process{i}.log")
        out = open(log, "w") if log else None
        procs.append(subprocess.Popen(cmd, env={**os.environ, **env}, stdout=out,
                                      stderr=subprocess.STDOUT if out else None))
        if out:
            out.close()   # the child holds its own descriptor
        logs.append(log)
    return wait_all(procs, logs) if procs else 0


if __name__ == "__main__":
    sys.exit(main())
