"""pi0.5 checkpoints -> Policy parameters and config.policy sizes.

The Policy (models/policy.py) has pi0.5's structure: a SigLIP ViT with PaliGemma's linear projector, a
Gemma prefix transformer, and a Gemma action expert of the same depth in joint attention, conditioned on
the flow time through adaptive RMSNorms. Two layouts of the same tensors load:
- Hugging Face transformers' PI05ForConditionalGeneration (`model.vlm.*`, `model.dit.*`,
  `embed_action_time.*`, `action_out_proj`), as `save_pretrained` writes it;
- the LeRobot export (`paligemma_with_expert.paligemma.model.*`, `paligemma_with_expert.gemma_expert.model.*`,
  `action_in_proj`, `time_mlp_in/out`, `action_out_proj`, under a `model.` root in LeRobot's own policy
  files), renamed the way transformers' own conversion table for pi0/pi0.5 renames it. transformers'
  `save_pretrained` also writes pi0.5 in this layout.
- openpi's own release (`<checkpoint>/params`: an orbax PyTree of its JAX model, layers stacked on a
  leading axis: PaliGemma/llm/layers/attn/q_einsum/w [L, N, D, H], ...; the action expert's weights
  carry a `_1` suffix), read with orbax and mapped by what each einsum computes; its sizes come from
  the arrays' shapes (the chunk length is not stored: the config's chunk_size stays).
Every tensor of the checkpoint must land in a parameter, and every parameter except the value head
(the RL critic, which pi0.5 does not have) must come from the checkpoint: a missing, unexpected or
wrongly shaped tensor is refused in one line naming it. Torch Linear weights [out, in] become Flax
kernels [in, out]; weights are read with safetensors.numpy, so no PyTorch is needed.
"""
from __future__ import annotations

import json
import os
import re

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from vlambpo_jax.models.safetensors_dir import check_params, read_safetensors
from vlambpo_jax.models.siglip_import import TensorSource, siglip_tower

# Known sizes of the LeRobot config's variant names (PaliGemma's Gemma 2B, the 300M action expert).
_GEMMA_VARIANTS = {
    "gemma_2b": dict(width=2048, depth=18, mlp=16384, heads=8, kv_heads=1, head_dim=256),
    "gemma_300m": dict(width=1024, depth=18, mlp=4096, heads=8, kv_heads=1, head_dim=256),
}
_SIGLIP_SO400M_224 = dict(vit_patch=14, vit_width=1152, vit_depth=27, vit_heads=16, vit_mlp=4304, image_size=224)
PALIGEMMA_VOCAB = 257152   # the tokenizer's vocabulary (the <image> placeholder id is one past it)

# LeRobot names -> transformers names (the prefixes transformers' pi0 conversion table renames), and
# the tensors neither layout's model uses (tied or unused language-model heads).
_LEROBOT_ROOT = re.compile(r"^model\.(paligemma_with_expert|action_in_proj|action_out_proj|time_mlp_in|time_mlp_out)\.")
_RENAMES = [
    (r"^paligemma_with_expert\.paligemma\.model\.", "model.vlm."),
    (r"^paligemma_with_expert\.gemma_expert\.model\.", "model.dit."),
    (r"^(action_in_proj|time_mlp_in|time_mlp_out)\.", r"embed_action_time.\1."),
    (r"\.vision_tower\.vision_model\.", ".vision_tower."),
    (r"\.language_model\.model\.", ".language_model."),
]
_PREFIX_LM_HEAD = "paligemma_with_expert.paligemma.lm_head.weight"
_UNUSED = re.compile(r"^(paligemma_with_expert\.(paligemma|gemma_expert)\.lm_head\."
                     r"|model\.dit\.embed_tokens\.|lm_head\.)")


# LeRobot writes its pre/post-processors' normalization statistics beside the weights
# (policy_preprocessor_step_N_normalizer_processor.safetensors): not model tensors.
_PROCESSOR_FILES = r"policy_(pre|post)processor"


def read_tensors(path: str) -> dict[str, np.ndarray]:
    """All model tensors of <path>/*.safetensors, float32."""
    return {k: np.asarray(v, np.float32)
            for k, v in read_safetensors(path, "pi0.5", skip=_PROCESSOR_FILES).items()}


def canonical_names(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """LeRobot or transformers names -> transformers names. Unused language-model heads are dropped,
    except a LeRobot export's prefix lm_head where it stores no embedding (the two are tied)."""
    named = {_LEROBOT_ROOT.sub(r"\1.", k): v for k, v in tensors.items()}
    has_embedding = any("language_model" in k and "embed_tokens" in k for k in named)
    out = {}
    for name, value in named.items():
        if name == _PREFIX_LM_HEAD and not has_embedding:
            name = "model.vlm.language_model.embed_tokens.weight"
        elif _UNUSED.match(name):
            continue
        for pattern, repl in _RENAMES:
            name = re.sub(pattern, repl, name)
        out[name] = value
    return out


def is_openpi_checkpoint(path: str) -> bool:
    """An openpi checkpoint directory (local or gs://): its params/ is an orbax PyTree."""
    return (epath.Path(path) / "params" / "_METADATA").exists()


def is_pi05_checkpoint(path: str) -> bool:
    """A directory with a config.json of model type pi05 (transformers' or LeRobot's), or an openpi
    pi0.5 checkpoint (the time MLP of pi0.5's adaRMS, no state projection: pi0's)."""
    if is_openpi_checkpoint(path):
        try:
            shapes = openpi_shapes(path)
        except (KeyError, TypeError):     # an orbax tree of another kind (e.g. one of our own step dirs)
            return False
        return "time_mlp_in/kernel" in shapes and "state_proj/kernel" not in shapes
    cfg_file = os.path.join(path, "config.json")
    if not os.path.isfile(cfg_file):
        return False
    with open(cfg_file) as f:
        hf = json.load(f)
    return (hf.get("model_type") or hf.get("type")) == "pi05"


def policy_sizes(path: str) -> dict:
    """<path>/config.json (transformers PI05Config, or a LeRobot pi05 config) -> the config values the
    Policy needs: {'policy': {...}, 'chunk_size', 'image_size'}. An openpi checkpoint's sizes come from
    its arrays' shapes; its chunk_size is None (not stored)."""
    if is_openpi_checkpoint(path):
        return _sizes_from_openpi(openpi_shapes(path))
    cfg_file = os.path.join(path, "config.json")
    if not os.path.exists(cfg_file):
        raise FileNotFoundError(f"no config.json in pi0.5 checkpoint directory {path!r}")
    hf = json.load(open(cfg_file))
    kind = hf.get("model_type") or hf.get("type")
    if kind != "pi05":
        raise ValueError(f"{cfg_file}: model type {kind!r} is not pi05")
    if "vlm_config" in hf:
        return _sizes_from_transformers(hf, cfg_file)
    try:   # LeRobot: named variants
        prefix = _GEMMA_VARIANTS[hf.get("paligemma_variant", "gemma_2b")]
        expert = _GEMMA_VARIANTS[hf.get("action_expert_variant", "gemma_300m")]
    except KeyError as e:
        raise ValueError(f"{cfg_file}: unknown Gemma variant {e.args[0]!r} "
                         f"(known: {sorted(_GEMMA_VARIANTS)})") from None
    return _sizes(prefix, expert, _SIGLIP_SO400M_224, 10_000.0, int(hf.get("max_action_dim", 32)),
                  int(hf.get("chunk_size", 50)))


def full_size() -> dict:
    """The sizes of the released pi0.5 checkpoints (pi05_base, _libero, _droid): PaliGemma (SigLIP
    So400m/14 at 224 px + Gemma 2B), the Gemma 300M action expert, 50 x 32 action chunks."""
    return _sizes(_GEMMA_VARIANTS["gemma_2b"], _GEMMA_VARIANTS["gemma_300m"], _SIGLIP_SO400M_224, 10_000.0, 32, 50)


def _sizes_from_transformers(hf: dict, cfg_file: str) -> dict:
    text, vision, dit = hf["vlm_config"]["text_config"], hf["vlm_config"]["vision_config"], hf["dit_config"]
    for name, sub in (("text_config", text), ("dit_config", dit), ("vision_config", vision)):
        act = sub.get("hidden_act") or sub.get("hidden_activation") or "gelu_pytorch_tanh"
        if act != "gelu_pytorch_tanh":
            raise ValueError(f"{cfg_file}: {name}.hidden_act {act!r}; only gelu_pytorch_tanh is supported")
    for key in ("num_attention_heads", "num_key_value_heads", "head_dim", "num_hidden_layers"):
        if dit.get(key) != text.get(key):
            raise ValueError(f"{cfg_file}: dit_config.{key}={dit.get(key)} differs from the prefix's "
                             f"{text.get(key)} (joint attention needs them equal)")
    prefix = dict(width=text["hidden_size"], depth=text["num_hidden_layers"], mlp=text["intermediate_size"],
                  heads=text["num_attention_heads"], kv_heads=text["num_key_value_heads"], head_dim=text["head_dim"])
    expert = dict(width=dit["hidden_size"], mlp=dit["intermediate_size"])
    vit = dict(vit_patch=vision["patch_size"], vit_width=vision["hidden_size"], vit_depth=vision["num_hidden_layers"],
               vit_heads=vision["num_attention_heads"], vit_mlp=vision["intermediate_size"],
               image_size=vision["image_size"])
    theta = float((text.get("rope_parameters") or {}).get("rope_theta", text.get("rope_theta", 10_000.0)))
    return _sizes(prefix, expert, vit, theta, int(hf.get("max_action_dim", 32)), int(hf.get("chunk_size", 50)))


def _sizes(prefix: dict, expert: dict, vit: dict, theta: float, action_pad: int, chunk: int) -> dict:
    policy = dict(
        vit_patch=vit["vit_patch"], vit_width=vit["vit_width"], vit_depth=vit["vit_depth"],
        vit_heads=vit["vit_heads"], vit_mlp=vit["vit_mlp"], vit_stem="patch",
        width=prefix["width"], depth=prefix["depth"], num_heads=prefix["heads"], num_kv_heads=prefix["kv_heads"],
        head_dim=prefix["head_dim"], mlp_dim=prefix["mlp"], rope_theta=theta,
        expert_width=expert["width"], expert_depth=prefix["depth"], expert_mlp_dim=expert["mlp"],
        action_pad_dim=action_pad, use_state=False, perception_dim=0)
    return {"policy": policy, "chunk_size": chunk, "image_size": vit["image_size"]}


def _gemma_layer(src: TensorSource, p: str, heads: int, kv_heads: int, head_dim: int, adaptive: bool) -> dict:
    """One Gemma decoder layer `p` (prefix, or the action expert with adaptive norms) -> a Block."""
    k = src.linear(p + "self_attn.k_proj", out_shape=(kv_heads, head_dim))["kernel"]
    v = src.linear(p + "self_attn.v_proj", out_shape=(kv_heads, head_dim))["kernel"]
    layer = {
        "q_proj": src.linear(p + "self_attn.q_proj", out_shape=(heads, head_dim)),
        "kv_proj": {"kernel": np.stack([k, v], axis=1)},
        "o_proj": src.linear(p + "self_attn.o_proj", in_shape=(heads, head_dim)),
        "mlp": {"gate": src.linear(p + "mlp.gate_proj"), "up": src.linear(p + "mlp.up_proj"),
                "down": src.linear(p + "mlp.down_proj")},
    }
    for ours, theirs in (("attn_norm", "input_layernorm"), ("mlp_norm", "post_attention_layernorm")):
        layer[ours] = ({"modulation": src.linear(p + theirs + ".dense", bias=True)} if adaptive
                       else {"scale": src.take(p + theirs + ".weight")})
    return layer


def convert_pi05(tensors: dict[str, np.ndarray], init_params: dict) -> dict:
    """Checkpoint tensors (either layout) -> Policy params {'vlm', 'action_expert', 'value_head'} shaped
    like `init_params` (a Policy.init result, or its jax.eval_shape, for the same sizes); the value head
    is taken from init_params."""
    src = TensorSource(canonical_names(tensors), "pi0.5")
    ours = init_params
    d = ours["vlm"]["blocks_0"]["q_proj"]["kernel"].shape        # [W, H, D]
    heads, head_dim = d[1], d[2]
    kv_heads = ours["vlm"]["blocks_0"]["kv_proj"]["kernel"].shape[2]
    depth = sum(1 for k in ours["vlm"] if k.startswith("blocks_"))
    vit_heads = ours["vlm"]["vit"]["block_0"]["attn"]["query"]["kernel"].shape[1]
    vit_depth = sum(1 for k in ours["vlm"]["vit"] if k.startswith("block_"))
    vit = siglip_tower(src, "model.vlm.vision_tower.", vit_depth, vit_heads)
    vit["projector"] = src.linear("model.vlm.multi_modal_projector.linear", bias=True)
    vlm = {"vit": vit,
           "embed": {"embedding": src.take("model.vlm.language_model.embed_tokens.weight")},
           "final_norm": {"scale": src.take("model.vlm.language_model.norm.weight")}}
    expert = {"final_norm": {"modulation": src.linear("model.dit.norm.dense", bias=True)},
              "action_in": src.linear("embed_action_time.action_in_proj", bias=True),
              "time_in": src.linear("embed_action_time.time_mlp_in", bias=True),
              "time_out": src.linear("embed_action_time.time_mlp_out", bias=True),
              "action_out": src.linear("action_out_proj", bias=True)}
    for i in range(depth):
        vlm[f"blocks_{i}"] = _gemma_layer(src, f"model.vlm.language_model.layers.{i}.", heads, kv_heads,
                                          head_dim, adaptive=False)
        expert[f"blocks_{i}"] = _gemma_layer(src, f"model.dit.layers.{i}.", heads, kv_heads, head_dim,
                                             adaptive=True)
    if src.tensors:
        raise ValueError(f"pi0.5 checkpoint has {len(src.tensors)} unexpected tensor(s), e.g. "
                         f"{sorted(src.tensors)[0]!r} (not a tensor of this model's sizes)")
    params = {"vlm": vlm, "action_expert": expert, "value_head": ours["value_head"]}
    check_params(params, ours, "pi0.5")
    return params


def load_pi05(path: str, init_params: dict) -> dict:
    """Checkpoint directory (safetensors or openpi) -> Policy params (see convert_pi05, convert_openpi)."""
    if is_openpi_checkpoint(path):
        return convert_openpi(read_openpi(path), init_params)
    return convert_pi05(read_tensors(path), init_params)


# ---------------------------------------------------------------------------- openpi's orbax release
def _openpi_tree(path: str):
    """(checkpointer, the params tree's metadata) of <path>/params; openpi saves {'params': params},
    where the leaves may sit under a trailing 'value' key (flax nnx State)."""
    ckptr = ocp.PyTreeCheckpointer()
    meta = ckptr.metadata(os.path.join(str(path), "params"))
    return ckptr, getattr(getattr(meta, "item_metadata", None), "tree", meta)


def _flat(tree) -> dict:
    """{'a/b/c': leaf} of the 'params' subtree, a trailing '/value' dropped."""
    out = {}
    for keys, leaf in jax.tree_util.tree_leaves_with_path(tree["params"]):
        name = "/".join(str(getattr(k, "key", k)) for k in keys)
        out[name[: -len("/value")] if name.endswith("/value") else name] = leaf
    return out


def openpi_shapes(path: str) -> dict[str, tuple]:
    """The shapes of an openpi checkpoint's arrays by flattened name, read from its metadata only."""
    return {k: tuple(v.shape) for k, v in _flat(_openpi_tree(path)[1]).items()}


def read_openpi(path: str) -> dict[str, np.ndarray]:
    """Every array of <path>/params, float32 numpy, by flattened name (PaliGemma/llm/..., action_in_proj/...)."""
    ckptr, tree = _openpi_tree(path)
    args = jax.tree.map(lambda _: ocp.ArrayRestoreArgs(restore_type=np.ndarray, dtype=np.float32), tree)
    restored = ckptr.restore(os.path.join(str(path), "params"), ocp.args.PyTreeRestore(item=tree, restore_args=args))
    return {k: np.asarray(v, np.float32) for k, v in _flat(restored).items()}


_LLM, _IMG = "PaliGemma/llm/", "PaliGemma/img/"


def _sizes_from_openpi(shapes: dict[str, tuple]) -> dict:
    try:
        depth, heads, width, head_dim = shapes[_LLM + "layers/attn/q_einsum/w"]
        kv_heads = shapes[_LLM + "layers/attn/kv_einsum/w"][2]
        patch, _, _, vit_width = shapes[_IMG + "embedding/kernel"]
        query = _IMG + "Transformer/encoderblock/MultiHeadDotProductAttention_0/query/kernel"
        vit_depth, _, vit_heads, _ = shapes[query]
        prefix = dict(width=width, depth=depth, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                      mlp=shapes[_LLM + "layers/mlp/linear"][1])
        expert = dict(width=shapes[_LLM + "layers/attn/q_einsum_1/w"][2], mlp=shapes[_LLM + "layers/mlp_1/linear"][1])
        vit = dict(vit_patch=patch, vit_width=vit_width, vit_depth=vit_depth, vit_heads=vit_heads,
                   vit_mlp=shapes[_IMG + "Transformer/encoderblock/MlpBlock_0/Dense_0/kernel"][2],
                   image_size=patch * int(round(shapes[_IMG + "pos_embedding"][1] ** 0.5)))
        action_pad = shapes["action_in_proj/kernel"][0]
    except KeyError as e:
        raise KeyError(f"openpi checkpoint lacks array {e.args[0]!r} (not a pi0.5 checkpoint?)") from None
    return _sizes(prefix, expert, vit, 10_000.0, action_pad, None)


class _Stacked:
    """An openpi checkpoint's arrays, each taken once (layer i of the stacked ones)."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.arrays, self.used = dict(arrays), set()

    def __call__(self, name: str, layer: int | None = None) -> np.ndarray:
        if name not in self.arrays:
            raise KeyError(f"openpi checkpoint lacks array {name!r}")
        self.used.add(name)
        return self.arrays[name] if layer is None else self.arrays[name][layer]

    def dense(self, name: str, layer: int | None = None) -> dict:
        return {"kernel": self(name + "/kernel", layer), "bias": self(name + "/bias", layer)}


def _openpi_layer(src: _Stacked, i: int, suffix: str) -> dict:
    """Layer i of one expert ('' the prefix, '_1' the action expert with adaRMS) -> a Block. openpi's
    einsums: q = x.q_einsum [N, D, H], (k, v) = x.kv_einsum [2, K, D, H], out = attn.attn_vec_einsum
    [N, H, D], gate/up = x.gating_einsum [2, D, F], down = h.linear [F, D]."""
    a, m = _LLM + "layers/attn/", _LLM + f"layers/mlp{suffix}/"
    kv = src(a + f"kv_einsum{suffix}/w", i)
    gating = src(m + "gating_einsum", i)
    layer = {"q_proj": {"kernel": src(a + f"q_einsum{suffix}/w", i).transpose(1, 0, 2)},
             "kv_proj": {"kernel": kv.transpose(2, 0, 1, 3)},
             "o_proj": {"kernel": src(a + f"attn_vec_einsum{suffix}/w", i)},
             "mlp": {"gate": {"kernel": gating[0]}, "up": {"kernel": gating[1]},
                     "down": {"kernel": src(m + "linear", i)}}}
    for ours, theirs in (("attn_norm", "pre_attention_norm"), ("mlp_norm", "pre_ffw_norm")):
        norm = _LLM + f"layers/{theirs}{suffix}/"
        layer[ours] = ({"modulation": src.dense(norm + "Dense_0", i)} if suffix else {"scale": src(norm + "scale", i)})
    return layer


def convert_openpi(arrays: dict[str, np.ndarray], init_params: dict) -> dict:
    """openpi's flattened pi0.5 params -> Policy params shaped like `init_params` (value head from it)."""
    src = _Stacked(arrays)
    ours = init_params
    depth = sum(1 for k in ours["vlm"] if k.startswith("blocks_"))
    vit_depth = sum(1 for k in ours["vlm"]["vit"] if k.startswith("block_"))
    enc = _IMG + "Transformer/encoderblock/"
    ln = lambda name, i=None: {"scale": src(name + "/scale", i), "bias": src(name + "/bias", i)}  # noqa: E731
    kernel = src(_IMG + "embedding/kernel")                                             # [p, p, C, W]
    vit = {"patch_embed": {"kernel": kernel.reshape(-1, kernel.shape[-1]), "bias": src(_IMG + "embedding/bias")},
           "pos_embed": src(_IMG + "pos_embedding"),
           "ln_final": ln(_IMG + "Transformer/encoder_norm"), "projector": src.dense(_IMG + "head")}
    attn = enc + "MultiHeadDotProductAttention_0/"
    for i in range(vit_depth):
        vit[f"block_{i}"] = {
            "ln_attn": ln(enc + "LayerNorm_0", i), "ln_mlp": ln(enc + "LayerNorm_1", i),
            "attn": {name: src.dense(attn + name, i) for name in ("query", "key", "value", "out")},
            "mlp_in": src.dense(enc + "MlpBlock_0/Dense_0", i), "mlp_out": src.dense(enc + "MlpBlock_0/Dense_1", i)}
    vlm = {"vit": vit, "embed": {"embedding": src(_LLM + "embedder/input_embedding")},
           "final_norm": {"scale": src(_LLM + "final_norm/scale")}}
    expert = {"final_norm": {"modulation": src.dense(_LLM + "final_norm_1/Dense_0")},
              **{ours_name: src.dense(theirs) for ours_name, theirs in (
                  ("action_in", "action_in_proj"), ("time_in", "time_mlp_in"), ("time_out", "time_mlp_out"),
                  ("action_out", "action_out_proj"))}}
    for i in range(depth):
        vlm[f"blocks_{i}"] = _openpi_layer(src, i, "")
        expert[f"blocks_{i}"] = _openpi_layer(src, i, "_1")
    left = sorted(set(src.arrays) - src.used)
    if left:
        raise ValueError(f"openpi checkpoint has {len(left)} unexpected array(s), e.g. {left[0]!r}")
    stacked = {name: a.shape[0] for name, a in src.arrays.items() if "/layers/" in name or "encoderblock" in name}
    bad = next((n for n, d in stacked.items() if d != (vit_depth if "encoderblock" in n else depth)), None)
    if bad:
        raise ValueError(f"openpi checkpoint array {bad!r} stacks {stacked[bad]} layers; the config's Policy has "
                         f"{vit_depth if 'encoderblock' in bad else depth}")
    params = {"vlm": vlm, "action_expert": expert, "value_head": ours["value_head"]}
    check_params(params, ours, "pi0.5")
    return params
