"""A SigLIP-style vision transformer, shared across camera views.

Patch embedding (a strided convolution written as a Dense over flattened patches; or, with
stem='conv', a stack of 3x3 stride-2 convolutions reaching the same token grid, the "early
convolutions" stem of Xiao et al. 2021, which learns from little data more easily), a learned position
embedding, pre-LayerNorm blocks (multi-head attention + GELU MLP), a final LayerNorm, and a projection
to the width of the language model: linear (PaliGemma's "projector") or, with connector='mlp', BAGEL's
two-layer GELU connector.
"""
from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp


def patchify(images: jax.Array, patch: int) -> jax.Array:
    """images [N, H, W, C] -> patches [N, (H/p)*(W/p), p*p*C], row-major over the patch grid."""
    n, h, w, c = images.shape
    if h % patch or w % patch:
        raise ValueError(f"image size {h}x{w} is not divisible by the ViT patch size {patch} "
                         "(config.policy.vit_patch)")
    x = images.reshape(n, h // patch, patch, w // patch, patch, c)
    x = x.transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, (h // patch) * (w // patch), patch * patch * c)


def conv_stem(images: jax.Array, patch: int, width: int, dtype) -> jax.Array:
    """log2(patch) 3x3 stride-2 convolutions (GELU between; channels doubling up to `width`), then a 1x1
    projection: images [N, H, W, C] -> tokens [N, (H/patch)*(W/patch), width], row-major like patchify.
    Call inside a compact module (the layers are named stem_i)."""
    n_convs = int(round(math.log2(patch)))
    if 2 ** n_convs != patch:
        raise ValueError(f"the conv stem needs a power-of-two patch size, got {patch} (config.policy.vit_patch)")
    n, h, w, _ = images.shape
    if h % patch or w % patch:
        raise ValueError(f"image size {h}x{w} is not divisible by the ViT patch size {patch} "
                         "(config.policy.vit_patch)")
    x = images
    for i in range(n_convs):
        channels = max(width // 2 ** (n_convs - 1 - i), 8)
        x = nn.gelu(nn.Conv(channels, (3, 3), strides=(2, 2), padding="SAME", dtype=dtype, name=f"stem_{i}")(x))
    x = nn.Dense(width, dtype=dtype, name="stem_proj")(x)
    return x.reshape(n, (h // patch) * (w // patch), width)


class ViTBlock(nn.Module):
    """Pre-norm transformer block: x + MHA(LN(x)); x + MLP(LN(x)). [N, T, W] -> [N, T, W]."""
    heads: int
    mlp: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = nn.LayerNorm(dtype=self.dtype, name="ln_attn")(x)
        x = x + nn.MultiHeadDotProductAttention(num_heads=self.heads, dtype=self.dtype, name="attn")(h, h)
        h = nn.LayerNorm(dtype=self.dtype, name="ln_mlp")(x)
        h = nn.Dense(self.mlp, dtype=self.dtype, name="mlp_in")(h)
        h = nn.Dense(x.shape[-1], dtype=self.dtype, name="mlp_out")(nn.gelu(h, approximate=True))
        return x + h


class ViT(nn.Module):
    """Encodes images into tokens of the prefix width.

    __call__(images float[N, H, W, 3] in [-1, 1]) -> tokens [N, (H/patch)*(W/patch), out_width].
    """
    patch: int
    width: int
    depth: int
    heads: int
    mlp: int
    out_width: int
    dtype: jnp.dtype = jnp.float32
    stem: str = "patch"     # 'patch' | 'conv'
    connector: str = "linear"   # 'linear' | 'mlp'

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        if self.stem == "conv":
            x = conv_stem(images.astype(self.dtype), self.patch, self.width, self.dtype)
        elif self.stem == "patch":
            x = patchify(images.astype(self.dtype), self.patch)
            x = nn.Dense(self.width, dtype=self.dtype, name="patch_embed")(x)
        else:
            raise ValueError(f"ViT stem must be 'patch' or 'conv', got {self.stem!r}")
        pos = self.param("pos_embed", nn.initializers.normal(0.02), (1, x.shape[1], self.width), jnp.float32)
        x = x + pos.astype(self.dtype)
        for i in range(self.depth):
            x = ViTBlock(self.heads, self.mlp, self.dtype, name=f"block_{i}")(x)
        x = nn.LayerNorm(dtype=self.dtype, name="ln_final")(x)
        if self.connector == "mlp":
            x = nn.gelu(nn.Dense(self.out_width, dtype=self.dtype, name="connector_fc1")(x), approximate=True)
            return nn.Dense(self.out_width, dtype=self.dtype, name="connector_fc2")(x)
        if self.connector != "linear":
            raise ValueError(f"ViT connector must be 'linear' or 'mlp', got {self.connector!r}")
        return nn.Dense(self.out_width, dtype=self.dtype, name="projector")(x)
