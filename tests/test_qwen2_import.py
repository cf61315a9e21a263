"""Qwen2 import parity: a tiny random HF Qwen2ForCausalLM and our MoT backbone give the same logits."""
import json
import os
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")  # test extra: torch==2.13.0 (CPU wheel)
transformers = pytest.importorskip("transformers")

import jax.numpy as jnp  # noqa: E402

from vlambpo_jax.models import sequence_layout as sl  # noqa: E402
from vlambpo_jax.models.qwen2_import import load_qwen2, qwen2_config  # noqa: E402
from vlambpo_jax.models.umm import MoTBackbone  # noqa: E402


@pytest.fixture(scope="module")
def tiny_qwen2(tmp_path_factory):
    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(
        vocab_size=97, hidden_size=64, intermediate_size=112, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        rope_theta=10_000.0, rms_norm_eps=1e-6, tie_word_embeddings=False)
    model = transformers.Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():  # random biases and norm weights, so a mis-mapped tensor shows
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("qwen2")
    model.save_pretrained(path, safe_serialization=True)
    ids = np.random.default_rng(0).integers(0, 97, size=(2, 11))
    with torch.no_grad():
        ref = model(torch.tensor(ids)).logits.float().numpy()
    return str(path), ids, ref


@pytest.mark.parametrize("routing", ["und", "gen", "mixed"])
def test_qwen2_logits_match(tiny_qwen2, routing):
    path, ids, ref = tiny_qwen2
    cfg, params = load_qwen2(path)
    assert cfg.kv_heads == 2 and cfg.head_dim == 16 and not cfg.qk_norm
    layout = sl.text_layout(ids.shape[1])
    experts = {"und": np.zeros(11, int), "gen": np.ones(11, int),
               "mixed": np.array([0, 1] * 5 + [1])}[routing]  # gen expert = copy of the LM
    net = MoTBackbone(cfg)
    x = net.apply(params, jnp.asarray(ids), method=MoTBackbone.embed)
    h, _ = net.apply(params, x, experts, layout.rope_ids()[None], layout.attention_mask()[None])
    logits = np.asarray(net.apply(params, h, method=MoTBackbone.logits))
    assert np.abs(logits - ref).max() < 1e-4, np.abs(logits - ref).max()


def test_qwen2_kv_cache_matches_full(tiny_qwen2):
    """Prefill 6 tokens into a cache, then run the last 5 against it: same logits as one pass."""
    path, ids, ref = tiny_qwen2
    cfg, params = load_qwen2(path)
    net = MoTBackbone(cfg)
    layout = sl.text_layout(11)
    mask, pos = layout.attention_mask(), layout.rope_ids()
    x = net.apply(params, jnp.asarray(ids), method=MoTBackbone.embed)
    _, cache = net.apply(params, x[:, :6], np.zeros(6, int), pos[None, :6], mask[None, :6, :6])
    h, _ = net.apply(params, x[:, 6:], np.zeros(5, int), pos[None, 6:], mask[None, 6:, :], cache)
    logits = np.asarray(net.apply(params, h, method=MoTBackbone.logits))
    assert np.abs(logits - ref[:, 6:]).max() < 1e-4


BASE_CONFIG = dict(model_type="qwen2", vocab_size=97, hidden_size=64, intermediate_size=112,
                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


@pytest.mark.parametrize("extra, named", [
    (dict(use_sliding_window=True, sliding_window=4, layer_types=["full_attention", "sliding_attention"]),
     "sliding"),
    (dict(use_sliding_window=True, sliding_window=4, max_window_layers=1), "sliding"),  # no layer_types
    (dict(rope_parameters={"rope_type": "default", "rope_theta": 1e4},
          rope_scaling={"rope_type": "default", "rope_theta": 1e6}), "rope_scaling"),
    (dict(rope_scaling={"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32}), "yarn"),
    (dict(rope_scaling={"type": "linear", "factor": 2.0}), "linear"),
    (dict(rope_parameters={"rope_type": "dynamic", "factor": 2.0}), "dynamic"),
])
def test_unsupported_qwen2_configs_are_refused_in_one_line(tmp_path, extra, named):
    """Configs transformers runs differently from our plain-RoPE full-attention block must not load."""
    (tmp_path / "config.json").write_text(json.dumps(dict(BASE_CONFIG, **extra)))
    with pytest.raises(ValueError) as e:
        qwen2_config(str(tmp_path))
    assert named in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_sliding_window_flag_without_sliding_layers_loads_at_parity(tiny_qwen2, tmp_path):
    """use_sliding_window with max_window_layers >= depth has no sliding layer: full attention, same logits."""
    path, ids, ref = tiny_qwen2
    for f in os.listdir(path):
        shutil.copy(os.path.join(path, f), tmp_path / f)
    hf = json.loads((tmp_path / "config.json").read_text())
    hf.update(use_sliding_window=True, sliding_window=4, max_window_layers=2)
    hf.pop("layer_types", None)
    (tmp_path / "config.json").write_text(json.dumps(hf))
    model = transformers.Qwen2ForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert np.abs(model(torch.tensor(ids)).logits.float().numpy() - ref).max() < 1e-5
    cfg, params = load_qwen2(str(tmp_path))
    layout = sl.text_layout(ids.shape[1])
    net = MoTBackbone(cfg)
    x = net.apply(params, jnp.asarray(ids), method=MoTBackbone.embed)
    h, _ = net.apply(params, x, np.zeros(11, int), layout.rope_ids()[None], layout.attention_mask()[None])
    assert np.abs(np.asarray(net.apply(params, h, method=MoTBackbone.logits)) - ref).max() < 1e-4
