"""The runner that makes every pipeline stage resumable.

A stage is a module of vlambpo_jax/stages with `run(ctx: StageContext) -> dict` (a JSON-able summary);
the registry (name -> module, in pipeline order) is vlambpo_jax.stages.STAGES. The runner gives every
stage its own directory `workdir/<stage>/`; a stage that returned writes `DONE.json` there and is skipped
on the next run. A stage interrupted before that resumes from its own checkpoints in its directory.
Stage modules are imported when their stage runs, so a missing optional dependency of one stage does not
break the others.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import json
import platform
import time
from typing import Any, Callable

import jax
import ml_collections
from etils import epath

from vlambpo_jax.atomic_file import write_text_atomic
from vlambpo_jax.errors import UserError
from vlambpo_jax.stages import STAGES
from vlambpo_jax.train import sharding

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
            raise UserError(f"stage '{self.stage}' needs the output of stage '{name}', which has not "
                            f"finished in {self.workdir}; add '{name}' to config.stages before it")
        return path

    def stage_summary(self, name: str) -> dict:
        """The summary another (finished) stage returned, e.g. its checkpoint directory. Paths inside
        the workdir the stage ran in point into this workdir, so a copied or moved workdir resumes."""
        done = json.loads((self.stage_output(name) / DONE_FILE).read_text())
        old, new = done.get("workdir"), str(self.workdir)
        if not old or old == new:
            return done["summary"]
        inside = lambda v: isinstance(v, str) and (v == old or v.startswith(old.rstrip("/") + "/"))  # noqa: E731
        return {k: new + v[len(old):] if inside(v) else v for k, v in done["summary"].items()}

    def is_done(self, name: str) -> bool:
        return is_done(self.workdir, name)

    def finished(self) -> dict[str, dict]:
        """{stage: its DONE record {'stage', 'seconds', 'summary'}} of every finished stage, in order."""
        return {name: json.loads((self.workdir / name / DONE_FILE).read_text())
                for name in STAGES if self.is_done(name)}


def resolve(stage: str) -> Callable[[StageContext], dict]:
    if stage not in STAGES:
        raise KeyError(f"unknown stage {stage!r}; known: {', '.join(STAGES)}")
    return importlib.import_module(STAGES[stage]).run


def is_done(workdir: epath.Path, stage: str) -> bool:
    return (workdir / stage / DONE_FILE).exists()


# The packages whose versions can change a stage's numbers, recorded with each finished stage: the same
# code, config and seed gave two different SFT policies in two sessions, and the install was the one
# difference left unchecked (docs/results.md section 59).
NUMERIC_PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "mujoco", "mujoco-mjx",
                    "tensorflow", "tensorflow-cpu", "tensorflow-datasets", "transformers")


def installed_versions() -> dict[str, str]:
    """{'python': ..., package: version} for NUMERIC_PACKAGES ('absent' where not installed)."""
    out = {"python": platform.python_version()}
    for name in NUMERIC_PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def mark_done(workdir: epath.Path, stage: str, summary: dict, seconds: float) -> None:
    # atomic: a crash never leaves a half-written marker
    write_text_atomic(workdir / stage / DONE_FILE, json.dumps(
        {"stage": stage, "seconds": seconds, "summary": summary, "workdir": str(workdir),
         "packages": installed_versions()}, indent=2, default=str))


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
