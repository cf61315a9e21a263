#!/usr/bin/env python3
"""SIGKILL at random points of a stage, then the same command again: does it resume and finish with the
numbers of an uninterrupted run?

  python benchmarks/kill9_stress.py --stage=sft --kills=5 [--seed=0] [--workdir=DIR] [--out=FILE]

On the Bridge smoke config (configs/bridge.py:smoke, checkpoints every 2 steps): runs the stages before
`--stage` once into a base workdir, then the stage uninterrupted (the reference). Each trial copies the
base, starts the stage, kills the process with SIGKILL (no chance to clean up) after a random step plus a
random fraction of a step (so some kills land inside a checkpoint write), reruns the same command to the
end, and compares with the reference: the final checkpoint's parameters bit for bit and the last
step's loss. Prints JSON: how many trials resumed identically, where each was killed.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vlambpo_jax.train.checkpoints import load_params  # noqa: E402

BEFORE = {"sft": "data", "wm_pretrain": "data,logged_roots", "mbpo": "data,sft,logged_roots,wm_pretrain,wm_finetune"}
COMMON = ["--config=configs/bridge.py:smoke", "--config.log.progress=lines", "--config.checkpoint.every_steps=2",
          "--config.log.every_steps=1",
          "--config.sft.steps=10", "--config.wm.pretrain_steps=8", "--config.wm.vae.steps=8",
          "--config.wm.finetune_steps=4", "--config.rl.iterations=6"]


def _cmd(workdir: Path, stages: str) -> list[str]:
    return [sys.executable, "-m", "vlambpo_jax.main", *COMMON, f"--stages={stages}", f"--workdir={workdir}"]


def _env() -> dict:
    return {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}


def _run(workdir: Path, stages: str) -> list[str]:
    """Runs the stages; -> the 'resuming from checkpoint step N' lines it printed."""
    r = subprocess.run(_cmd(workdir, stages), cwd=ROOT, env=_env(), capture_output=True, text=True,
                       timeout=1800)
    if r.returncode:
        raise RuntimeError(f"{stages} failed in {workdir}: {r.stderr.strip().splitlines()[-1:]}")
    return [line.split("] ", 1)[-1] for line in r.stdout.splitlines() if "resuming from checkpoint" in line]


def _outcome(workdir: Path, stage: str) -> tuple[list[np.ndarray], float | None]:
    """The final checkpoint's parameters and the loss of the last step (its last metrics row). Not the
    summary's final_loss: that averages the last steps this process ran, which a resume shortens."""
    summary = json.loads((workdir / stage / "DONE.json").read_text())["summary"]
    params, _ = load_params(summary["checkpoint_dir"])
    rows = [json.loads(line) for line in (workdir / stage / "metrics.jsonl").read_text().splitlines()]
    last_loss = next((r["loss"] for r in reversed(rows) if "loss" in r), None)
    return [np.asarray(x) for x in jax.tree.leaves(params)], last_loss


def _kill_run(workdir: Path, stage: str, rng: random.Random, steps_total: int) -> dict:
    """Starts the stage, SIGKILLs it after a random step (+ a random fraction of a step)."""
    kill_after = rng.randint(1, steps_total - 1)
    proc = subprocess.Popen(_cmd(workdir, stage), cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    seen, last = [], None
    for line in proc.stdout:
        if f"{stage}/" in line and "/" in line.split(":")[-1]:
            now = time.time()
            seen.append(now - last if last else 0.0)
            last = now
            if len(seen) >= kill_after:
                time.sleep(rng.random() * max(seen[-1], 0.2))
                break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return {"killed_after_progress_lines": len(seen), "planned": kill_after,
            "finished_before_kill": (workdir / stage / "DONE.json").exists()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", choices=sorted(BEFORE), default="sft")
    p.add_argument("--kills", type=int, default=5, help="trials (each one SIGKILL and one rerun)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default="", help="scratch directory (default: a temporary one, removed)")
    p.add_argument("--out", default="", help="also write the JSON here")
    args = p.parse_args(argv)
    scratch = Path(args.workdir or tempfile.mkdtemp(prefix="kill9_"))
    rng = random.Random(args.seed)
    start = time.time()
    base = scratch / "base"
    if not (base / BEFORE[args.stage].split(",")[-1] / "DONE.json").exists():
        _run(base, BEFORE[args.stage])
    reference = scratch / "reference"
    if not (reference / args.stage / "DONE.json").exists():
        shutil.rmtree(reference, ignore_errors=True)
        shutil.copytree(base, reference)
        _run(reference, args.stage)
    want_params, want_loss = _outcome(reference, args.stage)
    # progress lines of one run: the stage's training loops (e.g. VAE + dynamics) together
    steps_total = {"sft": 10, "wm_pretrain": 16, "mbpo": 6}[args.stage]
    trials = []
    for i in range(args.kills):
        trial = scratch / f"trial{i}"
        shutil.rmtree(trial, ignore_errors=True)
        shutil.copytree(base, trial)
        info = _kill_run(trial, args.stage, rng, steps_total)
        resumed = _run(trial, args.stage)
        got_params, got_loss = _outcome(trial, args.stage)
        same = (len(got_params) == len(want_params)
                and all(np.array_equal(a, b) for a, b in zip(got_params, want_params))
                and got_loss == want_loss)
        trials.append({**info, "resumed": resumed, "identical": bool(same), "last_loss": got_loss})
        shutil.rmtree(trial, ignore_errors=True)
    result = {"benchmark": "kill9_stress", "stage": args.stage, "config": COMMON, "seed": args.seed,
              "kills": args.kills, "identical": sum(t["identical"] for t in trials),
              "reference_last_loss": want_loss, "trials": trials, "seconds": round(time.time() - start, 1)}
    if not args.workdir:
        shutil.rmtree(scratch, ignore_errors=True)
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0 if result["identical"] == args.kills else 1


if __name__ == "__main__":
    sys.exit(main())
