"""Image augmentation for behaviour cloning: random shifts (DrQ's pad-and-crop), jit-compatible.

A shift moves the whole view, gripper and objects together, so what the policy acts on (where the
object is relative to the tool) is kept while the absolute pixel position changes.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def random_shift(key: jax.Array, images: jax.Array, pad: int) -> jax.Array:
    """images [B, V, H, W, C] -> the same shape and dtype: each (sample, view) edge-padded by `pad`
    pixels and cropped back at an offset drawn uniformly from {0..2 pad}^2, i.e. shifted by up to
    +-pad pixels in each direction with its border pixels repeated. pad 0 returns `images`."""
    pad = int(pad)
    if pad <= 0:
        return images
    b, v, h, w, c = images.shape
    flat = images.reshape((b * v, h, w, c))
    padded = jnp.pad(flat, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="edge")
    offsets = jax.random.randint(key, (b * v, 2), 0, 2 * pad + 1)
    crop = lambda img, off: jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, c))  # noqa: E731
    return jax.vmap(crop)(padded, offsets).reshape(images.shape)
