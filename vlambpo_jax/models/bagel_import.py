"""BAGEL-7B-MoT checkpoints -> our world model's parts (issue 21; docs/notes/bagel_checkpoint_layout.md).

So far the MoT language model and the vision encoder. The language model: ema.safetensors'
`language_model.*` tensors -> MoTBackbone params. Its
layers carry both experts under one name each, the generation expert's with a `_moe_gen` suffix
(`self_attn.q_proj_moe_gen`, `mlp_moe_gen.gate_proj`, `input_layernorm_moe_gen`, ...), and per-head
q/k RMSNorms (`self_attn.q_norm`, `k_norm`); the final norms are `model.norm` and `model.norm_moe_gen`,
the lm_head is untied. The sizes come from the release's llm_config.json (a Qwen2 config; BAGEL forces
QK-norm on and untied embeddings). The vision encoder: `vit_model.vision_model.*` (SigLIP, its patch
embedding a Linear, its 70 x 70 NaViT position table read at the rows of the configured grid) and
`connector.*` (fc1, GELU, fc2) -> models/vit.ViT(connector='mlp') params. Every tensor is mapped;
missing, unexpected or misshaped ones are refused in one line naming them. The generation path's
projections and timestep embedder: `vae2llm`, `llm2vae`, `time_embedder.mlp.{0,2}` -> the world model's
vae2llm, llm2vae, time_in, time_out (with wm.bagel_embeddings, whose fixed latent table the stored
`latent_pos_embed` must equal). The FLUX VAE is models/flux_vae.py.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from vlambpo_jax.models.qwen2_import import qwen2_config
from vlambpo_jax.models.safetensors_dir import check_params, read_safetensors
from vlambpo_jax.models.siglip_import import TensorSource, siglip_tower
from vlambpo_jax.models.umm import UMMConfig
from vlambpo_jax.models.world_model import sincos_2d

LLM_PREFIX = "language_model."
VIT_PREFIXES = ("vit_model.", "connector.")
MAX_PATCHES_PER_SIDE = 70     # BagelConfig.vit_max_num_patch_per_side
MAX_LATENT_SIDE = 64          # BagelConfig.max_latent_size
_GENERATION = {"vae2llm": "vae2llm", "llm2vae": "llm2vae", "time_in": "time_embedder.mlp.0",
               "time_out": "time_embedder.mlp.2"}
_EXPERTS = {"und": "", "gen": "_moe_gen"}


def bagel_llm_config(path: str, dtype: str = "float32") -> UMMConfig:
    """<path>/llm_config.json with BAGEL's edits: QK-norm, untied embeddings."""
    cfg = qwen2_config(path, qk_norm=True, dtype=dtype, file="llm_config.json")
    return dataclasses.replace(cfg, tie_embeddings=False)


def convert_llm(tensors: dict[str, np.ndarray], reference: dict) -> dict:
    """BAGEL's `language_model.*` tensors (others ignored) -> MoTBackbone params shaped like `reference`
    (its init or eval_shape, under 'params'); torch Linear [out, in] -> Flax kernel [in, out]."""
    left = {k[len(LLM_PREFIX):]: np.asarray(v, np.float32) for k, v in tensors.items() if k.startswith(LLM_PREFIX)}

    def take(name: str) -> np.ndarray:
        if name not in left:
            raise KeyError(f"BAGEL checkpoint lacks tensor {LLM_PREFIX + name!r}")
        return left.pop(name)

    def dense(name: str, bias: bool) -> dict:
        out = {"kernel": take(name + ".weight").T}
        if bias:
            out["bias"] = take(name + ".bias")
        return out

    params: dict = {"embedder": {"embedding": take("model.embed_tokens.weight")},
                    "lm_head": {"kernel": take("lm_head.weight").T}}
    depth = sum(1 for k in reference["params"] if k.startswith("layers_"))
    for i in range(depth):
        p = f"model.layers.{i}."
        params[f"layers_{i}"] = {ours: {
            "input_norm": {"scale": take(f"{p}input_layernorm{x}.weight")},
            **{f"{n}_proj": dense(f"{p}self_attn.{n}_proj{x}", bias=True) for n in "qkv"},
            "o_proj": dense(f"{p}self_attn.o_proj{x}", bias=False),
            "q_norm": {"scale": take(f"{p}self_attn.q_norm{x}.weight")},
            "k_norm": {"scale": take(f"{p}self_attn.k_norm{x}.weight")},
            "post_attention_norm": {"scale": take(f"{p}post_attention_layernorm{x}.weight")},
            **{f"{n}_proj": dense(f"{p}mlp{x}.{n}_proj", bias=False) for n in ("gate", "up", "down")},
        } for ours, x in _EXPERTS.items()}
    for ours, x in _EXPERTS.items():
        params[f"final_norm_{ours}"] = {"scale": take(f"model.norm{x}.weight")}
    if left:
        raise ValueError(f"BAGEL checkpoint has {len(left)} unexpected language-model tensor(s), e.g. "
                         f"{LLM_PREFIX + sorted(left)[0]!r}")
    check_params(params, reference["params"], "BAGEL")
    return {"params": params}


def navit_rows(grid: int, max_side: int = MAX_PATCHES_PER_SIDE) -> np.ndarray:
    """Rows of one of BAGEL's position tables (the ViT's NaViT table, the latent table) for a grid x grid
    image: row * max_side + column."""
    if grid > max_side:
        raise ValueError(f"a {grid} x {grid} patch grid exceeds BAGEL's position table ({max_side} per side)")
    return (np.arange(grid)[:, None] * max_side + np.arange(grid)[None, :]).reshape(-1)


def convert_vit(tensors: dict[str, np.ndarray], reference: dict, heads: int,
                max_side: int = MAX_PATCHES_PER_SIDE) -> dict:
    """BAGEL's `vit_model.*` and `connector.*` tensors (others ignored) -> ViT(connector='mlp') params
    shaped like `reference`, for the patch grid the reference's position embedding has."""
    src = TensorSource({k: np.asarray(v, np.float32) for k, v in tensors.items() if k.startswith(VIT_PREFIXES)},
                       "BAGEL")
    depth = sum(1 for k in reference if k.startswith("block_"))
    grid = int(round(reference["pos_embed"].shape[1] ** 0.5))
    vit = siglip_tower(src, "vit_model.vision_model.", depth, heads, navit_rows(grid, max_side))
    vit["connector_fc1"] = src.linear("connector.fc1", bias=True)
    vit["connector_fc2"] = src.linear("connector.fc2", bias=True)
    if src.tensors:
        raise ValueError(f"BAGEL checkpoint has {len(src.tensors)} unexpected vision tensor(s), e.g. "
                         f"{sorted(src.tensors)[0]!r}")
    check_params(vit, reference, "BAGEL")
    return vit


def convert_generation(tensors: dict[str, np.ndarray], reference: dict, grid: int,
                       max_side: int = MAX_LATENT_SIDE) -> dict:
    """BAGEL's generation-path tensors -> {vae2llm, llm2vae, time_in, time_out} of the world model's net
    (`reference`: its params, shapes suffice). The stored latent position table must be the fixed table
    the net computes with wm.bagel_embeddings (read at rows row * max_side + column of the grid)."""
    src = TensorSource({k: np.asarray(v, np.float32) for k, v in tensors.items()}, "BAGEL")
    out = {ours: src.linear(theirs, bias=True) for ours, theirs in _GENERATION.items()}
    check_params(out, {k: reference[k] for k in _GENERATION}, "BAGEL")
    table = src.take("latent_pos_embed.pos_embed")[navit_rows(grid, max_side)]
    expected = sincos_2d(grid, table.shape[1], columns_first=True)
    if not np.allclose(table, expected, atol=1e-4):
        raise ValueError("BAGEL checkpoint's latent_pos_embed is not the sin-cos table wm.bagel_embeddings "
                         f"computes (max abs difference {np.abs(table - expected).max():.3g})")
    return out


def read_checkpoint(path: str) -> dict[str, np.ndarray]:
    """Every tensor of <path>/*.safetensors except the VAE's ae.safetensors."""
    return read_safetensors(path, "BAGEL", skip=r"ae\.safetensors$")
