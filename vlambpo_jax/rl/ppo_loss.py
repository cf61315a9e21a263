"""PPO losses for flow-matching policies whose chunk log-probs come from a re-scored denoising chain.

The policy term is the clipped surrogate on exp(new - old log-prob) with its own clip range for
negative advantages; the value term is a clipped-value Huber loss. Both are masked means normalised
by max(sum(mask), 1), as in the authors' code.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def policy_loss(new_logp: jax.Array, old_logp: jax.Array, advantages: jax.Array, mask: jax.Array,
                clip: float = 0.1, clip_negative: float = 0.1) -> tuple[jax.Array, dict]:
    """Clipped surrogate; all inputs [N]. Returns (loss, stats)."""
    m = mask.astype(jnp.float32)
    n = jnp.maximum(m.sum(), 1.0)
    # Masked entries (e.g. the vine continuation's unscored chunks) must not overflow exp() into inf * 0.
    log_ratio = jnp.where(mask, new_logp - old_logp, 0.0)
    ratio = jnp.exp(log_ratio)
    eps = jnp.where(advantages >= 0, clip, clip_negative)
    surrogate = jnp.minimum(ratio * advantages, jnp.clip(ratio, 1.0 - eps, 1.0 + eps) * advantages)
    loss = -(surrogate * m).sum() / n
    stats = {
        "clip_frac": ((jnp.abs(ratio - 1.0) > eps) * m).sum() / n,
        "approx_kl": (((ratio - 1.0) - log_ratio) * m).sum() / n,
        "ratio_mean": (ratio * m).sum() / n,
    }
    return loss, stats


def value_loss(values: jax.Array, old_values: jax.Array, returns: jax.Array, mask: jax.Array,
               value_clip: float = 0.5, huber_delta: float = 10.0) -> jax.Array:
    """max(Huber(v - R), Huber(v_clipped - R)) with v_clipped = v_old + clip(v - v_old); inputs [N]."""
    m = mask.astype(jnp.float32)
    clipped = old_values + jnp.clip(values - old_values, -value_clip, value_clip)
    loss = jnp.maximum(optax.huber_loss(values, returns, delta=huber_delta),
                       optax.huber_loss(clipped, returns, delta=huber_delta))
    return (loss * m).sum() / jnp.maximum(m.sum(), 1.0)
