"""Wall time and real env steps per stage of a finished pipeline run, with its results, as JSON.

  python benchmarks/pipeline_summary.py --workdir=DIR [--out benchmarks/results/NAME.json] [--note TEXT]

Reads DIR/<stage>/DONE.json of every stage (seconds, summaries), DIR/evaluate/results.json (success with Wilson 95%
intervals), the mbpo stage's per-iteration curve (rl_history), the world-model stages' held-out metrics,
DIR/report/wm_agreement.json and, when a sweep ran, DIR/sweep/results.json (baselines and ablations). Nothing is
recomputed.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vlambpo_jax.pipeline import DONE_FILE  # noqa: E402
from vlambpo_jax.stages import STAGES  # noqa: E402

# per-iteration numbers of the mbpo stage kept in rl_history
RL_CURVE_KEYS = ("branch_success", "approx_kl", "clip_frac", "mixed_groups", "explained_variance", "epochs_run")


def _read(path: Path):
    # NaN (an undefined metric in older files) is read as None, so the output is strict JSON
    return json.loads(path.read_text(), parse_constant=lambda name: None) if path.exists() else None


def summarize(workdir: Path) -> dict:
    done = {s: _read(workdir / s / DONE_FILE) for s in STAGES}
    done = {s: d for s, d in done.items() if d}
    summary = lambda s: done.get(s, {}).get("summary", {})  # noqa: E731
    demos, collect, mbpo = summary("demos"), summary("collect"), summary("mbpo")
    env_steps = {"demos": int(demos.get("steps", 0)), "collect": int(collect.get("env_steps", 0)),
                 "mbpo": int(mbpo.get("env_steps", 0))}
    out = {"workdir": str(workdir), "stage_seconds": {s: round(d["seconds"], 1) for s, d in done.items()},
           "total_seconds": round(sum(d["seconds"] for d in done.values()), 1),
           "real_env_steps_per_stage": env_steps}
    results = _read(workdir / "evaluate" / "results.json") or {}
    out["success"] = {name: {"rate": r["success_rate"], "ci95": r["ci95"], "episodes": r["episodes"]}
                      for name, r in results.items() if isinstance(r, dict) and "success_rate" in r}
    for stage in ("wm_pretrain", "wm_finetune"):
        metrics = _read(workdir / stage / DONE_FILE)
        if metrics and "eval" in metrics["summary"]:
            out[f"{stage}_eval"] = metrics["summary"]["eval"]
    history = workdir / "mbpo" / "metrics.jsonl"
    if history.exists():  # the RL curve: one row per iteration (and per periodic evaluation)
        rows = [json.loads(line, parse_constant=lambda name: None) for line in history.read_text().splitlines()]
        out["rl_history"] = [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()
                              if k == "step" or k.startswith("eval/") or k in RL_CURVE_KEYS} for row in rows]
    for name, path in (("wm_agreement", workdir / "report" / "wm_agreement.json"),
                       ("sweep", workdir / "sweep" / "results.json")):
        data = _read(path)
        if data is not None:
            out[name] = data
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="a finished run's workdir")
    parser.add_argument("--out", default="", help="also write the JSON here")
    parser.add_argument("--note", default="", help="free text stored as 'note' (machine, command)")
    args = parser.parse_args(argv)
    workdir = Path(args.workdir)
    if not (workdir / "config.json").exists():
        parser.error(f"{workdir} is not a pipeline workdir (no config.json)")
    out = summarize(workdir)
    if args.note:
        out = {"note": args.note, **out}
    text = json.dumps(out, indent=1, default=float)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
