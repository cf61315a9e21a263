"""Chunk-level generalized advantage estimation, in the paper's and in the authors'-code form.

A transition is one action chunk of k env steps. Both forms reduce to the same recursion over chunks,
    delta_t = R_t + D (1 - term_t) V_{t+1} - V_t,   A_t = delta_t + D lambda (1 - term_t) A_{t+1},
and differ in the chunk reward R_t and the per-chunk discount D:
  - 'paper' (Eq. 4): R_t = sum_{j=1..k} gamma^(j-1) r_{t,j} over the in-chunk step rewards, D = gamma^k;
  - 'code' (the authors' implementation): R_t = one binary reward per chunk (max over the chunk),
    D = gamma.
Written as a reverse lax.scan rather than with rlax because it is a few lines, and rlax would bring
distrax and tensorflow-probability for one function.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def chunk_rewards_and_discount(step_rewards: jax.Array, gamma: float,
                               variant: str) -> tuple[jax.Array, float]:
    """step_rewards f32[T, B, k] -> (chunk rewards f32[T, B], per-chunk discount)."""
    k = step_rewards.shape[-1]
    if variant == "paper":
        weights = gamma ** jnp.arange(k, dtype=jnp.float32)
        return jnp.sum(step_rewards * weights, axis=-1), gamma ** k
    if variant == "code":
        return jnp.max(step_rewards, axis=-1), gamma
    raise ValueError(f"GAE variant must be 'paper' or 'code', not {variant!r}")


def chunk_gae(rewards: jax.Array, values: jax.Array, bootstrap_value: jax.Array,
              terminals: jax.Array, mask: jax.Array, discount: float,
              lam: float) -> tuple[jax.Array, jax.Array]:
    """GAE over chunks.

    rewards, values, terminals, mask: [T, B]; bootstrap_value: [B] = V after the last chunk.
    terminals[t] = the episode ended inside chunk t (no value after it); mask[t] = chunk t is real
    (False after a branch terminated). Returns (advantages [T, B], returns = advantages + values),
    both zero where mask is False.
    """
    terminals = terminals.astype(jnp.float32)
    mask = mask.astype(jnp.float32)
    next_values = jnp.concatenate([values[1:], bootstrap_value[None]], axis=0)

    def backward(next_adv, xs):
        r, v, v_next, term, m = xs
        cont = discount * (1.0 - term)
        delta = r + cont * v_next - v
        adv = (delta + cont * lam * next_adv) * m
        return adv, adv

    _, adv = jax.lax.scan(backward, jnp.zeros_like(bootstrap_value),
                          (rewards, values, next_values, terminals, mask), reverse=True)
    return adv, (adv + values) * mask


def normalize_advantages(adv: jax.Array, mask: jax.Array, eps: float = 1e-8) -> jax.Array:
    """Zero mean, unit std over the valid entries; masked entries stay zero."""
    m = mask.astype(jnp.float32)
    n = jnp.maximum(m.sum(), 1.0)
    mean = (adv * m).sum() / n
    std = jnp.sqrt((((adv - mean) * m) ** 2).sum() / n)
    return (adv - mean) / (std + eps) * m
