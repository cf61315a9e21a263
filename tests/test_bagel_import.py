"""BAGEL's MoT language model from its checkpoint layout (models/bagel_import.py). Each expert is a Qwen2
decoder with per-head q/k RMSNorms before RoPE: transformers' Qwen3 with q/k/v biases and a zero o_proj
bias computes exactly that, so two random Qwen3 models stand in for the understanding and the generation
expert. Routed to one expert, our backbone must give that model's logits. With tokens of both experts in
one sequence, it must equal a reference assembled by hand from the two models' own submodules (per-token
norms, projections and MLPs; one joint attention). What that proves: the tensor mapping, the routing of
every sub-op and the joint attention agree with transformers' layers. What it does not: BAGEL's own code
(its packing, masks and RoPE ids of images are the world model's sequence layout, tested elsewhere)."""
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from tests.helpers import bagel_reference  # noqa: E402
from vlambpo_jax.models import bagel_import  # noqa: E402
from vlambpo_jax.models import sequence_layout as sl  # noqa: E402
from vlambpo_jax.models.umm import MoTBackbone, UMMConfig  # noqa: E402

VOCAB, T = 97, 9
SIZES = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=112, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16, rope_theta=1e6, rms_norm_eps=1e-6, attention_bias=True,
             tie_word_embeddings=False)


@pytest.fixture(scope="module")
def experts():
    und, gen, tensors = bagel_reference.experts(SIZES)
    tensors["vit_model.vision_model.post_layernorm.weight"] = np.ones(4, np.float32)   # not the LLM's: ignored
    return und, gen, tensors


def _ours(tensors):
    cfg = UMMConfig(vocab_size=VOCAB, width=64, depth=2, heads=4, kv_heads=2, head_dim=16, mlp=112,
                    rope_theta=1e6, qk_norm=True)
    net = MoTBackbone(cfg)
    layout = sl.text_layout(T)
    both = np.arange(T) % 2                                     # both experts, so both get parameters
    def full(m, ids):                                            # every parameter: embedding to logits
        return m.logits(m(m.embed(ids), both, layout.rope_ids()[None], layout.attention_mask()[None])[0])

    ref = jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0), jnp.zeros((1, T), jnp.int32), method=full))
    return net, bagel_import.convert_llm(tensors, ref), layout


def _logits(net, params, layout, ids, routing):
    x = net.apply(params, jnp.asarray(ids), method=MoTBackbone.embed)
    h, _ = net.apply(params, x, routing, layout.rope_ids()[None], layout.attention_mask()[None])
    return np.asarray(net.apply(params, h, method=MoTBackbone.logits))


def _hand_assembled(und, gen, ids, routing):
    """Both models' submodules, per token by `routing`, one causal attention over all tokens."""
    x = und.model.embed_tokens(torch.tensor(ids))
    h = bagel_reference.mot_forward(und, gen, x, routing, np.arange(T), np.tril(np.ones((T, T), bool)))
    return und.lm_head(h)


@pytest.mark.parametrize("routing", ["und", "gen", "mixed"])
def test_llm_matches_transformers(experts, routing):
    und, gen, tensors = experts
    net, params, layout = _ours(tensors)
    ids = np.random.default_rng(0).integers(0, VOCAB, (2, T))
    route = {"und": np.zeros(T, int), "gen": np.ones(T, int), "mixed": np.array([0, 0, 1, 1, 0, 1, 0, 1, 1])}[routing]
    ours = _logits(net, params, layout, ids, route)
    with torch.no_grad():
        if routing == "mixed":
            ref = _hand_assembled(und, gen, ids, route).numpy()
            # the hand-assembled reference is itself each model where the routing is uniform
            np.testing.assert_allclose(_hand_assembled(und, gen, ids, np.zeros(T, int)).numpy(),
                                       und(torch.tensor(ids)).logits.numpy(), atol=1e-4)
        else:
            ref = (und if routing == "und" else gen)(torch.tensor(ids)).logits.numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)


def test_bad_llm_tensors_are_refused_by_name(experts):
    _, _, tensors = experts
    name = "language_model.model.layers.1.self_attn.k_norm_moe_gen.weight"
    with pytest.raises(KeyError, match=name):
        _ours({k: v for k, v in tensors.items() if k != name})
    with pytest.raises(ValueError, match="unexpected.*layers.2"):
        _ours(tensors | {"language_model.model.layers.2.mlp.up_proj.weight": np.zeros((112, 64), np.float32)})


def test_vision_encoder_matches_transformers_siglip():
    """BAGEL's SigLIP (patch embedding stored as a Linear, a 6 x 6 NaViT position table here) and
    connector -> our ViT: equal to transformers' SiglipVisionModel followed by the connector by hand,
    on a 4 x 4 patch grid (rows row * 6 + column of the table; the other rows hold junk that must not
    be read)."""
    from vlambpo_jax.models.vit import ViT

    siglip, fc1, fc2, tensors = bagel_reference.siglip_and_connector(32, 64, patch=4, image_size=16, max_side=6,
                                                                     seed=2)
    tensors["language_model.lm_head.weight"] = np.zeros((3, 3), np.float32)                # not the ViT's: ignored

    vit = ViT(patch=4, width=32, depth=2, heads=2, mlp=48, out_width=64, connector="mlp")
    images = np.random.default_rng(4).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
    shapes = jax.eval_shape(lambda: vit.init(jax.random.PRNGKey(0), jnp.asarray(images))["params"])
    params = bagel_import.convert_vit(tensors, shapes, heads=2, max_side=6)
    ours = np.asarray(vit.apply({"params": params}, jnp.asarray(images)))
    with torch.no_grad():
        ref = bagel_reference.siglip_connector_forward(siglip, fc1, fc2, images).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-4, rtol=0)
    with pytest.raises(KeyError, match="connector.fc2.bias"):
        bagel_import.convert_vit({k: v for k, v in tensors.items() if k != "connector.fc2.bias"}, shapes, 2, 6)


def test_bagel_embeddings_match_dit_conventions():
    """wm.bagel_embeddings' tables are DiT's/MAE's, as diffusers computes them: the timestep sinusoid of t
    itself [cos, sin], and the 2-D sin-cos table with the column half first."""
    from diffusers.models.embeddings import get_2d_sincos_pos_embed, get_timestep_embedding

    from vlambpo_jax.models.world_model import sincos_2d, timestep_embedding

    t = np.array([0.0, 0.3, 0.97], np.float32)
    ours = np.asarray(timestep_embedding(jnp.asarray(t), 256, scale=1.0))
    ref = get_timestep_embedding(torch.tensor(t), 256, flip_sin_to_cos=True, downscale_freq_shift=0).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    table = get_2d_sincos_pos_embed(64, 5, base_size=5).numpy()
    np.testing.assert_allclose(sincos_2d(5, 64, columns_first=True), table, atol=1e-6)
    assert not np.allclose(sincos_2d(5, 64), table, atol=1e-3)       # the default layout is the other


def test_generation_path_tensors_and_the_latent_table():
    from diffusers.models.embeddings import get_2d_sincos_pos_embed

    rng = np.random.default_rng(5)
    w = 32
    tensors = {"vae2llm.weight": rng.standard_normal((w, 16)), "vae2llm.bias": rng.standard_normal(w),
               "llm2vae.weight": rng.standard_normal((16, w)), "llm2vae.bias": rng.standard_normal(16),
               "time_embedder.mlp.0.weight": rng.standard_normal((w, 256)),
               "time_embedder.mlp.0.bias": rng.standard_normal(w),
               "time_embedder.mlp.2.weight": rng.standard_normal((w, w)),
               "time_embedder.mlp.2.bias": rng.standard_normal(w),
               "latent_pos_embed.pos_embed": get_2d_sincos_pos_embed(w, 8, base_size=8).numpy()}
    shape = lambda *s: jax.ShapeDtypeStruct(s, jnp.float32)  # noqa: E731
    reference = {"vae2llm": {"kernel": shape(16, w), "bias": shape(w)}, "llm2vae": {"kernel": shape(w, 16),
                 "bias": shape(16)}, "time_in": {"kernel": shape(256, w), "bias": shape(w)},
                 "time_out": {"kernel": shape(w, w), "bias": shape(w)}}
    out = bagel_import.convert_generation(tensors, reference, grid=4, max_side=8)
    np.testing.assert_allclose(out["time_in"]["kernel"], tensors["time_embedder.mlp.0.weight"].T, rtol=1e-6)
    np.testing.assert_allclose(out["llm2vae"]["bias"], tensors["llm2vae.bias"], rtol=1e-6)
    rows_first = np.concatenate([tensors["latent_pos_embed.pos_embed"][:, w // 2:],
                                 tensors["latent_pos_embed.pos_embed"][:, : w // 2]], axis=1)
    with pytest.raises(ValueError, match="latent_pos_embed is not the sin-cos table"):
        bagel_import.convert_generation(tensors | {"latent_pos_embed.pos_embed": rows_first}, reference, 4, 8)
    with pytest.raises(KeyError, match="time_embedder.mlp.2.bias"):
        bagel_import.convert_generation({k: v for k, v in tensors.items() if k != "time_embedder.mlp.2.bias"},
                                        reference, 4, 8)
