"""The one training loop every stage uses: resume, log, checkpoint, stop cleanly on SIGTERM.

Resuming gives the same numbers as an uninterrupted run when `batch_fn(step)` and the randomness
inside `step_fn` depend only on the step (fold the step into a key), which is how the stages use it.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable

import jax

from vlambpo_jax.train.checkpoints import Checkpointer
from vlambpo_jax.train.metrics import progress

log = logging.getLogger(__name__)


@dataclasses.dataclass
class LoopResult:
    state: Any
    step: int            # steps completed
    interrupted: bool    # stopped by a termination signal before num_steps


def train_loop(ctx, *, name: str, state: Any, step_fn: Callable[[Any, Any], tuple[Any, dict]],
               batch_fn: Callable[[int], Any], num_steps: int,
               params_fn: Callable[[Any], Any] = lambda s: s.params,
               assets: dict | None = None,
               eval_fn: Callable[[Any, int], dict] | None = None, eval_every: int = 0,
               log_every: int = 0) -> LoopResult:
    """Runs `step_fn` from the newest checkpoint in `<stage_dir>/<name>` up to `num_steps`.

    step_fn(state, batch) -> (state, metrics dict of scalars); typically jitted with donation.
    eval_fn(state, step) -> metrics, called every `eval_every` steps and at the end.
    Metrics are written every `log_every` steps (0: config.log.every_steps) and at the end.
    """
    cfg = ctx.config
    ckpt = Checkpointer(Path(ctx.stage_dir) / name, keep=cfg.checkpoint.keep,
                        async_save=cfg.checkpoint.async_save)
    start = 0
    restored = ckpt.restore(state)
    if restored is not None:
        start, state, _ = restored
        log.info("%s/%s: resuming from step %d", ctx.stage, name, start)
        print(f"[{ctx.stage}] {name}: resuming from checkpoint step {start}")

    def save(step):
        ckpt.save(step, state, params_fn(state), assets, force=True)

    step = start
    interrupted = False
    for step in progress(total=num_steps, initial=start, desc=f"{ctx.stage}/{name}",
                         mode=cfg.log.progress):
        state, metrics = step_fn(state, batch_fn(step))
        done = step + 1
        if done % (log_every or cfg.log.every_steps) == 0 or done == num_steps:
            ctx.writer.scalars(done, jax.device_get(metrics))
        if eval_fn is not None and eval_every and done % eval_every == 0 and done != num_steps:
            ctx.writer.scalars(done, eval_fn(state, done))
        if ctx.preemption.requested:
            save(done)
            interrupted = done < num_steps
            step = done
            break
        if done % cfg.checkpoint.every_steps == 0 and done != num_steps:
            save(done)
        step = done
    if not interrupted and (step > start or restored is None):
        if eval_fn is not None:
            ctx.writer.scalars(step, eval_fn(state, step))
        save(step)
    ckpt.close()
    return LoopResult(state=state, step=step, interrupted=interrupted)
