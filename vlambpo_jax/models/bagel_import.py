"""BAGEL-7B-MoT checkpoints -> our world model's parts (issue 21; docs/notes/bagel_checkpoint_layout.md).

load_world_model assembles the whole world model from a release directory. Its parts: the language
model, ema.safetensors' `language_model.*` tensors -> MoTBackbone params. Its layers carry both experts
under one name each, the generation expert's with a `_moe_gen` suffix (`self_attn.q_proj_moe_gen`,
`mlp_moe_gen.gate_proj`, `input_layernorm_moe_gen`, ...), and per-head q/k RMSNorms (`self_attn.q_norm`,
`k_norm`); the final norms are `model.norm` and `model.norm_moe_gen`, the lm_head is untied. The sizes
come from the release's llm_config.json (a Qwen2 config; BAGEL forces QK-norm on and untied embeddings).
The vision encoder: `vit_model.vision_model.*` (SigLIP, its patch embedding a Linear, its 70 x 70 NaViT
position table read at the rows of the configured grid) and `connector.*` (fc1, GELU, fc2) ->
models/vit.ViT(connector='mlp') params. Every tensor is mapped; missing, unexpected or misshaped ones
are refused in one line naming them. The generation path's projections and timestep embedder: `vae2llm`,
`llm2vae`, `time_embedder.mlp.{0,2}` -> the world model's vae2llm, llm2vae, time_in, time_out (with
wm.bagel_embeddings, whose fixed latent table the stored `latent_pos_embed` must equal, as must
`vit_pos_embed` the ViT's). The FLUX VAE is models/flux_vae.py.
"""
from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from safetensors.numpy import load_file

from vlambpo_jax.models import flux_vae
from vlambpo_jax.models.qwen2_import import qwen2_config
from vlambpo_jax.models.safetensors_dir import check_params, read_safetensors
from vlambpo_jax.models.siglip_import import TensorSource, siglip_tower
from vlambpo_jax.models.umm import UMMConfig
from vlambpo_jax.models.world_model import sincos_2d

LLM_PREFIX = "language_model."
VIT_PREFIXES = ("vit_model.", "connector.")
GENERATION_PREFIXES = ("vae2llm.", "llm2vae.", "time_embedder.", "latent_pos_embed.")
VIT_TABLE = "vit_pos_embed.pos_embed"     # BAGEL's fixed table added after the connector
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


def _check_table(table: np.ndarray, grid: int, max_side: int, name: str) -> None:
    """A stored fixed position table, read at the rows of a grid x grid image, must be the column-first
    sin-cos table the world model computes with wm.bagel_embeddings."""
    table = table[navit_rows(grid, max_side)]
    expected = sincos_2d(grid, table.shape[1], columns_first=True)
    if not np.allclose(table, expected, atol=1e-4):
        raise ValueError(f"BAGEL checkpoint's {name} is not the sin-cos table wm.bagel_embeddings computes "
                         f"(max abs difference {np.abs(table - expected).max():.3g})")


def convert_generation(tensors: dict[str, np.ndarray], reference: dict, grid: int,
                       max_side: int = MAX_LATENT_SIDE) -> dict:
    """BAGEL's generation-path tensors (GENERATION_PREFIXES; others ignored) -> {vae2llm, llm2vae, time_in,
    time_out} of the world model's net (`reference`: its params, shapes suffice). The stored latent
    position table must be the fixed table the net computes with wm.bagel_embeddings (read at rows
    row * max_side + column of the grid)."""
    src = TensorSource({k: np.asarray(v, np.float32) for k, v in tensors.items()
                        if k.startswith(GENERATION_PREFIXES)}, "BAGEL")
    out = {ours: src.linear(theirs, bias=True) for ours, theirs in _GENERATION.items()}
    check_params(out, {k: reference[k] for k in _GENERATION}, "BAGEL")
    _check_table(src.take("latent_pos_embed.pos_embed"), grid, max_side, "latent_pos_embed")
    if src.tensors:
        raise ValueError(f"BAGEL checkpoint has {len(src.tensors)} unexpected generation tensor(s), e.g. "
                         f"{sorted(src.tensors)[0]!r}")
    return out


def full_size() -> dict:
    """config.wm overrides with BAGEL-7B-MoT's sizes (Qwen2.5-7B with the MoT generation expert and
    QK-norm, SigLIP so400m/14 with 26 layers and the MLP connector, the FLUX VAE whose FluxVAEConfig
    defaults are the release's) and the paper's training and sampling settings (PAPER.md)."""
    return dict(
        vae=dict(kind="flux"),
        vit=dict(patch=14, width=1152, depth=26, heads=16, mlp=4304, connector="mlp"),
        umm=dict(width=3584, depth=28, heads=28, kv_heads=4, head_dim=128, mlp=18944, rope_theta=1e6, qk_norm=True,
                 vocab_size=152064, remat=True),
        latent_patch=2, bagel_embeddings=True, num_sample_steps=50, timestep_shift=4.0, cfg_text_scale=6.0,
        cfg_image_scale=2.0, cfg_interval=(0.4, 1.0), dropout=dict(text=0.1, vit=0.3, vae=0.3), lr=2e-5,
        b1=0.9, b2=0.95, grad_clip=1.0, ema=0.9999, loss_image=1.0, loss_text=0.01, dtype="bfloat16")


def check_release_sizes(path: str, spec) -> None:
    """The release's llm_config.json and vit_config.json, where present, against a WMSpec's sizes (BAGEL
    drops the ViT's last layer: it runs num_hidden_layers - 1). One line names the first that differs."""
    pairs = []
    if os.path.exists(os.path.join(path, "llm_config.json")):
        llm = bagel_llm_config(path)
        pairs += [(f"llm_config.json's {f}", getattr(llm, f), f"config.wm.umm.{f}", getattr(spec.umm, f))
                  for f in ("vocab_size", "width", "depth", "heads", "kv_heads", "head_dim", "mlp", "rope_theta")]
    vit_file = os.path.join(path, "vit_config.json")
    if os.path.exists(vit_file):
        with open(vit_file) as f:
            vit = json.load(f)
        pairs += [(f"vit_config.json's {theirs}", vit[theirs] - drop, f"config.wm.vit.{ours}", value)
                  for theirs, drop, ours, value in (("hidden_size", 0, "width", spec.vit_width),
                                                    ("intermediate_size", 0, "mlp", spec.vit_mlp),
                                                    ("num_attention_heads", 0, "heads", spec.vit_heads),
                                                    ("patch_size", 0, "patch", spec.vit_patch),
                                                    ("num_hidden_layers", 1, "depth", spec.vit_depth))]
    for theirs, a, ours, b in pairs:
        if a != b:
            raise ValueError(f"BAGEL checkpoint {path!r}: {theirs} gives {a}, but {ours} is {b}")


def load_world_model(path: str, wm, key: jax.Array | None = None) -> tuple[dict, list[str]]:
    """A local BAGEL-7B-MoT directory (its weights' *.safetensors, ae.safetensors and, checked against the
    config where present, llm_config.json and vit_config.json) -> ({'net', 'vae',
    'stats'} world-model params for `wm`, the net's parameters the release lacks). `wm` must be built
    from a BAGEL-kind config (wm.vae.kind='flux', wm.vit.connector='mlp', wm.bagel_embeddings) with the
    checkpoint's sizes (full_size()). Every tensor of the directory is mapped; the parameters it lacks
    (the continuous action encoder; adaLN's condition MLP) are initialised from `key` as wm.init would,
    and the statistics are FLUX's latent shift and scale with actions in [-1, 1]."""
    s = wm.spec
    if not (s.flux and s.vit_connector == "mlp" and s.bagel_embeddings):
        raise ValueError("loading BAGEL needs a BAGEL-kind world model: config.wm.vae.kind='flux', "
                         "config.wm.vit.connector='mlp' and config.wm.bagel_embeddings=True "
                         "(models/bagel_import.full_size() has them)")
    check_release_sizes(path, s)
    key = jax.random.PRNGKey(0) if key is None else key
    shapes = jax.eval_shape(wm.init, key)
    net_ref = shapes["net"]["params"]
    tensors = read_checkpoint(path)
    known = (LLM_PREFIX, *VIT_PREFIXES, *GENERATION_PREFIXES, VIT_TABLE)
    other = sorted(k for k in tensors if not k.startswith(known))
    if other:
        raise ValueError(f"BAGEL checkpoint has {len(other)} tensor(s) of no known part, e.g. {other[0]!r}")
    _check_table(np.asarray(tensors.pop(VIT_TABLE), np.float32), s.vit_grid, MAX_PATCHES_PER_SIDE, "vit_pos_embed")
    net = {"backbone": convert_llm(tensors, {"params": net_ref["backbone"]})["params"],
           "vit": convert_vit(tensors, net_ref["vit"], heads=s.vit_heads),
           **convert_generation(tensors, net_ref, grid=s.grid)}
    fresh = sorted(set(net_ref) - set(net))
    if fresh:   # only these leave the jit: XLA drops the rest of the init
        net |= jax.jit(lambda k: {n: wm.init(k)["net"]["params"][n] for n in fresh})(key)
    ae = os.path.join(path, "ae.safetensors")
    if not os.path.exists(ae):
        raise FileNotFoundError(f"BAGEL checkpoint directory {path!r} has no ae.safetensors (the FLUX VAE)")
    vae = flux_vae.convert(load_file(ae), shapes["vae"]["params"])
    stats = jax.jit(lambda k: wm.init(k)["stats"])(key)
    params = {"net": {"params": net}, "vae": {"params": vae}, "stats": stats}
    return jax.tree.map(jnp.asarray, params), fresh


def read_checkpoint(path: str) -> dict[str, np.ndarray]:
    """Every tensor of <path>/*.safetensors except the VAE's ae.safetensors."""
    return read_safetensors(path, "BAGEL", skip=r"ae\.safetensors$")
