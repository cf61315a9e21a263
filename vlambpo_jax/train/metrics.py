"""Metrics to JSONL + TensorBoard (+ wandb when enabled), and progress bars that suit logs.

Only process 0 writes; other processes get a writer that drops everything.
"""
from __future__ import annotations

import json
import sys
import time
from typing import Iterable, Iterator

import jax
import numpy as np
import tensorboardX
import tqdm
from etils import epath


def _scalar(v) -> float:
    return float(np.asarray(v).reshape(()))


class MetricWriter:
    """Writes `<stage_dir>/metrics.jsonl` and TensorBoard events in `<stage_dir>/tb` (a local directory)."""

    def __init__(self, stage_dir, stage: str, log_config=None, run_config=None):
        self.stage = stage
        self.enabled = jax.process_index() == 0
        self.last: dict[str, float] = {}
        self._tb = self._wandb = self._jsonl = None
        if not self.enabled:
            return
        stage_dir = epath.Path(stage_dir)
        stage_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(stage_dir / "metrics.jsonl", "a")
        if log_config is None or log_config.tensorboard:
            self._tb = tensorboardX.SummaryWriter(str(stage_dir / "tb"))
        if log_config is not None and log_config.wandb:
            try:
                import wandb  # noqa: PLC0415  (optional: pip install 'vlambpo_jax[wandb]')
            except ImportError as e:
                raise RuntimeError("config.log.wandb=True needs wandb: pip install 'vlambpo_jax[wandb]'") from e
            self._wandb = wandb.init(project=log_config.wandb_project,
                                     entity=log_config.wandb_entity or None, group=stage,
                                     config=run_config.to_dict() if run_config is not None else None,
                                     reinit=True)

    def scalars(self, step: int, metrics: dict) -> None:
        """Logs a dict of scalar metrics (numbers or 0-d arrays) at `step`."""
        if not self.enabled:
            return
        values = {k: _scalar(v) for k, v in metrics.items()}
        self.last.update(values)
        line = json.dumps({"step": int(step), "time": time.time(), **values}) + "\n"
        self._jsonl.write(line)
        self._jsonl.flush()
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(f"{self.stage}/{k}", v, int(step))
        if self._wandb is not None:
            self._wandb.log({f"{self.stage}/{k}": v for k, v in values.items()}, step=int(step))

    def image(self, step: int, name: str, image: np.ndarray) -> None:
        """Logs one uint8 image [H, W, 3] to TensorBoard/wandb."""
        if not self.enabled:
            return
        if self._tb is not None:
            self._tb.add_image(f"{self.stage}/{name}", np.asarray(image), int(step), dataformats="HWC")
        if self._wandb is not None:
            import wandb  # noqa: PLC0415  (optional; present when self._wandb is)
            self._wandb.log({f"{self.stage}/{name}": wandb.Image(np.asarray(image))}, step=int(step))

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def progress(iterable: Iterable | None = None, total: int | None = None, desc: str = "",
             mode: str = "auto", initial: int = 0) -> Iterator:
    """A tqdm bar on a terminal; plain progress lines (about every 10% or 30 s) otherwise.

    mode: 'auto' | 'bar' | 'lines' | 'off'.
    """
    if iterable is None:
        iterable = range(initial, total)
    if mode == "auto":
        mode = "bar" if sys.stderr.isatty() else "lines"
    if mode == "bar":
        return iter(tqdm.tqdm(iterable, total=total, desc=desc, initial=initial, dynamic_ncols=True,
                              disable=jax.process_index() != 0))
    if mode == "off" or jax.process_index() != 0:
        return iter(iterable)
    return _lines(iterable, total, desc, initial)


def _lines(iterable, total, desc, initial):
    start = last = time.time()
    every = max(1, (total - initial) // 10) if total else 0
    for i, item in enumerate(iterable, start=initial):
        yield item
        done = i + 1
        now = time.time()
        if done == total or (every and (done - initial) % every == 0) or now - last > 30:
            rate = (done - initial) / max(now - start, 1e-9)
            eta = f", eta {(total - done) / rate:.0f} s" if total and rate > 0 else ""
            print(f"{desc}: {done}/{total or '?'} ({rate:.2f} it/s{eta})", file=sys.stderr, flush=True)
            last = now
