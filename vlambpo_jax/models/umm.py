"""Mixture-of-Transformers (MoT) decoder backbone, BAGEL layout, Qwen2 numerics.

Each layer holds two experts with identical Qwen2 decoder-block shapes: the understanding expert (text
and ViT tokens) and the generation expert (VAE latent tokens). An expert owns its pre-attention RMSNorm,
q/k/v projections (with bias), o projection (no bias), optional per-head q/k RMSNorms (QK-norm, before
RoPE), pre-MLP RMSNorm and SwiGLU MLP; the final norm is per expert too. Token embedding, lm_head and
RoPE are shared, and attention is one softmax over the whole packed sequence (plus an optional KV cache
of earlier tokens). Tokens are routed by a static (numpy) expert-id array, so the split is a fixed
gather under jit, and each expert's matmuls only run over its own tokens.

With `qk_norm=False` an expert is exactly a Hugging Face Qwen2 decoder layer (see qwen2_import.py).
"""
from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vlambpo_jax.models.layers import RMSNorm, apply_rope, dot_product_attention

KVCache = tuple  # tuple over layers of (k, v), each [B, S, kv_heads, head_dim]


@dataclasses.dataclass(frozen=True)
class UMMConfig:
    """Backbone shape. vocab_size: shared embedding / lm_head rows; width: residual width; depth: layers;
    heads / kv_heads / head_dim: grouped-query attention; mlp: SwiGLU hidden size; rope_theta: RoPE base;
    rms_eps: RMSNorm epsilon; qk_norm: per-head q/k RMSNorm in both experts (BAGEL; off for exact Qwen2);
    tie_embeddings: lm_head = embedding^T; dtype: compute dtype (params stay float32);
    gen_condition: the generation expert's two pre-norms are modulated by a per-sequence condition
    vector (adaptive RMSNorm, zero-initialised so it starts as the plain block; not in Qwen2/BAGEL);
    remat: recompute each layer in the backward pass instead of keeping its activations (only the
    layers' inputs are kept; same values and parameters)."""
    vocab_size: int
    width: int
    depth: int
    heads: int
    kv_heads: int
    head_dim: int
    mlp: int
    rope_theta: float = 10_000.0
    rms_eps: float = 1e-6
    qk_norm: bool = True
    tie_embeddings: bool = False
    dtype: str = "float32"
    gen_condition: bool = False
    remat: bool = False


def _take(x: jax.Array, idx: np.ndarray, axis: int = 1) -> jax.Array:
    """x[:, idx] with a static index array; a contiguous run becomes a slice."""
    if len(idx) and np.array_equal(idx, np.arange(idx[0], idx[0] + len(idx))):
        return jax.lax.slice_in_dim(x, int(idx[0]), int(idx[0]) + len(idx), axis=axis)
    return jnp.take(x, jnp.asarray(idx), axis=axis)


class Expert(nn.Module):
    """One expert's weights in one decoder layer (a Qwen2 decoder block, optionally with QK-norm).
    modulated: its pre-attention and pre-MLP norms are scaled and shifted by (1 + a, b) = Dense(cond),
    cond [B, W] one vector per sequence (DiT's adaLN without gates; the Dense starts at zero)."""
    cfg: UMMConfig
    modulated: bool = False

    def setup(self):
        c, dt = self.cfg, jnp.dtype(self.cfg.dtype)
        self.input_norm = RMSNorm(c.rms_eps)
        self.q_proj = nn.Dense(c.heads * c.head_dim, use_bias=True, dtype=dt)
        self.k_proj = nn.Dense(c.kv_heads * c.head_dim, use_bias=True, dtype=dt)
        self.v_proj = nn.Dense(c.kv_heads * c.head_dim, use_bias=True, dtype=dt)
        self.o_proj = nn.Dense(c.width, use_bias=False, dtype=dt)
        if c.qk_norm:
            self.q_norm = RMSNorm(c.rms_eps)
            self.k_norm = RMSNorm(c.rms_eps)
        self.post_attention_norm = RMSNorm(c.rms_eps)
        self.gate_proj = nn.Dense(c.mlp, use_bias=False, dtype=dt)
        self.up_proj = nn.Dense(c.mlp, use_bias=False, dtype=dt)
        self.down_proj = nn.Dense(c.width, use_bias=False, dtype=dt)
        if self.modulated:
            self.input_mod = nn.Dense(2 * c.width, kernel_init=nn.initializers.zeros, dtype=dt)
            self.mlp_mod = nn.Dense(2 * c.width, kernel_init=nn.initializers.zeros, dtype=dt)

    def _modulate(self, h: jax.Array, mod: str, cond: jax.Array | None) -> jax.Array:
        """h [B, T, W] -> h (1 + scale) + shift, (scale, shift) = getattr(self, mod)(cond); h where unmodulated."""
        if not self.modulated or cond is None:
            return h
        scale, shift = jnp.split(getattr(self, mod)(cond)[:, None, :].astype(h.dtype), 2, axis=-1)
        return h * (1.0 + scale) + shift

    def qkv(self, x: jax.Array, cond: jax.Array | None = None):
        """x [B, T, W] (cond [B, W] when modulated) -> q [B, T, H, D], k, v [B, T, KV, D] (before RoPE)."""
        c = self.cfg
        b, t, _ = x.shape
        h = self._modulate(self.input_norm(x), "input_mod", cond)
        q = self.q_proj(h).reshape(b, t, c.heads, c.head_dim)
        k = self.k_proj(h).reshape(b, t, c.kv_heads, c.head_dim)
        v = self.v_proj(h).reshape(b, t, c.kv_heads, c.head_dim)
        if c.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        return q, k, v

    def attn_out(self, x: jax.Array, o: jax.Array) -> jax.Array:
        """Residual after attention: x [B, T, W], o [B, T, H*D] -> [B, T, W]."""
        return x + self.o_proj(o)

    def mlp(self, x: jax.Array, cond: jax.Array | None = None) -> jax.Array:
        """Residual SwiGLU MLP: [B, T, W] -> [B, T, W]."""
        h = self._modulate(self.post_attention_norm(x), "mlp_mod", cond)
        return x + self.down_proj(nn.silu(self.gate_proj(h)) * self.up_proj(h))


class MoTLayer(nn.Module):
    cfg: UMMConfig

    def setup(self):
        self.und = Expert(self.cfg)
        self.gen = Expert(self.cfg, modulated=self.cfg.gen_condition)

    def __call__(self, x, experts, positions, mask, cache=None, cond=None):
        """x [B, T, W]; experts static int[T] (numpy, or a tuple under remat); positions int[B, T]; mask
        bool[B, T, S + T] over (cached keys, own keys); cache (k, v) [B, S, KV, D] or None; cond [B, W] or
        None, read by a modulated generation expert -> (x [B, T, W], (k, v) of own tokens [B, T, KV, D],
        RoPE applied)."""
        c = self.cfg
        experts = np.asarray(experts)
        groups = [(e, np.nonzero(experts == i)[0], cond if i == 1 else None)
                  for i, e in enumerate((self.und, self.gen))]
        groups = [g for g in groups if len(g[1])]
        order = np.concatenate([idx for _, idx, _ in groups])
        inv = np.argsort(order)
        qkv = [e.qkv(_take(x, idx), cnd) for e, idx, cnd in groups]
        q, k, v = (_take(jnp.concatenate([p[j] for p in qkv], axis=1), inv) for j in range(3))
        q = apply_rope(q, positions, c.rope_theta)
        k = apply_rope(k, positions, c.rope_theta)
        if cache is not None:
            k_all = jnp.concatenate([cache[0].astype(k.dtype), k], axis=1)
            v_all = jnp.concatenate([cache[1].astype(v.dtype), v], axis=1)
        else:
            k_all, v_all = k, v
        o = dot_product_attention(q * (c.head_dim ** -0.5), k_all, v_all, mask)
        o = o.reshape(*o.shape[:2], c.heads * c.head_dim)
        outs = [e.mlp(e.attn_out(_take(x, idx), _take(o, idx)), cnd) for e, idx, cnd in groups]
        return _take(jnp.concatenate(outs, axis=1), inv), (k, v)


class MoTBackbone(nn.Module):
    """The UMM decoder. Methods (call with `apply(..., method=...)`):

    embed(ids int[B, T]) -> [B, T, W]
    __call__(x [B, T, W], experts, positions, mask, cache, cond) -> (h [B, T, W] after the per-expert
        final norm, new_cache: tuple over layers of (k, v) [B, T, KV, D] for these tokens); cond [B, W]
        (or None) modulates the generation expert's norms where cfg.gen_condition
    logits(h [B, T, W]) -> float32[B, T, vocab]
    """
    cfg: UMMConfig

    def setup(self):
        c = self.cfg
        self.embedder = nn.Embed(c.vocab_size, c.width, embedding_init=nn.initializers.normal(0.02))
        # remat: the static expert ids (argument 2, counting self) are passed as a hashable tuple
        layer = nn.remat(MoTLayer, static_argnums=(2,)) if c.remat else MoTLayer
        self.layers = [layer(c) for _ in range(c.depth)]  # params: layers_0, layers_1, ...
        self.final_norm_und = RMSNorm(c.rms_eps)
        self.final_norm_gen = RMSNorm(c.rms_eps)
        if not c.tie_embeddings:
            self.lm_head = nn.Dense(c.vocab_size, use_bias=False, dtype=jnp.dtype(c.dtype))

    def embed(self, ids: jax.Array) -> jax.Array:
        return self.embedder(ids).astype(jnp.dtype(self.cfg.dtype))

    def __call__(self, x, experts, positions, mask, cache: KVCache | None = None, cond=None):
        experts = np.asarray(experts)
        positions = jnp.broadcast_to(jnp.asarray(positions), x.shape[:2])
        mask = jnp.broadcast_to(jnp.asarray(mask), (x.shape[0],) + tuple(np.shape(mask))[-2:])
        new_cache = []
        ids = tuple(experts.tolist()) if self.cfg.remat else experts
        for i, layer in enumerate(self.layers):
            x, kv = layer(x, ids, positions, mask, None if cache is None else cache[i], cond)
            new_cache.append(kv)
        und, gen = np.nonzero(experts == 0)[0], np.nonzero(experts == 1)[0]
        parts, order = [], []
        if len(und):
            parts.append(self.final_norm_und(_take(x, und)))
            order.append(und)
        if len(gen):
            parts.append(self.final_norm_gen(_take(x, gen)))
            order.append(gen)
        h = _take(jnp.concatenate(parts, axis=1), np.argsort(np.concatenate(order)))
        return h, tuple(new_cache)

    def logits(self, h: jax.Array) -> jax.Array:
        if self.cfg.tie_embeddings:
            return self.embedder.attend(h).astype(jnp.float32)
        return self.lm_head(h).astype(jnp.float32)


def concat_cache(a: KVCache | None, b: KVCache) -> KVCache:
    """Appends cache b's tokens after a's (axis 1)."""
    if a is None:
        return b
    return tuple((jnp.concatenate([ka, kb], 1), jnp.concatenate([va, vb], 1))
                 for (ka, va), (kb, vb) in zip(a, b))
