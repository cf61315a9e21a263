"""pi0.5 import parity: a tiny random transformers PI05ForConditionalGeneration and our Policy, loaded
through models/pi05_import, give the same prefix keys/values, velocity and Euler sample."""
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")  # test extra: torch (CPU wheel)
transformers = pytest.importorskip("transformers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from configs import bridge, tabletop  # noqa: E402
from tests.helpers import pi05_reference  # noqa: E402
from tests.helpers.fakes import RecordingWriter  # noqa: E402
from vlambpo_jax import loading, pipeline  # noqa: E402
from vlambpo_jax.config_checks import validate  # noqa: E402
from vlambpo_jax.data.tokenizer import ByteTokenizer  # noqa: E402
from vlambpo_jax.models import pi05_import  # noqa: E402
from vlambpo_jax.models.policy import Policy  # noqa: E402
from vlambpo_jax.stages import sft as sft_stage  # noqa: E402
from vlambpo_jax.train.preemption import NoPreemption  # noqa: E402

IMAGE_TOKEN, VOCAB = 299, 300
TOL = 1e-4


def _tiny_config(vocab=VOCAB, image_token=IMAGE_TOKEN, image_size=16, patch=4):
    return pi05_reference.tiny_config(vocab, image_token, image_size, patch)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    path = tmp_path_factory.mktemp("pi05")
    return pi05_reference.save_random(_tiny_config(), path), str(path)


def _policy(path):
    config = tabletop.get_config("smoke")
    sizes = pi05_import.policy_sizes(path)
    config.policy.update(sizes["policy"])
    config.chunk_size, config.image_size = sizes["chunk_size"], sizes["image_size"]
    config.policy.tokenizer = "byte"
    policy = Policy(config, VOCAB)
    obs = _inputs(config)
    init = policy.init(jax.random.PRNGKey(0), jax.tree.map(lambda x: x[:1], obs))
    return policy, init, obs


def _inputs(config):
    rng = np.random.default_rng(1)
    v, s, length = len(config.views), config.image_size, 6
    tokens = rng.integers(1, IMAGE_TOKEN, (2, length)).astype(np.int32)
    mask = np.ones((2, length), bool)
    mask[1, 4:] = False                                    # one padded prompt
    return {"images": rng.integers(0, 256, (2, v, s, s, 3), np.uint8), "tokens": tokens * mask,
            "token_mask": mask}


def _reference_inputs(obs, patches: int):
    images = torch.tensor(obs["images"].astype(np.float32) / 127.5 - 1.0).permute(0, 1, 4, 2, 3)
    b, v = images.shape[:2]
    image_ids = np.full((b, v * patches), IMAGE_TOKEN)
    ids = torch.tensor(np.concatenate([image_ids, obs["tokens"]], axis=1))
    mask = torch.tensor(np.concatenate([np.ones_like(image_ids, bool), obs["token_mask"]], axis=1)).long()
    return dict(input_ids=ids, pixel_values=images, attention_mask=mask,
                pixel_attention_mask=torch.ones((b, v), dtype=torch.bool))


def test_prefix_velocity_and_sample_match_transformers(reference):
    model, path = reference
    policy, init, obs = _policy(path)
    params = pi05_import.load_pi05(path, init)
    ref_in = _reference_inputs(obs, (policy.dims.image_size // policy.dims.vit_patch) ** 2)
    valid = np.asarray(ref_in["attention_mask"], bool)

    cache = policy.encode_prefix(params, jax.tree.map(jnp.asarray, obs))
    with torch.no_grad():
        embeds = model.model.embed_prefix(ref_in["input_ids"], ref_in["pixel_values"], ref_in["pixel_attention_mask"])
        ref_cache = model.model.vlm(inputs_embeds=embeds, attention_mask=ref_in["attention_mask"],
                                    position_ids=ref_in["attention_mask"].cumsum(-1) - 1,
                                    token_type_ids=torch.zeros_like(ref_in["input_ids"]), use_cache=True).cache
    for layer in range(policy.dims.depth):
        for ours, theirs in ((cache.k, ref_cache.layers[layer].keys), (cache.v, ref_cache.layers[layer].values)):
            theirs = theirs.numpy().transpose(0, 2, 1, 3)                 # [B, KV, P, D] -> [B, P, KV, D]
            np.testing.assert_allclose(np.asarray(ours[layer])[valid], theirs[valid], atol=TOL, rtol=0)

    rng = np.random.default_rng(2)
    noise = rng.standard_normal((2, 5, 8)).astype(np.float32)
    t = np.array([0.9, 0.35], np.float32)
    velocity = policy.denoise(params, cache, jnp.asarray(noise), jnp.asarray(t))
    with torch.no_grad():
        ref_velocity = model(**ref_in, noise=torch.tensor(noise), timestep=torch.tensor(t)).logits.numpy()
    np.testing.assert_allclose(np.asarray(velocity), ref_velocity, atol=TOL, rtol=0)

    actions = policy.sample_actions(params, jax.tree.map(jnp.asarray, obs), jax.random.PRNGKey(0), num_steps=3,
                                    noise=jnp.asarray(noise))
    with torch.no_grad():
        ref_actions = model.sample_actions(**ref_in, noise=torch.tensor(noise), num_steps=3).numpy()
    np.testing.assert_allclose(np.asarray(actions), ref_actions[..., : policy.dims.action_dim], atol=TOL, rtol=0)
    assert np.abs(ref_actions).max() > 0.1                # not a trivially small output


def _layouts(model, path) -> dict:
    """The same weights under each supported naming: the files save_pretrained wrote (transformers
    writes pi0.5 in its original LeRobot layout), transformers' in-memory names, and LeRobot's
    policy state dict (a 'model.' root, the prefix embedding stored only as the tied lm_head)."""
    files = pi05_import.read_tensors(path)
    memory = {k: v.numpy() for k, v in model.state_dict().items()}
    lerobot = {}
    for name, value in files.items():
        if name.endswith("language_model.model.embed_tokens.weight"):
            name = "paligemma_with_expert.paligemma.lm_head.weight"
        lerobot["model." + name] = value
    lerobot["model.paligemma_with_expert.gemma_expert.lm_head.weight"] = np.zeros((VOCAB, 48), np.float32)
    return {"saved": files, "transformers": memory, "lerobot": lerobot}


def test_every_layout_loads_the_same_params(reference):
    model, path = reference
    _, init, _ = _policy(path)
    layouts = _layouts(model, path)
    assert any(k.startswith("model.vlm.") for k in layouts["transformers"])
    assert any(k.startswith("paligemma_with_expert.") for k in layouts["saved"])
    loaded = {name: pi05_import.convert_pi05(tensors, init) for name, tensors in layouts.items()}
    leaves = jax.tree_util.tree_leaves_with_path(loaded["saved"])
    for other in ("transformers", "lerobot"):
        assert len(leaves) == len(jax.tree.leaves(loaded[other]))
        for (key, a), b in zip(leaves, jax.tree.leaves(loaded[other])):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=f"{other} {jax.tree_util.keystr(key)}")


def test_bad_checkpoints_are_refused_by_name(reference):
    model, path = reference
    _, init, _ = _policy(path)
    tensors = _layouts(model, path)["transformers"]
    name = "model.dit.layers.1.mlp.up_proj.weight"
    with pytest.raises(KeyError, match=re.escape(name)):
        pi05_import.convert_pi05({k: v for k, v in tensors.items() if k != name}, init)
    with pytest.raises(ValueError, match="unexpected.*model.vlm.language_model.layers.2"):
        pi05_import.convert_pi05(tensors | {"model.vlm.language_model.layers.2.mlp.up_proj.weight": tensors[name]},
                                 init)
    embed = "model.vlm.language_model.embed_tokens.weight"
    with pytest.raises(ValueError, match=re.escape("'/vlm/embed/embedding' has shape (299, 64)")):
        pi05_import.convert_pi05(tensors | {embed: tensors[embed][:-1]}, init)
    with pytest.raises(ValueError, match=re.escape("'model.dit.layers.0.self_attn.q_proj.weight' has shape")):
        pi05_import.convert_pi05(tensors | {"model.dit.layers.0.self_attn.q_proj.weight": np.zeros((48, 48))}, init)


def test_full_size_policy_has_pi05s_parameters(tmp_path):
    """configs/bridge.py:pi05 builds the Policy at the default PI05Config's sizes (PaliGemma 3B + Gemma
    300M) with exactly the parameters of transformers' model (plus our value head), counted without
    materializing either."""
    transformers.PI05Config().save_pretrained(tmp_path)
    assert pi05_import.policy_sizes(str(tmp_path)) == pi05_import.full_size()
    config = bridge.get_config("pi05")
    policy = Policy(config, pi05_import.PALIGEMMA_VOCAB)
    b, v, s = 1, len(config.views), config.image_size
    obs = {"images": jnp.zeros((b, v, s, s, 3), jnp.uint8), "tokens": jnp.zeros((b, 8), jnp.int32),
           "token_mask": jnp.ones((b, 8), bool)}
    shapes = jax.eval_shape(lambda: policy.init(jax.random.PRNGKey(0), obs))
    count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))  # noqa: E731
    with torch.device("meta"):
        model = transformers.PI05ForConditionalGeneration(transformers.PI05Config())
    theirs = sum(p.numel() for p in model.parameters())
    assert count(shapes) - count(shapes["value_head"]) == theirs
    assert 3.0e9 < theirs < 3.7e9


def test_sft_starts_from_a_pi05_checkpoint(tmp_path):
    """--config.sft.init_from=<pi0.5 checkpoint dir>: the sft stage imports it; with 0 steps the saved
    policy is the checkpoint's weights (the bridge smoke pipeline, sizes set to the checkpoint's)."""
    vocab = ByteTokenizer.vocab_size
    ckpt = tmp_path / "pi05"
    pi05_reference.save_random(_tiny_config(vocab=vocab, image_token=vocab, image_size=32, patch=8), ckpt)
    config = bridge.get_config("smoke")
    sizes = pi05_import.policy_sizes(str(ckpt))
    config.policy.update(sizes["policy"])
    config.chunk_size, config.image_size = sizes["chunk_size"], sizes["image_size"]
    config.sft.update(dict(steps=0, init_from=str(ckpt), ema=0.0))
    config.log.progress = "off"
    validate(config)
    (tmp_path / "run" / "sft").mkdir(parents=True)
    sft_stage.run(pipeline.StageContext(config, tmp_path / "run", "sft", RecordingWriter(), NoPreemption()))
    _, params, _, _ = loading.load_policy(tmp_path / "run" / "sft" / "policy")
    expected = pi05_import.convert_pi05(pi05_import.read_tensors(str(ckpt)), params)
    for group in ("vlm", "action_expert"):
        for a, b in zip(jax.tree.leaves(params[group]), jax.tree.leaves(expected[group])):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_openpi_release_loads_like_the_safetensors(reference, tmp_path):
    """openpi's own release layout (orbax, layers stacked, einsum weights, nnx 'value' leaves): the same
    weights, written into it from torch's conventions (tests/helpers/pi05_reference.py), load to exactly
    the params of the safetensors import, and the sizes read from the arrays' shapes are the config's."""
    _, path = reference
    _, init, _ = _policy(path)
    tensors = pi05_import.canonical_names(pi05_import.read_tensors(path))
    ckpt = str(tmp_path / "pi05_openpi")
    pi05_reference.save_openpi_params(tensors, ckpt, heads=4, vit_heads=2)
    assert pi05_import.is_openpi_checkpoint(ckpt) and pi05_import.is_pi05_checkpoint(ckpt)
    sizes, expected = pi05_import.policy_sizes(ckpt), pi05_import.policy_sizes(path)
    assert sizes["policy"] == expected["policy"] and sizes["image_size"] == expected["image_size"]
    assert sizes["chunk_size"] is None                       # openpi stores no chunk length
    ours, theirs = pi05_import.load_pi05(ckpt, init), pi05_import.load_pi05(path, init)
    leaves = jax.tree_util.tree_leaves_with_path(theirs)
    assert len(leaves) == len(jax.tree.leaves(ours))
    for (key, a), b in zip(leaves, jax.tree.leaves(ours)):
        np.testing.assert_array_equal(np.asarray(b), np.asarray(a), err_msg=jax.tree_util.keystr(key))
    arrays = pi05_import.read_openpi(ckpt)
    name = "PaliGemma/llm/layers/mlp_1/linear"
    with pytest.raises(KeyError, match=re.escape(name)):
        pi05_import.convert_openpi({k: v for k, v in arrays.items() if k != name}, init)
    with pytest.raises(ValueError, match="unexpected.*state_proj"):
        pi05_import.convert_openpi(arrays | {"state_proj/kernel": np.zeros((8, 48), np.float32)}, init)
