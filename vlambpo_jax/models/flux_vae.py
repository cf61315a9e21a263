"""FLUX's autoencoder, the VAE of BAGEL-7B-MoT (its ae.safetensors), in Flax, loading that checkpoint.

The structure is black-forest-labs' (the latent-diffusion layout): the encoder is a 3x3 conv, then one
level per entry of `ch_mult` with `num_res_blocks` ResNet blocks of ch * mult channels and, between
levels, a stride-2 3x3 conv on the input padded by one row and column at the bottom and right; a middle
of ResNet block, single-head self-attention over all positions and ResNet block; GroupNorm, SiLU and a
3x3 conv to 2 x z_channels (mean and log-variance). The decoder mirrors it with num_res_blocks + 1
blocks per level and nearest 2x upsampling followed by a 3x3 conv. Every GroupNorm has 32 groups and
eps 1e-6; ResNet blocks are norm-SiLU-conv twice with a 1x1 shortcut conv where the width changes.
Images are NHWC in [-1, 1]; the diffusion model's latents are scale * (mean - shift) (FLUX: 0.3611, 0.1159).

Parameters are named after the checkpoint's tensors ('encoder.down.1.block.0.norm1.weight' ->
params['encoder']['down_1_block_0']['norm1']['scale']), so `convert` maps them one to one; torch conv
weights [O, I, kh, kw] become Flax kernels [kh, kw, I, O].
"""
from __future__ import annotations

import dataclasses
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vlambpo_jax.models.safetensors_dir import check_params


@dataclasses.dataclass(frozen=True)
class FluxVAEConfig:
    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    z_channels: int = 16
    groups: int = 32
    scale: float = 0.3611
    shift: float = 0.1159

    @property
    def downsample(self) -> int:
        return 2 ** (len(self.ch_mult) - 1)


def _norm(groups: int, name: str) -> nn.GroupNorm:
    return nn.GroupNorm(num_groups=groups, epsilon=1e-6, name=name)


class ResBlock(nn.Module):
    out: int
    groups: int

    @nn.compact
    def __call__(self, x):
        h = nn.Conv(self.out, (3, 3), padding=1, name="conv1")(nn.silu(_norm(self.groups, "norm1")(x)))
        h = nn.Conv(self.out, (3, 3), padding=1, name="conv2")(nn.silu(_norm(self.groups, "norm2")(h)))
        if x.shape[-1] != self.out:
            x = nn.Conv(self.out, (1, 1), name="nin_shortcut")(x)
        return x + h


class Attention(nn.Module):
    """Single-head self-attention over every position of the feature map, residual."""
    groups: int

    @nn.compact
    def __call__(self, x):
        b, h, w, c = x.shape
        y = _norm(self.groups, "norm")(x).reshape(b, h * w, c)
        q, k, v = (nn.Dense(c, name=n)(y) for n in ("q", "k", "v"))
        weights = jax.nn.softmax(jnp.einsum("bqc,bkc->bqk", q, k) / np.sqrt(c), axis=-1)
        out = nn.Dense(c, name="proj_out")(jnp.einsum("bqk,bkc->bqc", weights, v))
        return x + out.reshape(b, h, w, c)


def _middle(x, groups: int):
    x = ResBlock(x.shape[-1], groups, name="mid_block_1")(x)
    x = Attention(groups, name="mid_attn_1")(x)
    return ResBlock(x.shape[-1], groups, name="mid_block_2")(x)


class Encoder(nn.Module):
    config: FluxVAEConfig

    @nn.compact
    def __call__(self, x):
        c = self.config
        x = nn.Conv(c.ch, (3, 3), padding=1, name="conv_in")(x)
        for i, mult in enumerate(c.ch_mult):
            for j in range(c.num_res_blocks):
                x = ResBlock(c.ch * mult, c.groups, name=f"down_{i}_block_{j}")(x)
            if i < len(c.ch_mult) - 1:
                x = jnp.pad(x, ((0, 0), (0, 1), (0, 1), (0, 0)))
                x = nn.Conv(x.shape[-1], (3, 3), strides=2, padding="VALID", name=f"down_{i}_downsample")(x)
        x = _middle(x, c.groups)
        x = nn.silu(_norm(c.groups, "norm_out")(x))
        return nn.Conv(2 * c.z_channels, (3, 3), padding=1, name="conv_out")(x)


class Decoder(nn.Module):
    config: FluxVAEConfig

    @nn.compact
    def __call__(self, z):
        c = self.config
        x = nn.Conv(c.ch * c.ch_mult[-1], (3, 3), padding=1, name="conv_in")(z)
        x = _middle(x, c.groups)
        for i in reversed(range(len(c.ch_mult))):
            for j in range(c.num_res_blocks + 1):
                x = ResBlock(c.ch * c.ch_mult[i], c.groups, name=f"up_{i}_block_{j}")(x)
            if i > 0:
                x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
                x = nn.Conv(x.shape[-1], (3, 3), padding=1, name=f"up_{i}_upsample")(x)
        x = nn.silu(_norm(c.groups, "norm_out")(x))
        return nn.Conv(3, (3, 3), padding=1, name="conv_out")(x)


class FluxVAE(nn.Module):
    """encode(images f32[B, H, W, 3] in [-1, 1]) -> (mean, logvar) f32[B, H/d, W/d, z]; decode(z) -> images."""
    config: FluxVAEConfig

    def setup(self):
        self.encoder = Encoder(self.config)
        self.decoder = Decoder(self.config)

    def encode(self, images):
        mean, logvar = jnp.split(self.encoder(images), 2, axis=-1)
        return mean, jnp.clip(logvar, -30.0, 20.0)

    def decode(self, z):
        return self.decoder(z)

    def __call__(self, images):
        return self.decode(self.encode(images)[0])


def to_latents(mean: jax.Array, config: FluxVAEConfig) -> jax.Array:
    """The diffusion model's latents of the encoder's mean."""
    return config.scale * (mean - config.shift)


def from_latents(latents: jax.Array, config: FluxVAEConfig) -> jax.Array:
    return latents / config.scale + config.shift


_NAMES = [   # checkpoint name pattern -> our module path (before the parameter's own name)
    (r"^(encoder|decoder)\.(down|up)\.(\d+)\.block\.(\d+)\.", r"\1/\2_\3_block_\4/"),
    (r"^encoder\.down\.(\d+)\.downsample\.conv\.", r"encoder/down_\1_downsample/"),
    (r"^decoder\.up\.(\d+)\.upsample\.conv\.", r"decoder/up_\1_upsample/"),
    (r"^(encoder|decoder)\.mid\.(block_\d|attn_1)\.", r"\1/mid_\2/"),
    (r"^(encoder|decoder)\.(conv_in|conv_out|norm_out)\.", r"\1/\2/"),
]


def _our_path(name: str) -> tuple[str, ...]:
    """'encoder.down.0.block.1.norm1.weight' -> ('encoder', 'down_0_block_1', 'norm1', 'weight')."""
    for pattern, repl in _NAMES:
        if re.match(pattern, name):
            head = re.sub(pattern, repl, name)
            return tuple(head.split("/")[:-1]) + tuple(head.split("/")[-1].split("."))
    raise ValueError(f"FLUX VAE checkpoint: unexpected tensor {name!r}")


def convert(tensors: dict[str, np.ndarray], reference: dict) -> dict:
    """ae.safetensors tensors (black-forest-labs names) -> FluxVAE params shaped like `reference` (an
    init or its eval_shape). Every tensor must land in a parameter and every parameter be filled; a
    missing, unexpected or misshaped one is refused by name."""
    params: dict = {}
    for name, value in tensors.items():
        *path, kind = _our_path(name)
        value = np.asarray(value, np.float32)
        if kind == "weight" and value.ndim == 4 and path[-1] in ("q", "k", "v", "proj_out"):
            leaf, value = "kernel", value[:, :, 0, 0].T                  # 1x1 conv -> Dense [in, out]
        elif kind == "weight" and value.ndim == 4:
            leaf, value = "kernel", value.transpose(2, 3, 1, 0)          # [O, I, kh, kw] -> [kh, kw, I, O]
        elif kind == "weight":
            leaf = "scale"                                               # GroupNorm
        else:
            leaf = "bias"
        node = params
        for key in path:
            node = node.setdefault(key, {})
        node[leaf] = value
    check_params(params, reference, "FLUX VAE")
    return params
