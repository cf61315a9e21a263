"""Baselines and ablations of one finished VLA-MBPO run, written as JSON + a markdown table.

  python -m vlambpo_jax.tools.sweep --config=configs/tabletop.py --workdir=DIR [--variants=a,b]
      [--config.KEY=VALUE ...]

DIR must hold a finished run of the config (the stages of config.stages before mbpo). Each variant gets
DIR/variants/<name>/, in which the stages it shares with the base run are symlinks and the others run
again with the variant's overrides (and the --config.KEY=VALUE overrides given here, which every
variant gets; where both set a key, the variant's wins); then its policy (MBPO's, or the baseline
stage's) is evaluated. Variants:
  online_ppo   PPO in the simulator from fresh episodes, at most as many real env steps as the collect
               stage used (online_overrides)
  branch_1, branch_4, branch_full   branch length n (the base run is n = config.rl.branch_chunks)
  branch_auto  the adaptive branch length (rl/branch_length.py; its simulator steps are counted)
  ivd, no_ivd  world model with interleaved / independent view decoding (retrains the world model);
               by default only the one the base run does not use
  no_pretrain  world model without the pretraining stage (retrains the world model)
  wm_bc        BC on world-model data: filtered behaviour cloning on the successful full-horizon branches
               imagined by the base run's world model (the `wm_bc` stage, config.rl.bc_*), no RL
  value_anchor the base run's MBPO with its critic anchored to the real returns that followed 512
               collected chunk boundaries per iteration (config.rl.value_anchor; needs rl.world='model')
Results: DIR/sweep/results.json and DIR/sweep/results.md (with the base run's sft and mbpo rows), updated
after each variant; rows of other calls on the same DIR are kept, so variants can run in separate (even
parallel) calls.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from absl import flags

from vlambpo_jax import cli, pipeline
from vlambpo_jax.envs import horizon_chunks
from vlambpo_jax.stages import STAGES

# Stages that train the policy a variant evaluates; the stages before them are shared with the base run.
POLICY_STAGES = ("mbpo", "wm_bc")
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
    "value_anchor": ("mbpo", ["--config.rl.value_anchor=512", "--config.rl.value_anchor_target=return"]),
}


def run_order(config) -> tuple[str, ...]:
    """The base run's stages up to its evaluation, in pipeline order (the report is not redone)."""
    return tuple(s for s in STAGES if s in tuple(config.stages) and s != "report")


def shared_stages(order: tuple[str, ...]) -> tuple[str, ...]:
    """The stages before any policy training: what every variant can take from the base run."""
    return tuple(s for s in order if s not in POLICY_STAGES + ("evaluate",))


def variant_stages(name: str, order: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...], str]:
    """-> (stages linked from the base run, stages run again, the evaluated policy's stage)."""
    first, _, *rest = VARIANTS[name]
    policy = rest[0] if rest else "mbpo"
    shared = shared_stages(order)
    cut = order.index(first) if first in order else len(shared)
    rerun = tuple(s for s in order[cut:] if s in shared) + (policy, "evaluate")
    return order[:cut], rerun, policy


def _summary(workdir: Path, stage: str) -> dict:
    return json.loads((workdir / stage / pipeline.DONE_FILE).read_text())["summary"]


def online_overrides(base: Path, rl, horizon: int, chunk: int) -> list[str]:
    """Online PPO's flags for a real budget of the collect stage's env steps, each fresh episode counted
    at its full horizon (chunks): as many iterations of rl.num_branches episodes as fit, or where one
    does not, one iteration of as many groups of rl.group_size episodes as fit. Vine advantages explore
    any chunk of a fresh episode (vine_window 0, to the episode's end); no refill trains the critic alone."""
    budget = int(_summary(base, "collect")["env_steps"])
    per_episode, branches, group = horizon * chunk, int(rl.num_branches), int(rl.group_size)
    if branches * per_episode > budget:
        branches = max(group, budget // per_episode // group * group)
    flags = [f"--config.rl.num_branches={branches}",
             f"--config.rl.iterations={max(1, budget // (branches * per_episode))}",
             "--config.rl.critic_warmup_iterations=0"]
    if rl.advantage == "vine":
        flags += ["--config.rl.vine_window=0", "--config.rl.vine_horizon=0"]
    return flags


def run_variant(name: str, config_spec: str, config, base: Path, extra: list[str]) -> dict:
    """Runs one variant in base/variants/<name> (python -m vlambpo_jax.main) -> its result row.
    config: the base run's config (with the sweep's overrides `extra`)."""
    overrides = list(VARIANTS[name][1])
    linked, stages, policy = variant_stages(name, run_order(config))
    out = base / "variants" / name
    out.mkdir(parents=True, exist_ok=True)
    for stage in linked:
        link = out / stage
        if not link.exists():
            os.symlink(base / stage, link)
    if name == "online_ppo":
        overrides += online_overrides(base, config.rl, horizon_chunks(config), config.chunk_size)
    cmd = [sys.executable, "-m", "vlambpo_jax.main", f"--config={config_spec}", f"--workdir={out}",
           "--stages=" + ",".join(stages), f"--config.eval.policies=('{policy}',)",
           *extra, *overrides]   # the variant's own overrides win over the sweep's
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


def _define(fv: flags.FlagValues) -> None:
    flags.DEFINE_list("variants", [], "subset of " + ", ".join(VARIANTS) + " (default: all of them but "
                      "the view-decoding variant the base run already is)", flag_values=fv)


def main(argv: list[str]) -> int:
    fv = cli.command_flags(argv, _define)
    config = cli.checked(fv.config)
    extra = [a for a in argv if a.startswith("--config.")]   # every variant gets them
    variants = fv.variants
    if not variants:
        same = "ivd" if config.wm.view_decoding == "interleaved" else "no_ivd"
        variants = [v for v in VARIANTS if v != same]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        cli.fail(f"--variants: unknown variant {unknown[0]!r}; known: {', '.join(VARIANTS)}")
    base = Path(cli.workdir_path(fv.workdir))
    base_results = json.loads((base / "evaluate" / "results.json").read_text())
    demos = int(_summary(base, "demos").get("steps", 0))
    collect = int(_summary(base, "collect")["env_steps"])
    out = base / "sweep"
    out.mkdir(exist_ok=True)
    # Rows of other sweep calls on this run are kept, so variants can run in separate (parallel) calls.
    rows = _merge(out, {"sft": {**base_results["sft"], "real_env_steps": demos},
                        "vla_mbpo": {**base_results["mbpo"], "real_env_steps": demos + collect}})
    for name in variants:
        r = run_variant(name, cli.config_spec(argv), config, base, extra)
        r["real_env_steps"] = demos + int(r["env_steps"]) + (0 if name == "online_ppo" else collect)
        rows = _merge(out, {name: r})
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
