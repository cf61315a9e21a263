"""Pipeline stages and the runner that makes each one resumable.

A stage is a function `run(ctx: StageContext) -> dict` (a JSON-able summary). The runner gives every
stage its own directory `workdir/<stage>/`; a stage that returned writes `DONE.json` there and is skipped
on the next run. A stage interrupted before that resumes from its own checkpoints in its directory.
Stages are looked up lazily by module path so that a missing optional dependency of one stage does not
break the others.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import time
from typing import Any, Callable

import jax
import ml_collections
from etils import epath

from vlambpo_jax.train import sharding

# Stage name -> "module:function". Order here is the canonical pipeline order.
STAGES: dict[str, str] = {
    "data": "vlambpo_jax.data.inspect_stage:run",
    "demos": "vlambpo_jax.envs.demos:run",
    "sft": "vlambpo_jax.models.sft:run",
    "collect": "vlambpo_jax.rl.collect:run",
    "logged_roots": "vlambpo_jax.rl.offline:run_roots",
    "wm_pretrain": "vlambpo_jax.models.wm_train:run_pretrain",
    "wm_finetune": "vlambpo_jax.models.wm_train:run_finetune",
    "mbpo": "vlambpo_jax.rl.mbpo:run",
    "wm_bc": "vlambpo_jax.rl.wm_bc:run",
    "evaluate": "vlambpo_jax.rl.evaluate:run",
    "report": "vlambpo_jax.rl.report:run",
}

DONE_FILE = "DONE.json"


@dataclasses.dataclass
class StageContext:
    """What a stage gets: the validated config, where to write, and shared services."""
    config: ml_collections.ConfigDict
    workdir: epath.Path
    stage: str
    writer: Any            # vlambpo_jax.train.metrics.MetricWriter for this stage
    preemption: Any        # vlambpo_jax.train.preemption.PreemptionGuard; poll `.requested`

    @property
    def stage_dir(self) -> epath.Path:
        return self.workdir / self.stage

    def stage_output(self, name: str) -> epath.Path:
        """Directory of another stage, which must have finished."""
        path = self.workdir / name
        if not (path / DONE_FILE).exists():
            raise RuntimeError(f"stage '{self.stage}' needs the output of stage '{name}', which has not "
                               f"finished in {self.workdir}; add '{name}' to config.stages before it")
        return path


    def stage_summary(self, name: str) -> dict:
        """The summary another (finished) stage returned, e.g. its checkpoint directory."""
        return json.loads((self.stage_output(name) / DONE_FILE).read_text())["summary"]


def resolve(stage: str) -> Callable[[StageContext], dict]:
    if stage not in STAGES:
        raise KeyError(f"unknown stage {stage!r}; known: {', '.join(STAGES)}")
    module, fn = STAGES[stage].split(":")
    return getattr(importlib.import_module(module), fn)


def is_done(workdir: epath.Path, stage: str) -> bool:
    return (workdir / stage / DONE_FILE).exists()


def mark_done(workdir: epath.Path, stage: str, summary: dict, seconds: float) -> None:
    path = workdir / stage / DONE_FILE
    tmp = path.parent / (path.name + ".tmp")
    tmp.write_text(json.dumps({"stage": stage, "seconds": seconds, "summary": summary}, indent=2,
                              default=str))
    tmp.rename(path)  # a crash never leaves a half-written marker


def run_stages(config: ml_collections.ConfigDict, workdir: epath.Path, make_writer, preemption,
               log=print) -> dict[str, dict]:
    """Runs config.stages in order, skipping finished ones. Returns {stage: summary}."""
    workdir = epath.Path(workdir)
    results = {}
    for stage in config.stages:
        if is_done(workdir, stage):
            done = json.loads((workdir / stage / DONE_FILE).read_text())
            log(f"[{stage}] already finished ({done['seconds']:.1f} s); skipping")
            results[stage] = done["summary"]
            continue
        (workdir / stage).mkdir(parents=True, exist_ok=True)
        fn = resolve(stage)
        writer = make_writer(stage)
        start = time.time()
        log(f"[{stage}] starting")
        try:
            summary = fn(StageContext(config, workdir, stage, writer, preemption)) or {}
        finally:
            writer.close()
        if preemption.requested:
            log(f"[{stage}] stopped by a termination signal; rerun to resume")
            break
        seconds = time.time() - start
        if jax.process_index() == 0:
            mark_done(workdir, stage, summary, seconds)
        sharding.barrier(f"stage_{stage}_done")
        log(f"[{stage}] finished in {seconds:.1f} s")
        results[stage] = summary
    return results
