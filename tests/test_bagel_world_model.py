"""A whole BAGEL-format checkpoint -> the world model (models/bagel_import.load_world_model).

A tiny release directory is written in BAGEL's layout (ema.safetensors with every part's tensors under
their release names and both fixed position tables, ae.safetensors in black-forest-labs' names), from
public implementations: two transformers Qwen3 models as the MoT experts, a transformers SiglipVisionModel
and torch Linears as the vision encoder and connector, torch Linears as the generation path, diffusers'
AutoencoderKL as the FLUX VAE (tests/helpers/bagel_reference.py). Loaded through the importer into a
world model built from config, it must give, from the same inputs:
- the latents BAGEL's diffusion model reads: FLUX's scale * (mean - shift), patchified (h w) (p q c);
- on one packed sequence of text, ViT tokens of an image and noisy latent tokens (text causal, each
  image block bidirectional with one RoPE id, text and ViT through the understanding expert, latents
  through the generation expert), the text logits and the velocity that a reference assembled by hand
  from those models' own modules computes.
What it proves: every tensor lands where the world model reads it, and the parts compose as BAGEL's
forward does (connector then the fixed ViT table; vae2llm + timestep MLP of t + latent table; routing;
joint attention; per-expert final norm; llm2vae). What it does not: that BAGEL's own code packs a
transition the way our layouts do (its markers around image blocks are not in our sequences), nor
anything about the released weights beyond their names and shapes.
"""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("diffusers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from diffusers.models.embeddings import get_2d_sincos_pos_embed, get_timestep_embedding  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402

from configs import tabletop  # noqa: E402
from tests.helpers import bagel_reference  # noqa: E402
from tests.helpers.word_tokenizer import QUESTION_WORDS, save_word_tokenizer  # noqa: E402
from vlambpo_jax.models import bagel_import  # noqa: E402
from vlambpo_jax.models.flux_vae import FluxVAEConfig  # noqa: E402
from vlambpo_jax.models.world_model import WorldModel  # noqa: E402

W, VOCAB, IMAGE = 64, 97, 16
LLM = dict(vocab_size=VOCAB, hidden_size=W, intermediate_size=112, num_hidden_layers=2, num_attention_heads=4,
           num_key_value_heads=2, head_dim=16, rope_theta=1e6, rms_norm_eps=1e-6, attention_bias=True,
           tie_word_embeddings=False)
FLUX = FluxVAEConfig(ch=8, ch_mult=(1, 2, 2), num_res_blocks=1, z_channels=4, groups=4)   # 4x down


def _config(release_dir):
    """The tiny release's world model, reading text with the release's tokenizer files."""
    c = tabletop.get_config("smoke")
    c.image_size = IMAGE
    c.wm.tokenizer = str(release_dir)
    c.wm.update(dict(
        vae=dict(kind="flux", flux=dict(ch=FLUX.ch, ch_mult=FLUX.ch_mult, num_res_blocks=FLUX.num_res_blocks,
                                        z_channels=FLUX.z_channels, groups=FLUX.groups)),
        vit=dict(patch=4, width=32, depth=2, heads=2, mlp=48, connector="mlp"),
        umm=dict(width=W, depth=2, heads=4, kv_heads=2, head_dim=16, mlp=112, rope_theta=1e6, qk_norm=True,
                 vocab_size=VOCAB),
        latent_patch=2, bagel_embeddings=True, action_encoding="continuous"))
    return c


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """The tiny release directory and the torch modules its tensors came from."""
    und, gen, tensors = bagel_reference.experts(LLM)
    siglip, fc1, fc2, vit_tensors = bagel_reference.siglip_and_connector(32, W, patch=4, image_size=IMAGE,
                                                                         max_side=70, seed=2)
    torch.manual_seed(3)
    patch_dim = 4 * FLUX.z_channels
    gen_path = {"vae2llm": torch.nn.Linear(patch_dim, W), "llm2vae": torch.nn.Linear(W, patch_dim),
                "time_embedder.mlp.0": torch.nn.Linear(256, W), "time_embedder.mlp.2": torch.nn.Linear(W, W)}
    tensors |= vit_tensors | {f"{n}.{k}": v.detach().numpy() for n, m in gen_path.items()
                              for k, v in m.state_dict().items()}
    tensors["vit_pos_embed.pos_embed"] = get_2d_sincos_pos_embed(W, 70, base_size=70).numpy()
    tensors["latent_pos_embed.pos_embed"] = get_2d_sincos_pos_embed(W, 64, base_size=64).numpy()
    vae, ae = bagel_reference.flux_vae(FLUX, seed=4)
    path = tmp_path_factory.mktemp("bagel")
    save_file({k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()}, str(path / "ema.safetensors"))
    save_file({k: np.ascontiguousarray(v, np.float32) for k, v in ae.items()}, str(path / "ae.safetensors"))
    (path / "llm_config.json").write_text(json.dumps(dict(LLM, model_type="qwen2", hidden_act="silu")))
    save_word_tokenizer([*QUESTION_WORDS, "pick", "up", "red", "cube"], path)   # the release's tokenizer files
    (path / "vit_config.json").write_text(json.dumps(dict(hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                                                          num_attention_heads=2, patch_size=4)))
    modules = dict(und=und, gen=gen, siglip=siglip, fc1=fc1, fc2=fc2, vae=vae, **gen_path)
    return path, tensors, modules


def _patchify(z):
    """torch [N, C, H, W] -> [N, (h w), (p q c)] with 2 x 2 patches (BAGEL's order)."""
    n, c, h, w = z.shape
    return z.reshape(n, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 3, 5, 1).reshape(n, (h // 2) * (w // 2), 4 * c)


def test_release_loads_and_matches_the_hand_assembled_forward(release):
    path, _, m = release
    wm = WorldModel(_config(path))
    params, fresh = bagel_import.load_world_model(str(path), wm, jax.random.PRNGKey(0))
    assert fresh == ["action_in", "action_pos"]                  # the action encoder is new: not in BAGEL

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, IMAGE, IMAGE, 3), dtype=np.uint8)
    floats = images.astype(np.float32) / 127.5 - 1.0

    # the latents BAGEL's diffusion model reads
    ours_latents = np.asarray(wm.encode_latents(params, jnp.asarray(images)))
    with torch.no_grad():
        mean = m["vae"].encode(torch.tensor(floats).permute(0, 3, 1, 2)).latent_dist.mean
        ref_latents = _patchify(FLUX.scale * (mean - FLUX.shift)).numpy()
    np.testing.assert_allclose(ours_latents, ref_latents, atol=1e-4, rtol=0)

    # one packed sequence: 5 text tokens, 16 ViT tokens, 4 noisy latent tokens
    text, n_vit, n_lat = 5, 16, 4
    t_all = text + n_vit + n_lat
    ids = rng.integers(0, VOCAB, (2, text))
    x_t = rng.standard_normal((2, n_lat, 4 * FLUX.z_channels)).astype(np.float32)
    t = np.array([0.3, 0.9], np.float32)
    routing = np.array([0] * (text + n_vit) + [1] * n_lat)
    positions = np.concatenate([np.arange(text), [text] * n_vit, [text + 1] * n_lat])
    block = np.concatenate([np.zeros(text, int), np.ones(n_vit, int), 2 * np.ones(n_lat, int)])
    mask = (block[None, :] < block[:, None]) | ((block[None, :] == block[:, None]) & (block[:, None] > 0))
    mask |= np.tril(np.ones((t_all, t_all), bool)) & (block[:, None] == 0) & (block[None, :] == 0)

    def ours_forward(net):
        tok = jnp.concatenate([net.embed_ids(jnp.asarray(ids)), net.vit_tokens(jnp.asarray(images)),
                               net.latent_tokens(jnp.asarray(x_t), jnp.asarray(t))], axis=1)
        h, _ = net.run(tok, routing, jnp.asarray(positions)[None], jnp.asarray(mask)[None])
        return net.logits(h[:, :text]), net.velocity(h[:, -n_lat:])

    logits, velocity = wm.net.apply(params["net"], method=ours_forward)
    with torch.no_grad():
        und = m["und"]
        vit_table = torch.tensor(get_2d_sincos_pos_embed(W, 4, base_size=4).numpy()).float()
        lat_table = torch.tensor(get_2d_sincos_pos_embed(W, 2, base_size=2).numpy()).float()
        temb = get_timestep_embedding(torch.tensor(t), 256, flip_sin_to_cos=True, downscale_freq_shift=0)
        time = m["time_embedder.mlp.2"](torch.nn.functional.silu(m["time_embedder.mlp.0"](temb)))
        x = torch.cat([und.model.embed_tokens(torch.tensor(ids)),
                       bagel_reference.siglip_connector_forward(m["siglip"], m["fc1"], m["fc2"], floats) + vit_table,
                       m["vae2llm"](torch.tensor(x_t)) + time[:, None] + lat_table], dim=1)
        h = bagel_reference.mot_forward(und, m["gen"], x, routing, positions, mask)
        ref_logits, ref_velocity = und.lm_head(h[:, :text]).numpy(), m["llm2vae"](h[:, -n_lat:]).numpy()
    np.testing.assert_allclose(np.asarray(logits), ref_logits, atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.asarray(velocity), ref_velocity, atol=1e-4, rtol=0)
    assert np.abs(ref_velocity).max() > 0.1 and np.abs(ref_logits).std() > 0.1

    # the loaded VAE decodes as diffusers does
    z = rng.standard_normal((1, 4, 4, FLUX.z_channels)).astype(np.float32)
    ours_img = np.asarray(wm.vae.apply(params["vae"], jnp.asarray(z), method=type(wm.vae).decode))
    with torch.no_grad():
        ref_img = m["vae"].decode(torch.tensor(z).permute(0, 3, 1, 2)).sample.permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(ours_img, ref_img, atol=1e-4, rtol=0)


def test_the_release_is_checked_whole(release, tmp_path):
    path, tensors, _ = release
    wm = WorldModel(_config(path))

    def write(ts, with_ae=True):
        save_file({k: np.ascontiguousarray(v, np.float32) for k, v in ts.items()}, str(tmp_path / "ema.safetensors"))
        ae = tmp_path / "ae.safetensors"
        if with_ae and not ae.exists():
            ae.write_bytes((path / "ae.safetensors").read_bytes())
        return str(tmp_path)

    with pytest.raises(ValueError, match="no known part, e.g. 'extra_head.weight'"):
        bagel_import.load_world_model(write(tensors | {"extra_head.weight": np.zeros(3)}), wm)
    with pytest.raises(ValueError, match="vit_pos_embed is not the sin-cos table"):
        bagel_import.load_world_model(write(tensors | {"vit_pos_embed.pos_embed": np.zeros((4900, W))}), wm)
    with pytest.raises(ValueError, match="unexpected generation tensor.*'time_embedder.mlp.4.weight'"):
        bagel_import.load_world_model(write(tensors | {"time_embedder.mlp.4.weight": np.zeros(3)}), wm)
    with pytest.raises(KeyError, match="connector.fc1.bias"):
        bagel_import.load_world_model(write({k: v for k, v in tensors.items() if k != "connector.fc1.bias"}), wm)
    (tmp_path / "ae.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no ae.safetensors"):
        bagel_import.load_world_model(write(tensors, with_ae=False), wm)
    deeper = _config(path)
    deeper.wm.umm.depth = 3
    with pytest.raises(ValueError, match="llm_config.json's depth gives 2, but config.wm.umm.depth is 3"):
        bagel_import.load_world_model(str(path), WorldModel(deeper))
    plain = _config(path)
    plain.wm.vit.connector = "linear"
    with pytest.raises(ValueError, match="BAGEL-kind world model"):
        bagel_import.load_world_model(str(path), WorldModel(plain))


def test_full_size_world_model_from_config():
    """configs/bridge.py:bagel builds BAGEL-7B-MoT's world model (counted without weights): the Qwen2.5-7B
    backbone twice but for the shared embedding and lm_head, SigLIP so400m/14 (26 layers) + connector,
    the FLUX VAE (84M), 196 latent and 256 ViT tokens per 224 px view."""
    from configs import bridge

    wm = WorldModel(bridge.get_config("bagel"))
    shapes = jax.eval_shape(wm.init, jax.random.PRNGKey(0))
    count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))  # noqa: E731
    net = shapes["net"]["params"]
    assert net["backbone"]["embedder"]["embedding"].shape == (152064, 3584)
    d, kv, f = 3584, 4 * 128, 18944                      # Qwen2.5-7B: q/k/v with biases, o without, SwiGLU
    qwen_layer = (d * d + d) + 2 * (d * kv + kv) + d * d + 3 * d * f + 2 * d
    assert count(net["backbone"]["layers_0"]["und"]) == qwen_layer + 2 * 128       # + BAGEL's q/k-norm scales
    assert count(net["backbone"]["layers_27"]["gen"]) == qwen_layer + 2 * 128
    assert 14.0e9 < count(net) < 14.8e9                  # the release: about 14B parameters, 7B active
    assert wm.spec.latent_tokens == 196 and wm.spec.vit_tokens == 256 and wm.spec.patch_dim == 64


def test_wm_pretrain_starts_from_the_release(release, tmp_path):
    """config.wm.init_from: wm_pretrain loads the release whole, skips the VAE phase (BAGEL's FLUX VAE and
    its latent statistics stay as released), scales actions by the data's range, and trains the dynamics
    from there with the release's tokenizer (config.wm.tokenizer)."""
    from tests.helpers.fakes import RecordingWriter
    from vlambpo_jax import loading, pipeline
    from vlambpo_jax.config_checks import ConfigError, validate
    from vlambpo_jax.data.rlds_writer import write_rlds
    from vlambpo_jax.data.synthetic import synthetic_episode
    from vlambpo_jax.stages import wm_common, wm_pretrain
    from vlambpo_jax.train.preemption import NoPreemption

    path = str(release[0])
    rng = np.random.default_rng(0)
    episodes = [synthetic_episode(rng, 12, image_shape=(IMAGE, IMAGE, 3), instruction="pick up the red cube",
                                  success=i % 2 == 0) for i in range(4)]
    c = _config(path)
    c.stages = ("wm_pretrain",)
    with pytest.raises(ConfigError, match="needs config.wm.init_from"):
        validate(c)
    c.data.builder_dir = str(write_rlds(tmp_path / "data", iter(episodes), dataset_name="toy",
                                        image_shape=(IMAGE, IMAGE, 3)))
    c.wm.update(dict(init_from=path, pretrain_steps=2, batch_size=4, eval_batches=1, reward_batch_size=4))
    c.wm.probe.enabled = False
    c.checkpoint.async_save = False
    c.log.progress = "off"
    validate(c)
    ctx = pipeline.StageContext(c, tmp_path / "run", "wm_pretrain", RecordingWriter(), NoPreemption())
    ctx.stage_dir.mkdir(parents=True)
    summary = wm_pretrain.run(ctx)
    assert summary["steps"] == 2 and np.isfinite(summary["final_loss"])
    assert not (ctx.stage_dir / wm_common.CKPT_VAE).exists()                      # no VAE phase
    _, trained, assets = loading.load_world_model(ctx.stage_dir / wm_common.CKPT_WM)
    released, _ = bagel_import.load_world_model(path, WorldModel(c))
    for a, b in zip(jax.tree.leaves(trained["vae"]), jax.tree.leaves(released["vae"])):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(trained["stats"]["latent_scale"], released["stats"]["latent_scale"])
    np.testing.assert_allclose(trained["stats"]["action_min"], loading.norm_stats(assets)["action"].min, rtol=1e-6)
    backbone = lambda p: jax.tree.leaves(p["net"]["params"]["backbone"])  # noqa: E731
    assert not all(np.array_equal(a, b) for a, b in zip(backbone(trained), backbone(released)))
