"""The `data` stage: open the dataset config.data names, compute/cache the normalization
statistics, read a few batches and print a summary of them.

Writes <stage_dir>/norm_stats.json (the statistics later stages and checkpoints use) and returns the
summary as a JSON-able dict (shapes, dtypes, value ranges, a few instructions, skipped bad episodes).
"""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from vlambpo_jax.data.rlds_reader import RLDSLoader


def summarize_batch(batch: dict) -> dict:
    """{key: {shape, dtype, min, max, mean}} for arrays; a few values for strings."""
    out = {}
    for key, v in batch.items():
        v = np.asarray(v)
        if v.dtype == object:
            out[key] = {"shape": list(v.shape), "dtype": "str", "examples": [str(s) for s in v[:3]]}
        else:
            f = v.astype(np.float64)
            out[key] = {"shape": list(v.shape), "dtype": str(v.dtype), "min": float(f.min()),
                        "max": float(f.max()), "mean": round(float(f.mean()), 6)}
    return out


def run(ctx) -> dict:
    config, log = ctx.config, print
    loader = RLDSLoader(config, workdir=ctx.workdir, log=log)
    cache_dir = config.data.stats_cache_dir or str(Path(ctx.workdir) / "norm_stats")
    stats = loader.norm_stats(cache_dir)
    stats_path = stats.save(Path(ctx.stage_dir) / "norm_stats.json")
    n_batches = int(config.data.inspect_batches)
    batches = list(itertools.islice(loader.batches(future=True, repeat=True), n_batches))
    summary = {
        "dataset": loader.name,
        "builder_dir": str(loader.builder_dir),
        "split": loader.split,
        "episodes": loader.builder.info.splits[loader.split].num_examples,
        "bad_episodes_skipped": loader.bad_episodes,
        "norm_stats": str(stats_path),
        "norm_fingerprint": stats.fingerprint,
        "action_q01": [round(x, 5) for x in stats["action"].q01.tolist()],
        "action_q99": [round(x, 5) for x in stats["action"].q99.tolist()],
        "batches_read": len(batches),
        "batch": summarize_batch(batches[0]) if batches else {},
        "instructions": sorted({str(s) for b in batches for s in b["instruction"]})[:5],
    }
    log(f"[data] {summary['dataset']} ({summary['builder_dir']}, split {summary['split']}): "
        f"{summary['episodes']} episodes, {summary['bad_episodes_skipped']} bad skipped")
    for key, s in summary["batch"].items():
        rng = f"[{s['min']:.3g}, {s['max']:.3g}]" if "min" in s else s["examples"]
        log(f"[data]   {key:16s} {s['dtype']:8s} {str(s['shape']):22s} {rng}")
    log(f"[data]   instructions: {summary['instructions']}")
    writer = getattr(ctx, "writer", None)
    if writer is not None and hasattr(writer, "scalars"):
        writer.scalars(0, {"data/episodes": float(summary["episodes"]),
                           "data/bad_episodes": float(summary["bad_episodes_skipped"])})
    return summary
