"""Per-dimension normalization statistics of actions and states, and (un)normalization.

Statistics come from one streaming pass over standardized episodes: exact mean/std (Chan's parallel
update in float64), exact min/max, and the 1st/99th percentiles from a fixed-size uniform reservoir of
rows (exact while the dataset has at most `reservoir` steps; a uniform sample beyond that). They are
cached as JSON under a cache directory keyed by a fingerprint of the dataset files and the transforms,
and travel with checkpoints via `to_dict`/`from_dict`. The world model's 256-bin action tokens use the
per-dim min/max kept here.

Modes: 'zscore' (x - mean) / std, 'percentile' 2 (x - q01) / (q99 - q01) - 1 clipped to [-1, 1], and
'quantile' the same map unclipped (openpi's and LeRobot's pi0.5 normalization, whose discretized state
bins include the values outside [-1, 1]). Dims where `mask` is False (the gripper, by default) pass
through unchanged.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import jax.numpy as jnp
import numpy as np

from vlambpo_jax.atomic_file import write_text_atomic

MODES = ("zscore", "percentile", "quantile")
_EPS = 1e-8


@dataclasses.dataclass
class ArrayStats:
    """Statistics of one array kind over all steps; every field float32[D] except mask bool[D]."""
    mean: np.ndarray
    std: np.ndarray
    q01: np.ndarray
    q99: np.ndarray
    min: np.ndarray
    max: np.ndarray
    mask: np.ndarray
    count: int = 0

    def to_dict(self) -> dict:
        out = {f.name: np.asarray(getattr(self, f.name)).tolist() for f in dataclasses.fields(self)
               if f.name != "count"}
        out["count"] = int(self.count)
        return out

    @classmethod
    def from_dict(cls, d: Mapping) -> "ArrayStats":
        return cls(**{k: np.asarray(d[k], bool if k == "mask" else np.float32)
                      for k in ("mean", "std", "q01", "q99", "min", "max", "mask")}, count=int(d.get("count", 0)))


@dataclasses.dataclass
class NormStats:
    """{'action': ArrayStats, 'state': ArrayStats} plus where they came from."""
    arrays: dict[str, ArrayStats]
    fingerprint: str = ""
    num_episodes: int = 0

    def __getitem__(self, key: str) -> ArrayStats:
        return self.arrays[key]

    def to_dict(self) -> dict:
        return {"fingerprint": self.fingerprint, "num_episodes": self.num_episodes,
                "arrays": {k: v.to_dict() for k, v in self.arrays.items()}}

    @classmethod
    def from_dict(cls, d: Mapping) -> "NormStats":
        return cls({k: ArrayStats.from_dict(v) for k, v in d["arrays"].items()},
                   fingerprint=d.get("fingerprint", ""), num_episodes=int(d.get("num_episodes", 0)))

    def save(self, path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def load(cls, path) -> "NormStats":
        return cls.from_dict(json.loads(Path(path).read_text()))


class StreamingStats:
    """Accumulates rows x float[N, D] one batch at a time; `finalize` gives ArrayStats."""

    def __init__(self, dim: int, mask=None, reservoir: int = 200_000, seed: int = 0):
        self.dim = dim
        self.count = 0
        self.mean = np.zeros((dim,), np.float64)
        self.m2 = np.zeros((dim,), np.float64)
        self.min = np.full((dim,), np.inf)
        self.max = np.full((dim,), -np.inf)
        self.mask = np.ones((dim,), bool) if mask is None else np.asarray(mask, bool)
        self.reservoir = np.zeros((reservoir, dim), np.float32)
        self._rng = np.random.default_rng(seed)

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x, np.float64).reshape(-1, self.dim)
        n = len(x)
        if n == 0:
            return
        # Chan et al. parallel merge of (count, mean, M2).
        b_mean = x.mean(0)
        b_m2 = ((x - b_mean) ** 2).sum(0)
        total = self.count + n
        delta = b_mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + b_m2 + delta ** 2 * (self.count * n / total)
        self.min = np.minimum(self.min, x.min(0))
        self.max = np.maximum(self.max, x.max(0))
        # Reservoir sampling (Algorithm R), vectorised per batch.
        cap = len(self.reservoir)
        positions = self.count + np.arange(n)  # global row numbers of this batch
        fill = positions < cap
        self.reservoir[positions[fill]] = x[fill]
        rest = np.flatnonzero(~fill)
        if rest.size:
            slots = self._rng.integers(0, positions[rest] + 1)
            keep = slots < cap
            self.reservoir[slots[keep]] = x[rest[keep]]  # later rows win on equal slots, as in order
        self.count = total

    def finalize(self) -> ArrayStats:
        if self.count == 0:
            raise ValueError("no data to compute statistics from")
        sample = self.reservoir[: min(self.count, len(self.reservoir))].astype(np.float64)
        q01, q99 = np.quantile(sample, [0.01, 0.99], axis=0)
        f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
        return ArrayStats(mean=f32(self.mean), std=f32(np.sqrt(self.m2 / self.count)), q01=f32(q01),
                          q99=f32(q99), min=f32(self.min), max=f32(self.max), mask=self.mask.copy(),
                          count=self.count)


def compute_stats(episodes: Iterable[Mapping], *, masks: Mapping[str, np.ndarray] | None = None,
                  keys=("action", "state"), reservoir: int = 200_000, fingerprint: str = "") -> NormStats:
    """One pass over standardized episodes (each with key: float[T, D]) -> NormStats.

    masks: {key: bool[D]} dims to normalize (False = leave as is, e.g. the gripper); default all True.
    """
    acc: dict[str, StreamingStats] = {}
    n = 0
    for ep in episodes:
        n += 1
        for k in keys:
            x = np.asarray(ep[k])
            if k not in acc:
                acc[k] = StreamingStats(x.shape[-1], (masks or {}).get(k), reservoir=reservoir)
            acc[k].update(x)
    if not n:
        raise ValueError("no episodes to compute normalization statistics from")
    return NormStats({k: a.finalize() for k, a in acc.items()}, fingerprint=fingerprint, num_episodes=n)


def dims_mask(dim: int, skip_dims) -> np.ndarray:
    """bool[dim], False at skip_dims (negative indices allowed)."""
    mask = np.ones((dim,), bool)
    for d in skip_dims or ():
        mask[d] = False
    return mask


def fingerprint(*parts) -> str:
    """A short stable hash of JSON-able parts (dataset identity, transform settings)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def load_or_compute(cache_dir, key: str, compute: Callable[[], NormStats], log=print) -> NormStats:
    """Returns the stats cached at cache_dir/norm_stats_<key>.json, computing and caching them if absent."""
    path = Path(cache_dir) / f"norm_stats_{key}.json"
    if path.exists():
        try:
            stats = NormStats.load(path)
            log(f"normalization statistics: loaded from cache {path}")
            return stats
        except (OSError, ValueError, KeyError) as e:
            log(f"normalization statistics: cache {path} unreadable ({e}); recomputing")
    stats = compute()
    stats.fingerprint = key
    stats.save(path)
    log(f"normalization statistics: computed over {stats.num_episodes} episodes, cached at {path}")
    return stats


def _xp(x):
    """numpy for numpy inputs, jax.numpy for jax arrays/tracers (so both work under jit)."""
    if isinstance(x, np.ndarray) or np.isscalar(x):
        return np
    return jnp


def normalize(x, stats: ArrayStats, mode: str):
    """x float[..., D] -> normalized float[..., D] (one of MODES); masked dims unchanged."""
    xp = _xp(x)
    if mode == "zscore":
        y = (x - stats.mean) / np.maximum(stats.std, _EPS)
    elif mode in ("percentile", "quantile"):
        y = 2.0 * (x - stats.q01) / np.maximum(stats.q99 - stats.q01, _EPS) - 1.0
        if mode == "percentile":
            y = xp.clip(y, -1.0, 1.0)
    else:
        raise ValueError(f"normalization mode must be one of {MODES}, got {mode!r}")
    return xp.where(stats.mask, y, x).astype(x.dtype)


def unnormalize(y, stats: ArrayStats, mode: str):
    """Inverse of `normalize` (exact for zscore and quantile; for percentile, exact inside [q01, q99])."""
    xp = _xp(y)
    if mode == "zscore":
        x = y * np.maximum(stats.std, _EPS) + stats.mean
    elif mode in ("percentile", "quantile"):
        x = (y + 1.0) / 2.0 * np.maximum(stats.q99 - stats.q01, _EPS) + stats.q01
    else:
        raise ValueError(f"normalization mode must be one of {MODES}, got {mode!r}")
    return xp.where(stats.mask, x, y).astype(y.dtype)
