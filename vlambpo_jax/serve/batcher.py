"""Dynamic batching of policy requests from many clients onto one compiled sampler.

Requests go into a queue; one worker thread takes the oldest, adds whatever else is waiting (up to the
largest batch size, optionally waiting `batch_wait_s` for more), pads the batch to the next compiled
size and runs the policy once. Each request carries its own seed and gets back its own row, so results
never mix and do not depend on which requests shared a batch: the sampler is `vmap` of the batch-1
`Policy.sample` over (observation, seed), i.e. request i gets exactly
``policy.sample(params, obs_i[None], jax.random.key(seed_i))[0]`` (up to float rounding of a batched
matmul). Batch sizes are fixed (`batch_sizes`) so nothing compiles after `warmup()`.
"""
from __future__ import annotations

import collections
import dataclasses
import logging
import queue
import threading
import time
from typing import Any, Callable

import jax
import numpy as np

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Result:
    """actions float32[k, action_dim] (None on error); error: the exception; timings in ms."""
    actions: np.ndarray | None
    seed: int
    batch_size: int = 0
    queue_ms: float = 0.0
    infer_ms: float = 0.0
    error: BaseException | None = None


@dataclasses.dataclass
class _Request:
    obs: dict
    seed: int
    callback: Callable[[Result], None]
    t_submit: float


class BatchedSampler:
    """policy: vlambpo_jax.models.policy.Policy; params: its params; batch_sizes: the compiled batch sizes
    (a batch of n requests runs at the smallest size >= n); mode: Policy.sample mode; seed: the stream that
    seeds requests that bring none; batch_wait_s: how long the worker waits to fill a batch (0: only what
    is already queued is batched)."""

    def __init__(self, policy, params, *, batch_sizes=(1, 2, 4, 8), mode: str = "eval", seed: int = 0,
                 batch_wait_s: float = 0.0):
        sizes = sorted({int(b) for b in batch_sizes})
        if not sizes or sizes[0] < 1:
            raise ValueError(f"batch_sizes must be positive ints, got {list(batch_sizes)}")
        if mode not in ("eval", "train"):
            raise ValueError(f"mode must be 'eval' or 'train', got {mode!r}")
        self.batch_sizes = tuple(sizes)
        self.max_batch = sizes[-1]
        self.batch_wait_s = float(batch_wait_s)
        self.params = params
        self._seeds = np.random.default_rng(seed)
        self._seed_lock = threading.Lock()
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self.batch_histogram: collections.Counter = collections.Counter()   # requests per run -> count

        def sample_one(params, obs, seed):
            one = jax.tree.map(lambda x: x[None], obs)
            return policy.sample(params, one, jax.random.key(seed), mode=mode)[0]

        self._run = jax.jit(jax.vmap(sample_one, in_axes=(None, 0, 0)))

    # ------------------------------------------------------------------ running a batch
    def _pad_to(self, n: int) -> int:
        return next(b for b in self.batch_sizes if b >= n)

    def run_batch(self, observations: list[dict], seeds: list[int]) -> np.ndarray:
        """Synchronously samples float32[n, k, action_dim] for n <= max_batch single observations."""
        n = len(observations)
        size = self._pad_to(n)
        pad = size - n
        batch = {key: np.stack([o[key] for o in observations] + [observations[0][key]] * pad)
                 for key in observations[0]}
        seed_arr = np.asarray(list(seeds) + [seeds[0]] * pad, np.uint32)
        out = self._run(self.params, batch, seed_arr)
        return np.asarray(jax.device_get(out))[:n].astype(np.float32)

    def warmup(self, example_obs: dict) -> dict:
        """Compiles every batch size with `example_obs` (one observation); returns {size: seconds}."""
        times = {}
        for size in self.batch_sizes:
            t0 = time.perf_counter()
            self.run_batch([example_obs] * size, list(range(size)))
            times[size] = time.perf_counter() - t0
        return times

    # ------------------------------------------------------------------ the queue
    def next_seed(self) -> int:
        with self._seed_lock:
            return int(self._seeds.integers(0, 2 ** 31))

    def submit(self, obs: dict, seed: int | None, callback: Callable[[Result], None]) -> None:
        """Queues one observation; `callback(Result)` is called from the worker thread."""
        if self._thread is None:
            raise RuntimeError("BatchedSampler.start() was not called")
        seed = self.next_seed() if seed is None else int(seed)
        self._queue.put(_Request(obs, seed, callback, time.perf_counter()))

    def start(self) -> "BatchedSampler":
        if self._thread is None:
            self._thread = threading.Thread(target=self._worker, name="policy-batcher", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None

    def _collect(self, first: _Request) -> tuple[list[_Request], bool]:
        batch, stop = [first], False
        deadline = time.perf_counter() + self.batch_wait_s
        while len(batch) < self.max_batch:
            try:
                wait = deadline - time.perf_counter()
                item = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                stop = True
                break
            batch.append(item)
        return batch, stop

    def _worker(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            batch, stop = self._collect(first)
            t0 = time.perf_counter()
            try:
                actions: Any = self.run_batch([r.obs for r in batch], [r.seed for r in batch])
                error = None
            except Exception as e:  # noqa: BLE001 - reported to every waiting client, the worker goes on
                actions, error = None, e
            infer_ms = (time.perf_counter() - t0) * 1e3
            self.batch_histogram[len(batch)] += 1
            for i, r in enumerate(batch):
                try:
                    r.callback(Result(actions=None if actions is None else actions[i], seed=r.seed,
                                      batch_size=len(batch), queue_ms=(t0 - r.t_submit) * 1e3,
                                      infer_ms=infer_ms, error=error))
                except Exception:  # noqa: BLE001 - one client's failed hand-off must not stop the worker
                    log.exception("delivering a result failed")
            if stop:
                return
