"""Baselines and ablations of one finished VLA-MBPO run, written as JSON + a markdown table.

  python -m vlambpo_jax.rl.sweep --config=configs/tabletop.py --workdir=DIR [--variants=a,b] [-- overrides]

DIR must hold a finished run of the config (at least demos, sft, collect, wm_pretrain, wm_finetune).
Each variant gets DIR/variants/<name>/, in which the stages it shares with the base run are symlinks and
the others run again with the variant's overrides; then its policy (MBPO's, or the baseline stage's) is
evaluated. Variants:
  online_ppo   PPO in the simulator with the same number of real env steps as the collect stage used
  branch_1, branch_4, branch_full   branch length n (the base run is n = config.rl.branch_chunks)
  branch_auto  the adaptive branch length (rl/branch_length.py; its simulator steps are counted)
  ivd, no_ivd  world model with interleaved / independent view decoding (retrains the world model);
               by default only the one the base run does not use
  no_pretrain  world model without the pretraining stage (retrains the world model)
  wm_bc        BC on world-model data: filtered behaviour cloning on the successful full-horizon branches
               imagined by the base run's world model (the `wm_bc` stage, config.rl.bc_*), no RL
Results: DIR/sweep/results.json and DIR/sweep/results.md (with the base run's sft and mbpo rows), updated
after each variant; rows of other calls on the same DIR are kept, so variants can run in separate (even
parallel) calls.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

from vlambpo_jax.config_checks import load_config

SHARED = ("demos", "sft", "collect", "wm_pretrain", "wm_finetune")
# name -> (first stage run again, overrides[, the stage whose policy is evaluated (default 'mbpo')])
VARIANTS = {
    "online_ppo": ("mbpo", ["--config.rl.world=sim"]),
    "branch_1": ("mbpo", ["--config.rl.branch_chunks=1"]),
    "branch_4": ("mbpo", ["--config.rl.branch_chunks=4"]),
    "branch_full": ("mbpo", ["--config.rl.branch_chunks=0"]),
    "branch_auto": ("mbpo", ["--config.rl.branch_chunks=-1"]),
    "ivd": ("wm_pretrain", ["--config.wm.view_decoding=interleaved"]),
    "no_ivd": ("wm_pretrain", ["--config.wm.view_decoding=independent"]),
    "no_pretrain": ("wm_pretrain", ["--config.wm.pretrain_enabled=False"]),
    "wm_bc": ("wm_bc", [], "wm_bc"),
}
ORDER = ("demos", "sft", "collect", "wm_pretrain", "wm_finetune", "mbpo", "evaluate")


def variant_stages(name: str) -> tuple[tuple[str, ...], tuple[str, ...], str]:
    """-> (stages linked from the base run, stages run again, the evaluated policy's stage)."""
    first, _, *rest = VARIANTS[name]
    policy = rest[0] if rest else "mbpo"
    cut = ORDER.index(first) if first in ORDER else len(SHARED)
    rerun = tuple(s for s in ORDER[cut:-1] if s in SHARED) + (policy, "evaluate")
    return ORDER[:cut], rerun, policy


def _summary(workdir: Path, stage: str) -> dict:
    return json.loads((workdir / stage / "DONE.json").read_text())["summary"]


def online_iterations(base: Path, num_branches: int, horizon_chunks: int, chunk: int) -> int:
    """Online-PPO iterations whose real env steps match the collect stage's."""
    budget = int(_summary(base, "collect")["env_steps"])
    return max(1, math.floor(budget / (num_branches * horizon_chunks * chunk)))


def run_variant(name: str, args, extra: list[str]) -> dict:
    base = Path(args.workdir).absolute()
    overrides = VARIANTS[name][1]
    linked, stages, policy = variant_stages(name)
    out = base / "variants" / name
    out.mkdir(parents=True, exist_ok=True)
    for stage in linked:
        link = out / stage
        if not link.exists():
            os.symlink(base / stage, link)
    overrides = list(overrides)
    if name == "online_ppo":
        from vlambpo_jax.envs.tabletop import make_env
        config = load_config(args.config)
        env = make_env(config)
        chunks = math.ceil(env.max_horizon / config.chunk_size)
        iters = online_iterations(base, config.rl.num_branches, chunks, config.chunk_size)
        overrides.append(f"--config.rl.iterations={iters}")
    cmd = [sys.executable, "-m", "vlambpo_jax.main", f"--config={args.config}", f"--workdir={out}",
           "--stages=" + ",".join(stages), f"--config.eval.policies=('{policy}',)",
           *overrides, *extra]
    print("+ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    results = json.loads((out / "evaluate" / "results.json").read_text())[policy]
    summary = _summary(out, policy)
    row = {"overrides": overrides, "env_steps": summary.get("env_steps", 0), **results}
    if "rounds" in summary:  # wm_bc: imagined success and data kept per round
        row["rounds"] = summary["rounds"]
    return row


def markdown(rows: dict) -> str:
    lines = ["| method | success (95% CI) | episodes | real env steps |", "|---|---|---|---|"]
    for name, r in rows.items():
        lo, hi = r["ci95"]
        lines.append(f"| {name} | {r['success_rate']:.3f} [{lo:.3f}, {hi:.3f}] | {r['episodes']} | "
                     f"{r.get('real_env_steps', '')} |")
    return "\n".join(lines)


def _merge(out: Path, new_rows: dict) -> dict:
    """Adds rows to out/results.json as it is on disk now (another sweep call may have written to it
    since this one started), rewrites results.md, returns all rows."""
    path = out / "results.json"
    rows = json.loads(path.read_text()) if path.exists() else {}
    rows.update(new_rows)
    path.write_text(json.dumps(rows, indent=2, default=float))
    (out / "results.md").write_text(markdown(rows) + "\n")
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="the base run's config file[:arg]")
    parser.add_argument("--workdir", required=True, help="the base run's workdir")
    parser.add_argument("--variants", default="", help="comma-separated subset (default: all of them "
                        "but the view-decoding variant the base run already is)")
    parser.add_argument("overrides", nargs="*", help="config overrides for every variant (after --)")
    args = parser.parse_args(argv)
    if not args.variants:
        same = "ivd" if load_config(args.config).wm.view_decoding == "interleaved" else "no_ivd"
        args.variants = ",".join(v for v in VARIANTS if v != same)
    base = Path(args.workdir).absolute()
    base_results = json.loads((base / "evaluate" / "results.json").read_text())
    demos = int(_summary(base, "demos").get("steps", 0))
    collect = int(_summary(base, "collect")["env_steps"])
    out = base / "sweep"
    out.mkdir(exist_ok=True)
    # Rows of other sweep calls on this run are kept, so variants can run in separate (parallel) calls.
    rows = _merge(out, {"sft": {**base_results["sft"], "real_env_steps": demos},
                        "vla_mbpo": {**base_results["mbpo"], "real_env_steps": demos + collect}})
    for name in filter(None, args.variants.split(",")):
        if name not in VARIANTS:
            parser.error(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")
        r = run_variant(name, args, args.overrides)
        r["real_env_steps"] = demos + int(r["env_steps"]) + (0 if name == "online_ppo" else collect)
        rows = _merge(out, {name: r})
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
