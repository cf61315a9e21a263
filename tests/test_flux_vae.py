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

from tests.helpers import bagel_reference  # noqa: E402
from vlambpo_jax.models import flux_vae  # noqa: E402

_kwargs = bagel_reference.flux_diffusers_kwargs
TINY = flux_vae.FluxVAEConfig(ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=4, groups=4)


@pytest.fixture(scope="module")
def reference():
    model, tensors = bagel_reference.flux_vae(TINY)
    # The tensors in black-forest-labs' names convert back to exactly the model's state (diffusers' converter).
    back = convert_ldm_vae_checkpoint({k: torch.tensor(v) for k, v in tensors.items()}, _kwargs(TINY))
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
    mean, logvar = vae.apply({"params": params}, jnp.asarray(images), method=flux_vae.FluxVAE.encode)
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
        theirs = sum(p.numel() for p in diffusers.AutoencoderKL(**_kwargs(c)).parameters())
    assert ours == theirs and c.downsample == 8
