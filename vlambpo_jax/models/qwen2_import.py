"""Hugging Face Qwen2 checkpoint (config.json + *.safetensors) -> MoT backbone parameters.

As BAGEL does, both experts of every layer start from the language model's decoder layer (the
generation expert is an exact copy). Qwen2 has no QK-norm; `qk_norm=True` adds BAGEL's per-head q/k
RMSNorms with weight one (this changes the numerics, so the parity test uses qk_norm=False).
Weights are read with safetensors.numpy (no PyTorch needed); torch Linear weights [out, in] become
Flax kernels [in, out].
"""
from __future__ import annotations

import glob
import json
import os

import numpy as np
from safetensors.numpy import load_file

from vlambpo_jax.models.umm import UMMConfig


def qwen2_config(path: str, qk_norm: bool = False, dtype: str = "float32") -> UMMConfig:
    """Reads <path>/config.json into a UMMConfig."""
    cfg_file = os.path.join(path, "config.json")
    if not os.path.exists(cfg_file):
        raise FileNotFoundError(f"no config.json in Qwen2 checkpoint directory {path!r}")
    hf = json.load(open(cfg_file))
    if hf.get("model_type") not in ("qwen2", None):
        raise ValueError(f"{cfg_file}: model_type {hf.get('model_type')!r} is not qwen2")
    if hf.get("hidden_act", "silu") != "silu":
        raise ValueError(f"{cfg_file}: hidden_act {hf['hidden_act']!r}; only silu is supported")
    heads = hf["num_attention_heads"]
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    theta = rope.get("rope_theta", hf.get("rope_theta", 10_000.0))
    if rope.get("rope_type", "default") not in ("default", None):
        raise ValueError(f"{cfg_file}: rope type {rope.get('rope_type')!r} is not supported")
    return UMMConfig(
        vocab_size=hf["vocab_size"], width=hf["hidden_size"], depth=hf["num_hidden_layers"],
        heads=heads, kv_heads=hf.get("num_key_value_heads", heads),
        head_dim=hf.get("head_dim") or hf["hidden_size"] // heads, mlp=hf["intermediate_size"],
        rope_theta=float(theta), rms_eps=float(hf.get("rms_norm_eps", 1e-6)), qk_norm=qk_norm,
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)), dtype=dtype)


def _read_tensors(path: str) -> dict[str, np.ndarray]:
    files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in Qwen2 checkpoint directory {path!r}")
    out = {}
    for f in files:
        out.update(load_file(f))
    return out


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
    return cfg, convert_qwen2(_read_tensors(path), cfg)
