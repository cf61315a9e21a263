"""The `logged_roots` stage (the real-robot path's `collect`): branch roots from logged episodes.

Reads the logged episodes config.data describes and writes `<stage_dir>/roots.npz`, the chunk-aligned
branch roots MBPO draws from (frames 0, k, 2k, ... of every episode of config.data.split, successes and
failures), and `heldout.npz`, every step of the episodes of config.logged.heldout_split (never trained
on) with the logged action chunks in dataset units (vlambpo_jax/rl/offline.py).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from vlambpo_jax import loading
from vlambpo_jax.data.tokenizer import load_wm_tokenizer
from vlambpo_jax.rl import offline
from vlambpo_jax.stages import common


def run(ctx) -> dict:
    config, logged = ctx.config, ctx.config.logged
    tokenizer = loading.make_tokenizer(config.policy.tokenizer)
    wm_tokenizer = load_wm_tokenizer(config.wm)
    k, L, Lw = int(config.chunk_size), int(config.data.max_text_len), int(config.wm.max_text_len)
    train = offline.read_episodes(config, config.data.split, int(logged.max_episodes), ctx.workdir)
    roots = offline.logged_roots(train, k, tokenizer, L, wm_tokenizer, Lw)
    held = offline.read_episodes(config, logged.heldout_split, int(logged.heldout_max_episodes), ctx.workdir)
    samples = offline.heldout_samples(held, k, tokenizer, L, wm_tokenizer, Lw)
    common.write_once("logged_roots", lambda: (np.savez_compressed(Path(ctx.stage_dir) / "roots.npz", **roots),
                                               np.savez_compressed(Path(ctx.stage_dir) / "heldout.npz", **samples)))
    summary = {
        "roots": str(Path(ctx.stage_dir) / "roots.npz"), "heldout": str(Path(ctx.stage_dir) / "heldout.npz"),
        "split": config.data.split, "episodes": len(train), "num_roots": int(len(roots["t"])),
        "logged_steps": int(sum(e["length"] for e in train)),
        "success_rate": float(np.mean([e["success"] for e in train])),
        "heldout_split": logged.heldout_split, "heldout_episodes": len(held),
        "heldout_steps": int(len(samples["t"])),
        "heldout_roots": int(np.sum(samples["t"] % k == 0)),
    }
    print(f"[{ctx.stage}] {len(train)} logged episodes of split '{config.data.split}' -> "
          f"{summary['num_roots']} branch roots (success rate {summary['success_rate']:.2f}); held out: "
          f"{len(held)} episodes, {summary['heldout_steps']} steps of split '{logged.heldout_split}'")
    return summary
