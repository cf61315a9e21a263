"""A small convolutional KL autoencoder for camera frames (the world model's latent space).

images float[N, H, W, 3] in [-1, 1] -> latents [N, H/f, W/f, C] (f = 2^len(widths)) -> images.
Trained in its own phase (reconstruction MSE + kl_weight x KL), frozen afterwards, as BAGEL keeps its
VAE frozen. Latents are normalized per channel with statistics measured after training (world_model.py).
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def to_float(images):
    """uint8[...] -> float32[...] in [-1, 1]."""
    return images.astype(jnp.float32) / 127.5 - 1.0


def to_uint8(x):
    """float[...] in [-1, 1] -> uint8[...] (clipped, rounded)."""
    return jnp.round(jnp.clip((x + 1.0) * 127.5, 0.0, 255.0)).astype(jnp.uint8)


class VAE(nn.Module):
    """widths: channels after each stride-2 stage (len = log2 downsample); latent_channels: C."""
    widths: Sequence[int] = (32, 64)
    latent_channels: int = 4

    def setup(self):
        w = tuple(self.widths)
        self.enc_in = nn.Conv(w[0], (3, 3))
        self.enc_down = [nn.Conv(c, (3, 3), strides=(2, 2)) for c in w]
        self.enc_mix = [nn.Conv(c, (3, 3)) for c in w]
        self.enc_out = nn.Conv(2 * self.latent_channels, (1, 1))
        self.dec_in = nn.Conv(w[-1], (3, 3))
        self.dec_up = [nn.Conv(c, (3, 3)) for c in reversed(w)]
        self.dec_mix = [nn.Conv(c, (3, 3)) for c in reversed(w)]
        self.dec_out = nn.Conv(3, (3, 3))

    def encode(self, x):
        """x float[N, H, W, 3] in [-1, 1] -> (mean, logvar) each [N, H/f, W/f, C]."""
        h = nn.silu(self.enc_in(x))
        for down, mix in zip(self.enc_down, self.enc_mix):
            h = nn.silu(down(h))
            h = h + nn.silu(mix(h))
        mean, logvar = jnp.split(self.enc_out(h), 2, axis=-1)
        return mean, jnp.clip(logvar, -20.0, 10.0)

    def decode(self, z):
        """z [N, h, w, C] -> float[N, H, W, 3] (about [-1, 1])."""
        h = nn.silu(self.dec_in(z))
        for up, mix in zip(self.dec_up, self.dec_mix):
            n, hh, ww, c = h.shape
            h = jax.image.resize(h, (n, 2 * hh, 2 * ww, c), "nearest")
            h = nn.silu(up(h))
            h = h + nn.silu(mix(h))
        return self.dec_out(h)

    def __call__(self, x, key):
        """Training pass: x [N, H, W, 3] -> (reconstruction, mean, logvar)."""
        mean, logvar = self.encode(x)
        z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape)
        return self.decode(z), mean, logvar


def vae_loss(model: VAE, params, images, key, kl_weight: float):
    """images uint8[N, H, W, 3] -> (loss, metrics). Reconstruction MSE (in [-1, 1] units) + KL."""
    x = to_float(images)
    recon, mean, logvar = model.apply(params, x, key)
    mse = jnp.mean((recon - x) ** 2)
    kl = 0.5 * jnp.mean(jnp.sum(mean ** 2 + jnp.exp(logvar) - 1.0 - logvar, axis=-1))
    psnr = 10.0 * jnp.log10(4.0 / jnp.maximum(mse, 1e-10))
    return mse + kl_weight * kl, {"vae_mse": mse, "vae_kl": kl, "vae_psnr": psnr}
