"""Grounding co-training: an auxiliary SFT loss that teaches the policy's VLM where things are.

Flow matching on a few hundred demonstrations lets the policy recognise training scenes and replay
their demos instead of reading where the instructed object is (docs/results.md, "What the SFT runs show"). pi0.5
co-trains its VLM on non-robot data such as object localisation; here the simulator provides such data
for free: freshly reset scenes (no physics rollout, so thousands cost seconds), each labelled with where
its instruction's object and goal are (`TabletopEnv.grounding_targets`). A small MLP reads the labels
from the mean-pooled prefix (by default its final output; `grounding_layer` l reads the stream entering
block l instead, the one the action expert's attention reads at layer l) and its squared error joins the
flow loss, so its gradients shape the ViT and prefix transformer whose keys and values the action expert
attends to. The head is a training-only auxiliary that lives in the SFT state, not in the policy's
parameters, except with a perceived state (config.policy.perception_dim > 0): then the loss trains the
policy's own perception head, whose prediction the action expert reads (models/policy.py).
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from vlambpo_jax.models import policy as policy_lib
from vlambpo_jax.models.layers import GeluMLP

POSITION_SCALE = 10.0       # metres -> decimetres, so the targets are of order one
BATCH_PREFIX = "ground_"    # the pool's rows ride in the SFT batch under these keys
TARGET_NAMES = ("target", "goal")   # the first two xy pairs of the targets (metrics)


GroundingHead = GeluMLP   # on pooled prefix features float32[B, W] -> predicted targets float32[B, T]


def pool_batch(pool: Mapping[str, np.ndarray], batch_size: int, seed: int, step: int) -> dict:
    """Rows of the pool for SFT step `step` (a function of (seed, step) alone, so resuming is exact),
    under BATCH_PREFIX keys."""
    n = len(pool["targets"])
    idx = np.random.default_rng([seed, step, 23]).integers(0, n, batch_size)
    return {BATCH_PREFIX + k: v[idx] for k, v in pool.items()}


def split_batch(batch: Mapping[str, jax.Array]) -> tuple[dict, dict]:
    """An SFT batch -> (its demo part, its grounding part with the prefix removed)."""
    demo = {k: v for k, v in batch.items() if not k.startswith(BATCH_PREFIX)}
    ground = {k[len(BATCH_PREFIX):]: v for k, v in batch.items() if k.startswith(BATCH_PREFIX)}
    return demo, ground


def pooled_features(policy: policy_lib.Policy, params, obs, layer: int) -> jax.Array:
    """What the head reads: the prefix's residual stream entering block `layer` (-1: the final output),
    mean-pooled over valid tokens and RMS-normalized -> float32[B, W]."""
    depth = policy.dims.depth
    layer = depth if layer < 0 else layer
    if not 0 <= layer <= depth:
        raise ValueError(f"config.sft.grounding_layer={layer}: must be -1 or in [0, {depth}] "
                         f"(config.policy.depth={depth})")
    return policy_lib.pooled_rms(*policy.prefix_hidden(params, obs, layer))


def predict_targets(policy: policy_lib.Policy, head: GroundingHead | None, params, head_params, obs,
                    layer: int = -1) -> jax.Array:
    """The grounding prediction for `obs`: float32[B, T] of the separate `head` reading the prefix at
    `layer` (pooled_features), or with head None float32[B, perception_dim] of the policy's own
    perception head (the first perception_dim targets)."""
    if head is None:
        return policy.perceive(params, obs)
    return head.apply({"params": head_params}, pooled_features(policy, params, obs, layer))


def prediction_error(pred: jax.Array, targets: jax.Array) -> jax.Array:
    """pred float32[B, P] minus the first P targets [B, T >= P] (a perception head predicts only the
    first perception_dim targets)."""
    return pred - targets[:, :pred.shape[1]]


def grounding_loss(policy: policy_lib.Policy, head: GroundingHead | None, params, head_params,
                   batch: Mapping[str, jax.Array], layer: int = -1) -> tuple[jax.Array, dict]:
    """Mean squared error of the prediction (predict_targets) from the prefix of `batch` (observation
    keys + 'targets' float32[B, T]). Returns (loss, metrics with the mean xy errors of the named
    targets in cm)."""
    err = prediction_error(predict_targets(policy, head, params, head_params, batch, layer), batch["targets"])
    metrics = {"grounding_loss": jnp.mean(err ** 2)}
    for i, name in enumerate(TARGET_NAMES):
        metrics[f"grounding_{name}_err_cm"] = jnp.mean(xy_errors_cm(err)[:, i])
    return metrics["grounding_loss"], metrics


def xy_errors_cm(err: jax.Array) -> jax.Array:
    """Prediction minus targets float32[B, T] (scaled by POSITION_SCALE) -> the xy distance in cm of
    each named target (TARGET_NAMES) float32[B, len(TARGET_NAMES)]."""
    pairs = err[:, :2 * len(TARGET_NAMES)].reshape(err.shape[0], len(TARGET_NAMES), 2)
    return 100.0 * jnp.linalg.norm(pairs, axis=-1) / POSITION_SCALE
