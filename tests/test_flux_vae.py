"""FLUX's VAE (models/flux_vae.py), loaded from black-forest-labs' tensor names, against diffusers'
AutoencoderKL with FLUX's settings, which loads the same tensors through diffusers' own converter of that
layout (convert_ldm_vae_checkpoint)."""
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint  # noqa: E402

from vlambpo_jax.models import flux_vae  # noqa: E402

TINY = flux_vae.FluxVAEConfig(ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=4, groups=4)


def _diffusers_kwargs(c: flux_vae.FluxVAEConfig) -> dict:
    n = len(c.ch_mult)
    return dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
                up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=tuple(c.ch * m for m in c.ch_mult),
                layers_per_block=c.num_res_blocks, latent_channels=c.z_channels, norm_num_groups=c.groups,
                use_quant_conv=False, use_post_quant_conv=False, scaling_factor=c.scale, shift_factor=c.shift)


def _bfl_names(state: dict, levels: int) -> dict:
    """diffusers names -> black-forest-labs' (the inverse of diffusers' converter; up levels reversed,
    attention projections as 1x1 convs)."""
    out = {}
    for name, value in state.items():
        value = value.numpy()
        name = re.sub(r"^(encoder|decoder)\.conv_norm_out", r"\1.norm_out", name)
        name = re.sub(r"down_blocks\.(\d+)\.resnets\.", r"down.\1.block.", name)
        name = re.sub(r"down_blocks\.(\d+)\.downsamplers\.0\.", r"down.\1.downsample.", name)
        name = re.sub(r"up_blocks\.(\d+)\.resnets\.", lambda m: f"up.{levels - 1 - int(m[1])}.block.", name)
        name = re.sub(r"up_blocks\.(\d+)\.upsamplers\.0\.", lambda m: f"up.{levels - 1 - int(m[1])}.upsample.", name)
        name = re.sub(r"mid_block\.resnets\.(\d)", lambda m: f"mid.block_{int(m[1]) + 1}", name)
        name = name.replace("conv_shortcut", "nin_shortcut").replace("mid_block.attentions.0", "mid.attn_1")
        attn = re.sub(r"\.(group_norm|to_q|to_k|to_v|to_out\.0)\.",
                      lambda m: "." + {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v",
                                       "to_out.0": "proj_out"}[m[1]] + ".", name)
        if attn != name and value.ndim == 2:
            value = value[:, :, None, None]
        out[attn] = value
    return out


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(0)
    model = diffusers.AutoencoderKL(**_diffusers_kwargs(TINY)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.2 * torch.randn_like(p))                   # GroupNorm affines start at 1 / 0
    tensors = _bfl_names(model.state_dict(), len(TINY.ch_mult))
    # The tensors in black-forest-labs' names convert back to exactly the model's state (diffusers' converter).
    back = convert_ldm_vae_checkpoint({k: torch.tensor(v) for k, v in tensors.items()}, _diffusers_kwargs(TINY))
    assert back.keys() == model.state_dict().keys()
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(back[k].numpy(), v.numpy(), err_msg=k)
    return model, tensors


def _ours(tensors):
    vae = flux_vae.FluxVAE(TINY)
    shapes = jax.eval_shape(lambda: vae.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))["params"])
    return vae, flux_vae.convert(tensors, shapes)


def test_encode_and_decode_match_diffusers(reference):
    model, tensors = reference
    vae, params = _ours(tensors)
    images = np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
    mean, logvar = vae.apply({"params": params}, jnp.asarray(images), method=flux_vae.FluxVAE.moments)
    with torch.no_grad():
        dist = model.encode(torch.tensor(images).permute(0, 3, 1, 2)).latent_dist
    assert mean.shape == (2, 4, 4, TINY.z_channels)
    np.testing.assert_allclose(np.asarray(mean), dist.mean.permute(0, 2, 3, 1).numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.asarray(logvar), dist.logvar.permute(0, 2, 3, 1).numpy(), atol=1e-4, rtol=0)
    z = np.random.default_rng(1).standard_normal((2, 4, 4, TINY.z_channels)).astype(np.float32)
    decoded = vae.apply({"params": params}, jnp.asarray(z), method=flux_vae.FluxVAE.decode)
    with torch.no_grad():
        ref = model.decode(torch.tensor(z).permute(0, 3, 1, 2)).sample.permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(np.asarray(decoded), ref, atol=1e-4, rtol=0)
    assert np.abs(ref).max() > 0.1
    latents = flux_vae.to_latents(mean, TINY)
    np.testing.assert_allclose(np.asarray(flux_vae.from_latents(latents, TINY)), np.asarray(mean), atol=1e-5)


def test_bad_tensors_are_refused_by_name(reference):
    _, tensors = reference
    name = "decoder.up.1.block.1.conv1.weight"
    with pytest.raises(KeyError, match=re.escape("/decoder/up_1_block_1/conv1")):
        _ours({k: v for k, v in tensors.items() if k != name})
    with pytest.raises(ValueError, match="unexpected tensor 'encoder.foo.weight'"):
        _ours(tensors | {"encoder.foo.weight": np.zeros(3)})
    with pytest.raises(ValueError, match=re.escape("'/encoder/conv_in/kernel' has shape")):
        _ours(tensors | {"encoder.conv_in.weight": np.zeros((8, 3, 5, 5), np.float32)})


def test_full_size_matches_diffusers_parameter_count():
    """The default config is FLUX's (84M parameters, 8x down, 16 channels), counted without weights."""
    c = flux_vae.FluxVAEConfig()
    shapes = jax.eval_shape(lambda: flux_vae.FluxVAE(c).init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3))))
    ours = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
    with torch.device("meta"):
        theirs = sum(p.numel() for p in diffusers.AutoencoderKL(**_diffusers_kwargs(c)).parameters())
    assert ours == theirs and c.downsample == 8
