"""Hugging Face Qwen2 checkpoint (config.json + *.safetensors) -> MoT backbone parameters.

As BAGEL does, both experts of every layer start from the language model's decoder layer (the
generation expert is an exact copy). Qwen2 has no QK-norm; `qk_norm=True` adds BAGEL's per-head q/k
RMSNorms with weight one (this changes the numerics, so the parity test uses qk_norm=False).
Weights are read with safetensors.numpy (no PyTorch needed); torch Linear weights [out, in] become
Flax kernels [in, out]. Only full attention and plain RoPE are implemented: a config.json with
sliding-window layers or any rope scaling is refused in one line rather than loaded with other numerics.
"""
from __future__ import annotations

import json
import os

import numpy as np

from vlambpo_jax.models.safetensors_dir import read_safetensors
from vlambpo_jax.models.umm import UMMConfig


def qwen2_config(path: str, qk_norm: bool = False, dtype: str = "float32", file: str = "config.json") -> UMMConfig:
    """Reads <path>/<file> (a Qwen2 config.json; BAGEL's llm_config.json) into a UMMConfig."""
    cfg_file = os.path.join(path, file)
    if not os.path.exists(cfg_file):
        raise FileNotFoundError(f"no {file} in Qwen2 checkpoint directory {path!r}")
    hf = json.load(open(cfg_file))
    if hf.get("model_type") not in ("qwen2", None):
        raise ValueError(f"{cfg_file}: model_type {hf.get('model_type')!r} is not qwen2")
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"{cfg_file}: hidden_act {hf['hidden_act']!r}; only silu is supported")
    heads = hf["num_attention_heads"]
    _refuse_sliding_window(hf, cfg_file)
    theta = _rope_theta(hf, cfg_file)
    return UMMConfig(
        vocab_size=hf["vocab_size"], width=hf["hidden_size"], depth=hf["num_hidden_layers"],
        heads=heads, kv_heads=hf.get("num_key_value_heads", heads),
        head_dim=hf.get("head_dim") or hf["hidden_size"] // heads, mlp=hf["intermediate_size"],
        rope_theta=theta, rms_eps=float(hf.get("rms_norm_eps", 1e-6)), qk_norm=qk_norm,
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)), dtype=dtype)


def _refuse_sliding_window(hf: dict, cfg_file: str) -> None:
    """Sliding-window layers (as transformers assigns them) are not implemented: refuse them."""
    if not hf.get("use_sliding_window") or hf.get("sliding_window") is None:
        return  # transformers then runs every layer with full attention
    types = hf.get("layer_types") or ["sliding_attention" if i >= hf.get("max_window_layers", 28)
                                      else "full_attention" for i in range(hf["num_hidden_layers"])]
    sliding = [i for i, t in enumerate(types) if t == "sliding_attention"]
    if sliding:
        raise ValueError(f"{cfg_file}: use_sliding_window with sliding-window layers {sliding} is not "
                         "supported (only full attention is implemented)")


def _rope_theta(hf: dict, cfg_file: str) -> float:
    """The rope base frequency; any rope scaling is refused (only plain RoPE is implemented)."""
    given = [k for k in ("rope_parameters", "rope_scaling") if hf.get(k)]
    if len(given) == 2 and hf["rope_parameters"] != hf["rope_scaling"]:
        raise ValueError(f"{cfg_file}: rope_parameters and rope_scaling disagree; keep one of them")
    rope = hf[given[0]] if given else {}
    kind = rope.get("rope_type", rope.get("type", "default"))
    if kind != "default":
        raise ValueError(f"{cfg_file}: rope type {kind!r} is not supported (only plain RoPE, 'default')")
    return float(rope.get("rope_theta", hf.get("rope_theta", 10_000.0)))


def convert_qwen2(tensors: dict[str, np.ndarray], cfg: UMMConfig) -> dict:
    """HF Qwen2ForCausalLM state dict (numpy) -> {'params': ...} of MoTBackbone(cfg)."""
    def get(name):
        for key in (name, name.replace("model.", "", 1)):
            if key in tensors:
                return np.asarray(tensors[key], np.float32)
        raise KeyError(f"Qwen2 checkpoint lacks tensor {name!r}")

    def dense(prefix, bias):
        d = {"kernel": get(prefix + ".weight").T}
        if bias:
            d["bias"] = get(prefix + ".bias")
        return d

    params: dict = {"embedder": {"embedding": get("model.embed_tokens.weight")}}
    for i in range(cfg.depth):
        p = f"model.layers.{i}."
        expert = {
            "input_norm": {"scale": get(p + "input_layernorm.weight")},
            "q_proj": dense(p + "self_attn.q_proj", True),
            "k_proj": dense(p + "self_attn.k_proj", True),
            "v_proj": dense(p + "self_attn.v_proj", True),
            "o_proj": dense(p + "self_attn.o_proj", False),
            "post_attention_norm": {"scale": get(p + "post_attention_layernorm.weight")},
            "gate_proj": dense(p + "mlp.gate_proj", False),
            "up_proj": dense(p + "mlp.up_proj", False),
            "down_proj": dense(p + "mlp.down_proj", False),
        }
        if cfg.qk_norm:
            expert["q_norm"] = {"scale": np.ones((cfg.head_dim,), np.float32)}
            expert["k_norm"] = {"scale": np.ones((cfg.head_dim,), np.float32)}
        # The generation expert starts as an exact copy of the language model (BAGEL).
        params[f"layers_{i}"] = {"und": expert, "gen": {k: dict(v) for k, v in expert.items()}}
    norm = get("model.norm.weight")
    params["final_norm_und"] = {"scale": norm}
    params["final_norm_gen"] = {"scale": norm.copy()}
    if not cfg.tie_embeddings:
        params["lm_head"] = {"kernel": get("lm_head.weight").T}
    return {"params": params}


def load_qwen2(path: str, qk_norm: bool = False, dtype: str = "float32") -> tuple[UMMConfig, dict]:
    """Checkpoint directory -> (UMMConfig, MoTBackbone params)."""
    cfg = qwen2_config(path, qk_norm=qk_norm, dtype=dtype)
    return cfg, convert_qwen2(read_safetensors(path, "Qwen2"), cfg)
