"""A tiny policy checkpoint for the serving tests and benchmark: the smoke-sized tabletop policy with
random (untrained) parameters, non-trivial action/state statistics and the config's tokenizer, saved the
way the sft stage saves (vlambpo_jax.train.checkpoints: params + assets), in about a second."""
from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np

from configs import tabletop
from vlambpo_jax import loading
from vlambpo_jax.data import normalization
from vlambpo_jax.data import tokenizer as tok_lib
from vlambpo_jax.models import policy as policy_lib
from vlambpo_jax.train import checkpoints


def _stats(dim: int, rng: np.random.Generator, skip_last: bool) -> normalization.ArrayStats:
    mean = rng.normal(size=dim).astype(np.float32)
    std = rng.uniform(0.5, 2.0, size=dim).astype(np.float32)
    mask = np.ones(dim, bool)
    if skip_last:
        mask[-1] = False          # e.g. the gripper dim passes through unnormalized
    return normalization.ArrayStats(mean=mean, std=std, q01=mean - 2 * std, q99=mean + 2 * std,
                                    min=mean - 3 * std, max=mean + 3 * std, mask=mask, count=100)


def make_checkpoint(directory, *, use_state: bool = False, seed: int = 0, config_arg: str = "smoke") -> Path:
    """Writes a checkpoint to `directory` and returns it (load with vlambpo_jax.loading.load_policy).
    config_arg: the tabletop config's argument ('smoke' sizes by default; '' = the default, full tabletop sizes)."""
    config = tabletop.get_config(config_arg)
    config.policy.use_state = use_state
    rng = np.random.default_rng(seed)
    stats = normalization.NormStats({"action": _stats(config.action_dim, rng, True),
                                     "state": _stats(config.policy.state_dim, rng, True)},
                                    fingerprint="serve-test", num_episodes=1)
    tokenizer = loading.make_tokenizer(config.policy.tokenizer)
    policy = policy_lib.Policy(config, vocab_size=tokenizer.vocab_size)
    n, s, v = config.policy.max_text_len, config.image_size, len(config.views)
    example = {"images": np.zeros((1, v, s, s, 3), np.uint8), "image_mask": np.ones((1, v), bool),
               "tokens": np.zeros((1, n), np.int32), "token_mask": np.ones((1, n), bool)}
    if use_state:
        example["state"] = np.zeros((1, config.policy.state_dim), np.float32)
    params = policy.init(jax.random.key(seed), example)
    assets = {"config": json.loads(config.to_json_best_effort()), "norm_stats": stats.to_dict(),
              "norm_mode": config.data.norm_mode, "tokenizer": tok_lib.tokenizer_assets(tokenizer),
              "vocab_size": int(tokenizer.vocab_size)}
    directory = Path(directory)
    manager = checkpoints.Checkpointer(directory, keep=1, async_save=False)
    manager.save(0, train_state={"step": np.zeros((), np.int32)}, params=params, assets=assets, force=True)
    manager.close()
    return directory
