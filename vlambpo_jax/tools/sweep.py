"""Baselines and ablations of one VLA-MBPO run, written as JSON + a markdown table.

  python -m vlambpo_jax.tools.sweep --config=configs/tabletop.py:claims --workdir=DIR [--variants=a,b]
      [--lanes=2] [--config.KEY=VALUE ...]

The base run in DIR is the config's own pipeline (`python -m vlambpo_jax.main` with the same flags); where it
is not finished the sweep runs its unfinished stages first. Each variant gets DIR/variants/<name>/, in which
the base run's stages it shares are symlinks and the others run again with the variant's overrides (and the
--config.KEY=VALUE overrides given here, which every variant gets; where both set a key, the variant's wins);
then its policy (MBPO's, or the baseline stage's) is evaluated. Each run's stages are jobs (stage_jobs):
world-model pretraining, which reads the demos only, alone, the others in runs of consecutive stages; a job
starts as soon as the stages it needs are finished, the base run's first. So with --lanes=2 pretraining runs
beside SFT, and the variants that retrain the world model or use the simulator run beside the base run's
world-model stages (two processes on the same cores: each job alone leaves part of them idle). With more than
one lane each job writes DIR/sweep/logs/<job>.log (the job that evaluates a run is named after it, the others
<run>:<first stage>). Variants (default: all but branch_auto, the critic's anchor pair and the ones the base
run already is):
  online_ppo   PPO in the simulator from fresh episodes, at most as many real env steps as the collect
               stage used, or one group of rl.group_size episodes where that is more (online_overrides;
               the row's real env steps are the ones it used)
  perfect      MBPO with a perfect world model: the simulator restored at the collected roots
  branch_1, branch_4, branch_full   branch length n (the base run is n = config.rl.branch_chunks), with the
               iterations scaled to the base run's number of branch chunks
  branch_auto  the adaptive branch length (rl/branch_length.py; its simulator steps are counted)
  ivd, no_ivd  world model with interleaved / independent view decoding (retrains the world model; IVD
               without the per-block action conditioning, which it does not support)
  no_pretrain  world model without the pretraining stage (retrains the world model)
  wm_bc        BC on world-model data: filtered behaviour cloning on the successful full-horizon branches
               imagined by the base run's world model (the `wm_bc` stage, config.rl.bc_*), no RL
  value_anchor, no_anchor   MBPO with / without its critic anchored to the real returns that followed
               512 collected chunk boundaries per iteration (config.rl.value_anchor; rl.world='model')
Results: DIR/sweep/results.json and DIR/sweep/results.md (with the base run's sft and mbpo rows; each
row paired with both on the same evaluation episodes: only it / only the other, McNemar p), updated
after each variant; rows of other calls on the same DIR are kept, so variants can also run in separate
calls. DIR/sweep/timing.json holds this call's wall time per job and in all, rewritten after each job.
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from absl import flags

from vlambpo_jax import cli, pipeline
from vlambpo_jax.envs import evaluation, horizon_chunks
from vlambpo_jax.stages import STAGES

# Stages that train the policy a variant evaluates; the stages before them are shared with the base run.
POLICY_STAGES = ("mbpo", "wm_bc")
# The base run's stages that only the learned world model's variants need.
WORLD_MODEL_STAGES = ("wm_pretrain", "wm_finetune", "reward")
BASE = "base"   # the base run's name among the runs (its jobs: base, base:<first stage>)
# Stages that need only those named here (where the run has them), so they run beside the ones between (a
# stage not named needs every stage before it): pretraining reads the dataset, not the SFT policy or its rollouts.
EARLY_STAGES = {"wm_pretrain": ("demos", "data")}
SFT_ROW, BASE_ROW = "sft", "vla_mbpo"   # the base run's rows in the table


@dataclasses.dataclass(frozen=True)
class Variant:
    first: str                       # the first stage run again
    overrides: tuple[str, ...] = ()
    policy: str = "mbpo"             # the stage whose policy is evaluated
    branch_chunks: int | None = None  # n (iterations scaled to the base run's branch chunks)
    simulator: bool = False          # its world is the simulator: shares none of WORLD_MODEL_STAGES


# The default order puts the longest jobs first (those that retrain the world model, then the longer MBPO runs;
# docs/results.md section 56 replays the measured times), so the two lanes finish close together.
VARIANTS = {
    "ivd": Variant("wm_pretrain", ("--config.wm.view_decoding=interleaved", "--config.wm.action_adaln=False")),
    "no_ivd": Variant("wm_pretrain", ("--config.wm.view_decoding=independent",)),
    "no_pretrain": Variant("wm_pretrain", ("--config.wm.pretrain_enabled=False",)),
    "branch_1": Variant("mbpo", branch_chunks=1),
    "perfect": Variant("mbpo", ("--config.rl.world=sim_roots", "--config.rl.value_anchor=0"), simulator=True),
    "branch_4": Variant("mbpo", branch_chunks=4),
    "branch_full": Variant("mbpo", branch_chunks=0),
    "online_ppo": Variant("mbpo", ("--config.rl.world=sim", "--config.rl.value_anchor=0"), simulator=True),
    "branch_auto": Variant("mbpo", branch_chunks=-1),
    "no_anchor": Variant("mbpo", ("--config.rl.value_anchor=0",)),
    "value_anchor": Variant("mbpo", ("--config.rl.value_anchor=512", "--config.rl.value_anchor_target=return")),
    "wm_bc": Variant("wm_bc", policy="wm_bc"),
}


def run_order(config) -> tuple[str, ...]:
    """The base run's stages up to its evaluation, in pipeline order (the report is not redone)."""
    return tuple(s for s in STAGES if s in tuple(config.stages) and s != "report")


def shared_stages(order: tuple[str, ...]) -> tuple[str, ...]:
    """The stages before any policy training: what every variant can take from the base run."""
    return tuple(s for s in order if s not in POLICY_STAGES + ("evaluate",))


def variant_stages(name: str, order: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...], str]:
    """-> (stages linked from the base run, stages run again, the evaluated policy's stage)."""
    v = VARIANTS[name]
    shared = shared_stages(order)
    cut = order.index(v.first) if v.first in order else len(shared)
    linked = tuple(s for s in order[:cut] if not (v.simulator and s in WORLD_MODEL_STAGES))
    rerun = tuple(s for s in order[cut:] if s in shared) + (v.policy, "evaluate")
    return linked, rerun, v.policy


def default_variants(config) -> list[str]:
    """Every variant but branch_auto, value_anchor / no_anchor (the critic's anchor is beyond the paper's
    table: docs/results.md section 52 measured it) and those the base run already is."""
    same = {"branch_auto", "value_anchor", "no_anchor", "ivd" if config.wm.view_decoding == "interleaved"
            else "no_ivd"} | ({"perfect"} if config.rl.world == "sim_roots" else set())
    return [v for v in VARIANTS if v not in same]


@dataclasses.dataclass(frozen=True)
class Job:
    run: str                    # BASE or a variant's name: the workdir it runs in
    stages: tuple[str, ...]     # run in order by one process
    needs: tuple[str, ...]      # stages of that workdir to be finished first (a variant's linked ones: the base run's)


def stage_jobs(run: str, order: tuple[str, ...], todo: tuple[str, ...]) -> dict[str, Job]:
    """A run's stages `todo` (some of its pipeline `order`; the others finished, or linked from the base
    run) as jobs: each of EARLY_STAGES alone, needing only the stages named there, the others in runs of
    consecutive stages (one process each), each needing every stage of `order` before it. The job that
    holds evaluate is named after the run, the others <run>:<first stage>."""
    jobs, chunk = {}, []

    def add(stages: tuple[str, ...], needs: tuple[str, ...]) -> None:
        jobs[run if "evaluate" in stages else f"{run}:{stages[0]}"] = Job(run, stages, needs)

    def close() -> None:
        if chunk:
            add(tuple(chunk), order[:order.index(chunk[0])])
            chunk.clear()

    for stage in order:
        if stage in EARLY_STAGES:
            close()
            if stage in todo:
                add((stage,), tuple(s for s in EARLY_STAGES[stage] if s in order))
        elif stage in todo:
            chunk.append(stage)
    close()
    return jobs


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


def branch_overrides(n: int, rl, horizon: int) -> list[str]:
    """Branch length n (0 = the full horizon, -1 = adaptive) with as many iterations as give the base
    run's branch chunks (iterations x n; rounded up), where both lengths are fixed."""
    flags = [f"--config.rl.branch_chunks={n}"]
    base_n = int(rl.branch_chunks)
    if base_n > 0 and n >= 0:
        flags.append(f"--config.rl.iterations={max(1, -(-int(rl.iterations) * base_n // (n or horizon)))}")
    return flags


def variant_overrides(name: str, config, base: Path) -> list[str]:
    """The variant's flags (after the sweep's own, so they win); online_ppo reads the collect stage's
    real budget, so call it once collect is finished."""
    v = VARIANTS[name]
    flags = list(v.overrides)
    if v.branch_chunks is not None:
        flags += branch_overrides(v.branch_chunks, config.rl, horizon_chunks(config))
    if name == "online_ppo":
        flags += online_overrides(base, config.rl, horizon_chunks(config), config.chunk_size)
    return flags


def link_variant(name: str, config, base: Path) -> Path:
    """Links the stages a variant shares into base/variants/<name> (before the base run has made them:
    the links then say whether they are finished) -> that workdir."""
    out = base / "variants" / name
    out.mkdir(parents=True, exist_ok=True)
    for stage in variant_stages(name, run_order(config))[0]:
        link = out / stage
        if not link.is_symlink():
            os.symlink(base / stage, link)
    return out


def variant_command(name: str, config_spec: str, config, base: Path, extra: list[str],
                    overrides: list[str], stages: tuple[str, ...] | None = None) -> list[str]:
    """Links the shared stages (link_variant) -> the command that runs `stages` (default: all that are
    not shared), with the sweep's flags `extra` and then the variant's `overrides` (variant_overrides),
    which win."""
    _, rerun, policy = variant_stages(name, run_order(config))
    out = link_variant(name, config, base)
    return [sys.executable, "-m", "vlambpo_jax.main", f"--config={config_spec}", f"--workdir={out}",
            "--stages=" + ",".join(stages or rerun), f"--config.eval.policies=('{policy}',)",
            *extra, *overrides]


def variant_row(name: str, base: Path, overrides: list[str]) -> dict:
    """A finished variant's result row."""
    out = base / "variants" / name
    policy = VARIANTS[name].policy
    results = json.loads((out / "evaluate" / "results.json").read_text())[policy]
    summary = _summary(out, policy)
    row = {"overrides": overrides, "env_steps": summary.get("env_steps", 0), **results}
    if "rounds" in summary:  # wm_bc: imagined success and data kept per round
        row["rounds"] = summary["rounds"]
    return row


def next_job(pending: list[str], ready) -> str | None:
    """The first pending job (in the order given) that is ready (ready(name) -> bool)."""
    return next((j for j in pending if ready(j)), None)


def paired(row: dict, ref: dict | None) -> str:
    """'only row / only ref, p = P' (McNemar exact) over the same evaluation episodes (every run of a
    config evaluates the same initial states), '' where either has no per-episode outcomes."""
    a, b = row.get("successes"), (ref or {}).get("successes")
    if ref is None or row is ref or not isinstance(a, list) or not isinstance(b, list) or len(a) != len(b):
        return ""
    p = evaluation.paired_comparison(np.asarray(b, bool), np.asarray(a, bool))
    return f"{p['only_other']} / {p['only_base']}, p = {p['p_value']:.2g}"


def markdown(rows: dict) -> str:
    """The table: each row's success, interval, real env steps and wall time, paired with SFT and with
    the base run's MBPO row (only this row / only that one, McNemar p)."""
    lines = [f"| method | success (95% CI) | episodes | real env steps | vs {SFT_ROW} | vs {BASE_ROW} | wall s |",
             "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lo, hi = r["ci95"]
        wall = f"{r['wall_seconds']:.0f}" if "wall_seconds" in r else ""
        lines.append(f"| {name} | {r['success_rate']:.3f} [{lo:.3f}, {hi:.3f}] | {r['episodes']} | "
                     f"{r.get('real_env_steps', '')} | {paired(r, rows.get(SFT_ROW))} | "
                     f"{paired(r, rows.get(BASE_ROW))} | {wall} |")
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


def _real_steps(base: Path) -> tuple[int, int]:
    """(demo env steps, collect env steps) of the base run."""
    return int(_summary(base, "demos").get("steps", 0)), int(_summary(base, "collect")["env_steps"])


def _base_rows(base: Path) -> dict:
    """The finished base run's sft and mbpo rows."""
    results = json.loads((base / "evaluate" / "results.json").read_text())
    demos, collect = _real_steps(base)
    return {SFT_ROW: {**results["sft"], "real_env_steps": demos},
            BASE_ROW: {**results["mbpo"], "real_env_steps": demos + collect}}


def _define(fv: flags.FlagValues) -> None:
    flags.DEFINE_list("variants", [], "subset of " + ", ".join(VARIANTS) + " (default: all of them but "
                      "branch_auto, value_anchor / no_anchor and those the base run already is)", flag_values=fv)
    flags.DEFINE_integer("lanes", 1, "jobs run at once (the base run and variants whose shared stages "
                         "are finished); 2 keeps 2 cores busy", lower_bound=1, flag_values=fv)
    flags.DEFINE_bool("dry_run", False, "print the jobs (each one's stages and the stages it waits for) and "
                      "stop, running nothing", flag_values=fv)


def main(argv: list[str]) -> int:
    fv = cli.command_flags(argv, _define)
    config = cli.checked(fv.config)
    extra = [a for a in argv if a.startswith("--config.")]   # every variant gets them
    variants = fv.variants or default_variants(config)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        cli.fail(f"--variants: unknown variant {unknown[0]!r}; known: {', '.join(VARIANTS)}")
    spec = cli.config_spec(argv)
    base = Path(cli.workdir_path(fv.workdir))
    order = run_order(config)
    stages = tuple(config.stages)
    done = {s for s in stages if pipeline.is_done(base, s)}
    jobs = {} if set(stages) <= done else stage_jobs(BASE, stages, tuple(s for s in stages if s not in done))
    for v in variants:   # a variant's stages that are finished already are skipped by main
        linked, rerun, _ = variant_stages(v, order)
        jobs.update(stage_jobs(v, linked + rerun, rerun))
    if fv.dry_run:
        for name, job in jobs.items():
            print(f"{name}: {','.join(job.stages)}" + (f" (after {','.join(job.needs)})" if job.needs else ""))
        return 0
    workdirs = {BASE: base, **{v: link_variant(v, config, base) for v in variants}}
    out = base / "sweep"
    (out / "logs").mkdir(parents=True, exist_ok=True)
    pending = list(jobs)
    running, timing, failed, overrides = {}, {}, [], {}
    t_start = time.time()

    def ready(name: str) -> bool:
        job = jobs[name]
        return all(pipeline.is_done(workdirs[job.run], s) for s in job.needs)

    def start(name: str) -> None:
        job = jobs[name]
        if job.run == BASE:
            cmd = [sys.executable, "-m", "vlambpo_jax.main", f"--config={spec}", f"--workdir={base}",
                   "--stages=" + ",".join(job.stages), *extra]
        else:
            if job.run not in overrides:   # online_ppo's reads the collect stage's real steps
                overrides[job.run] = variant_overrides(job.run, config, base)
            cmd = variant_command(job.run, spec, config, base, extra, overrides[job.run], job.stages)
        log = None if fv.lanes == 1 else open(out / "logs" / f"{name}.log", "w")
        print(f"[sweep] {name}: started" + (f" (log: {log.name})" if log else "") + "\n+ " + " ".join(cmd),
              flush=True)
        running[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT if log else None),
                         time.time(), log)

    def write_timing() -> float:
        wall = time.time() - t_start
        (out / "timing.json").write_text(json.dumps({"lanes": fv.lanes, "wall_seconds": wall, "jobs": timing},
                                                    indent=2))
        return wall

    def finish(name: str, rc: int) -> None:
        _, t0, log = running.pop(name)
        if log:
            log.close()
        timing[name] = time.time() - t0
        write_timing()   # after every job, so a sweep stopped midway keeps the times it measured
        print(f"[sweep] {name}: {'finished' if rc == 0 else f'failed (exit {rc})'} in {timing[name]:.0f} s",
              flush=True)
        if rc != 0:
            failed.append(name)
        elif "evaluate" not in jobs[name].stages:   # a run's rows come with its evaluation
            return
        elif jobs[name].run == BASE:
            _merge(out, _base_rows(base))
        else:
            demos, collect = _real_steps(base)
            wall = sum(t for j, t in timing.items() if jobs[j].run == name)
            r = {**variant_row(name, base, overrides[name]), "wall_seconds": wall}
            r["real_env_steps"] = demos + int(r["env_steps"]) + (0 if name == "online_ppo" else collect)
            _merge(out, {name: r})

    try:
        while pending or running:
            while len(running) < fv.lanes and (job := next_job(pending, ready)) is not None:
                pending.remove(job)
                start(job)
            if not running:   # what is left waits on stages that will not run now
                failed += pending
                print(f"[sweep] not run (stages they wait for did not finish): {', '.join(pending)}")
                break
            time.sleep(2.0)
            for name, (proc, _, _) in list(running.items()):
                if proc.poll() is not None:
                    finish(name, proc.returncode)
    finally:
        for proc, _, _ in running.values():
            proc.terminate()
    wall = write_timing()
    rows = _merge(out, _base_rows(base) if pipeline.is_done(base, "evaluate") else {})
    print(markdown(rows))
    print(f"[sweep] {len(timing)} job(s) in {wall:.0f} s on {fv.lanes} lane(s)")
    if failed:
        cli.fail(f"sweep: {', '.join(failed)} did not finish" + (f" (logs in {out / 'logs'})" if fv.lanes > 1 else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
