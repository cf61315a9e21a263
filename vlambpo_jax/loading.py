"""Trained artifacts, loaded from checkpoints: the policy, the world model, their tokenizer and the
normalization statistics saved in a checkpoint's assets.

Stages, the tools and the policy server load through here; nothing loads a model by importing the
stage that trained it.

  load_policy(dir[, config])       -> (Policy, params, tokenizer, assets)
  load_pi05_policy(dir, config)    -> the same for a pi0.5 checkpoint as released (no training here)
  load_world_model(dir[, config])  -> (WorldModel, params, assets); refuses a config whose layout
                                      settings (LAYOUT_KEYS) differ from those it was trained with
  make_tokenizer(spec)             -> the tokenizer config.policy.tokenizer names
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vlambpo_jax.data import imported_stats, normalization
from vlambpo_jax.data import tokenizer as tok_lib
from vlambpo_jax.envs import tasks
from vlambpo_jax.errors import UserError
from vlambpo_jax.models import pi05_import
from vlambpo_jax.models.policy import Policy
from vlambpo_jax.models.world_model import WorldModel, spec_from_config
from vlambpo_jax.train import checkpoints

# World-model settings that change the token sequence or the decoding but no parameter shape: a
# checkpoint loaded under other values would run as another model without an error.
# wm.delta_pixels is not among them: it only chooses how predicted latents become pixels, so any model
# decodes either way (its reward stage's classifier read the views decoded as it was trained).
LAYOUT_KEYS = ("view_decoding", "ivd_vit_copy", "ivd_wrist_sees_head", "action_encoding", "predict_delta",
               "delta_scale", "timestep_shift", "reward_views", "action_adaln", "bagel_embeddings")


class LayoutMismatch(UserError):
    """A world-model checkpoint loaded under a config with other layout settings; str() is one line."""


def make_tokenizer(spec: str):
    """config.policy.tokenizer -> tokenizer: 'byte', 'words:tabletop' (every word of the tabletop task
    instructions, seen and unseen paraphrases) or a local Hugging Face tokenizer directory."""
    if spec == "words:tabletop":
        names = sorted(tasks.REGISTRY)
        return tok_lib.load_tokenizer(spec, tasks.build_instructions(tasks.get_tasks(names)).strings)
    if spec.startswith("words:"):
        raise ValueError(f"config.policy.tokenizer={spec!r}: the only word vocabulary is 'words:tabletop'")
    return tok_lib.load_tokenizer(spec)


def saved_config(assets: dict) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(assets["config"])


def norm_stats(assets: dict) -> normalization.NormStats:
    return normalization.NormStats.from_dict(assets["norm_stats"])


def norm_mode(assets: dict, config) -> str:
    return assets.get("norm_mode", config.data.norm_mode)


def action_unnormalizer(stats: normalization.NormStats, mode: str) -> Callable[[jax.Array], jax.Array]:
    """Normalized actions [..., action_dim] -> dataset units, with the given statistics."""
    return lambda a: normalization.unnormalize(a, stats["action"], mode)


def state_normalizer(assets: dict, config) -> Callable[[jax.Array], jax.Array]:
    """Raw proprio state [..., state_dim] -> the normalization the checkpoint's policy was trained on."""
    stats, mode = norm_stats(assets)["state"], norm_mode(assets, config)
    return lambda s: normalization.normalize(s, stats, mode)


def policy_state_normalizer(policy, assets: dict, config) -> Callable[[jax.Array], jax.Array] | None:
    """state_normalizer for a policy that reads a state token (config.policy.use_state), else None."""
    return state_normalizer(assets, config) if policy.dims.use_state else None


def load_policy(directory, config=None, step: int | None = None):
    """A policy checkpoint (e.g. workdir/sft/policy) -> (Policy, params, tokenizer, assets).

    config: defaults to the one saved in the assets (pass the live config to override sizes
    consistently). The Policy unnormalizes actions with the saved statistics.
    """
    directory = Path(directory)
    raw, assets = checkpoints.load_params(directory, step=step)
    if config is None:
        config = saved_config(assets)
    tokenizer = tok_lib.tokenizer_from_assets(assets.get("tokenizer", {"kind": "byte"}),
                                              str(directory / "tokenizer_files"))
    unnormalize = action_unnormalizer(norm_stats(assets), norm_mode(assets, config))
    policy = Policy(config, unnormalize=unnormalize, vocab_size=tokenizer.vocab_size)
    return policy, jax.tree.map(jnp.asarray, raw), tokenizer, assets


def load_pi05_policy(directory, config, asset_id: str = ""):
    """A pi0.5 checkpoint directory as released (transformers or LeRobot safetensors + config.json, with
    openpi or LeRobot normalization statistics: data/imported_stats.py) -> (Policy, params, tokenizer,
    assets) as load_policy gives them, to serve it as is.

    config: the run's config (configs/bridge.py:pi05, whose policy.tokenizer names PaliGemma's
    tokenizer directory); the checkpoint's config.json sets the model's sizes, its statistics the action
    and state dims and the normalization. asset_id: which robot's statistics (openpi's assets/<id>) when
    the checkpoint ships several. config.policy.prompt_format: 'pi05' (the state in the prompt, as
    pi05_base and pi05_droid) or 'pi0' (without, as openpi's pi05_libero). The value head (no part of
    pi0.5) is zeros."""
    directory = str(directory)
    stats, mode = imported_stats.load_checkpoint_stats(directory, asset_id)
    sizes = pi05_import.policy_sizes(directory)
    config = ml_collections.ConfigDict(config.to_dict())
    config.policy.update(sizes["policy"])
    config.chunk_size = sizes["chunk_size"] or config.chunk_size     # openpi's release does not store it
    config.image_size = sizes["image_size"]
    config.action_dim = int(stats["action"].mean.shape[0])
    config.data.update(dict(norm_mode=mode, norm_skip_action_dims=(), norm_skip_state_dims=()))
    if "state" in stats.arrays:
        config.policy.state_dim = config.data.state_dim = int(stats["state"].mean.shape[0])
    config.policy.use_state = False
    if config.policy.prompt_format == "pi05" and "state" not in stats.arrays:
        raise UserError(f"the statistics of {directory} have no state entry, which the pi05 prompt needs; "
                        "set --config.policy.prompt_format=pi0 for a checkpoint trained without the state")
    tokenizer = make_tokenizer(config.policy.tokenizer)
    policy = Policy(config, unnormalize=action_unnormalizer(stats, mode), vocab_size=tokenizer.vocab_size)
    d, length = policy.dims, int(config.policy.max_text_len)
    example = {"images": jnp.zeros((1, d.num_views, d.image_size, d.image_size, 3), jnp.uint8),
               "tokens": jnp.zeros((1, length), jnp.int32), "token_mask": jnp.ones((1, length), bool)}
    shapes = jax.eval_shape(lambda: policy.init(jax.random.PRNGKey(0), example))
    value_head = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes["value_head"])
    params = pi05_import.load_pi05(directory, {**shapes, "value_head": value_head})
    assets = {"config": json.loads(config.to_json_best_effort()), "norm_stats": stats.to_dict(),
              "norm_mode": mode, "source": directory}
    return policy, jax.tree.map(jnp.asarray, params), tokenizer, assets


def check_layout(saved: ml_collections.ConfigDict, config, what: str) -> None:
    """Raises LayoutMismatch naming the first LAYOUT_KEYS setting in which `config` differs from the
    config a world model was trained with. Settings are compared as the model reads them
    (spec_from_config), so a key missing from an older saved config counts with its default."""
    trained, wanted = spec_from_config(saved), spec_from_config(config)
    for key in LAYOUT_KEYS:
        if getattr(trained, key) != getattr(wanted, key):
            raise LayoutMismatch(
                f"{what} was trained with wm.{key}={saved.wm.get(key, getattr(trained, key))!r}, but the "
                f"config says wm.{key}={config.wm.get(key)!r}; set --config.wm.{key} to the trained value")


def load_world_model(directory, config=None):
    """A world-model checkpoint (a stage's `world_model/`) -> (WorldModel, params, assets).

    config: the live config (defaults to the one saved in the assets); its layout settings must equal
    the saved ones (check_layout).
    """
    directory = Path(directory)
    _, assets = checkpoints.load_params(directory)
    saved = saved_config(assets)
    if config is None:
        config = saved
    else:
        check_layout(saved, config, f"the world model in {directory}")
    wm = WorldModel(config)
    target = jax.eval_shape(lambda: wm.init(jax.random.key(0)))
    params, _ = checkpoints.load_params(directory, jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), target))
    return wm, params, assets
