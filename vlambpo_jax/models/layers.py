"""Layers shared by the policy and the world model: RMSNorm, rotary embeddings, attention, gated MLP,
small GELU MLP heads.

Conventions follow Hugging Face Qwen2/Gemma so ported weights load unchanged: RoPE rotates the two
halves of each head dimension ("rotate_half"), and RMSNorm computes in float32.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class RMSNorm(nn.Module):
    """y = x / rms(x) * w, with w = scale (Qwen2) or w = 1 + scale (Gemma, `zero_centered=True`)."""
    eps: float = 1e-6
    zero_centered: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        init = nn.initializers.zeros if self.zero_centered else nn.initializers.ones
        scale = self.param("scale", init, (x.shape[-1],), jnp.float32)
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        w = 1.0 + scale if self.zero_centered else scale
        return (y * w).astype(x.dtype)


def rope_angles(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """positions int[..., T] -> (cos, sin) each float32[..., T, head_dim]."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: jax.Array, positions: jax.Array, theta: float = 10_000.0) -> jax.Array:
    """x [B, T, H, D], positions int[B, T] -> x rotated by position (D even)."""
    cos, sin = rope_angles(positions, x.shape[-1], theta)
    cos, sin = cos[:, :, None, :], sin[:, :, None, :]
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return (x.astype(jnp.float32) * cos + rotated.astype(jnp.float32) * sin).astype(x.dtype)


# Large finite negative instead of -inf: a query row whose keys are all masked (a padding token) then
# gets a uniform softmax rather than NaNs; its output is never used.
_MASKED_LOGIT = -2.3819763e38


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Grouped-query attention with an explicit boolean mask (softmax in float32).

    q [B, T, H, D] (already scaled), k and v [B, S, KV, D] with H a multiple of KV (KV = 1 is
    multi-query), mask bool[B, T, S] (True = query t may attend to key s) -> [B, T, H, D].
    Written out by hand because the masks here (prefix / action-chunk blocks, KV caches of another
    expert) are arbitrary booleans and jax.nn.dot_product_attention's GQA path wants equal head counts.
    """
    b, t, h, d = q.shape
    kv = k.shape[2]
    if h % kv:
        raise ValueError(f"attention: {h} query heads is not a multiple of {kv} key/value heads")
    qg = q.reshape(b, t, kv, h // kv, d)
    logits = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.float32)
    logits = jnp.where(mask[:, None, None, :, :], logits, _MASKED_LOGIT)
    probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
    return out.reshape(b, t, h, d)


class GatedMLP(nn.Module):
    """Gemma feed-forward: down(gelu_tanh(gate(x)) * up(x)); [..., W] -> [..., W] (no biases)."""
    hidden: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        gate = nn.Dense(self.hidden, use_bias=False, dtype=self.dtype, name="gate")(x)
        up = nn.Dense(self.hidden, use_bias=False, dtype=self.dtype, name="up")(x)
        return nn.Dense(x.shape[-1], use_bias=False, dtype=self.dtype, name="down")(
            nn.gelu(gate, approximate=True) * up)


class GeluMLP(nn.Module):
    """MLP head (GELU between Dense layers): float32[B, W] -> float32[B, out_dim]."""
    hidden: tuple[int, ...]
    out_dim: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i, h in enumerate(self.hidden):
            x = nn.gelu(nn.Dense(h, name=f"dense_{i}")(x))
        return nn.Dense(self.out_dim, name="out")(x)
