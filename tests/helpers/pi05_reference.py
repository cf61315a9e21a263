"""Tiny random pi0.5 checkpoints made with transformers' PI05 (the parity reference), a tiny word-level
tokenizer that writes pi0.5's prompts, and openpi-style normalization statistics, for the tests.
Needs torch and transformers (the test extra)."""
import json
from pathlib import Path

import numpy as np
import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers, processors


def tiny_config(vocab: int, image_token: int, image_size: int = 16, patch: int = 4, chunk: int = 5,
                action_pad: int = 8) -> "transformers.PI05Config":
    return transformers.PI05Config(
        vlm_config=dict(
            model_type="paligemma", projection_dim=64, image_token_id=image_token,
            text_config=dict(model_type="gemma", hidden_size=64, num_hidden_layers=2, intermediate_size=96,
                             num_attention_heads=4, num_key_value_heads=1, head_dim=16, vocab_size=vocab),
            vision_config=dict(model_type="siglip_vision_model", hidden_size=32, intermediate_size=48,
                               patch_size=patch, image_size=image_size, num_hidden_layers=2, num_attention_heads=2,
                               vision_use_head=False)),
        dit_config=dict(model_type="gemma", hidden_size=48, num_hidden_layers=2, intermediate_size=80,
                        num_attention_heads=4, num_key_value_heads=1, head_dim=16),
        chunk_size=chunk, max_action_dim=action_pad, num_inference_steps=3)


def save_random(config, path):
    """A random transformers PI05 saved to `path`; its norms and adaRMS layers (zero at init) and biases
    randomized, so a mis-mapped tensor shows."""
    torch.manual_seed(0)
    model = transformers.PI05ForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.2 * torch.randn_like(p))
    model.save_pretrained(path, safe_serialization=True)
    return model


def save_prompt_tokenizer(path, words=(), size: int = 300) -> "transformers.PreTrainedTokenizerFast":
    """A word-level tokenizer of exactly `size` ids that adds <bos> in front, as Gemma's does: the
    special tokens, pi0.5's prompt words and punctuation, the 256 state bins and `words`."""
    vocab = ["<pad>", "<unk>", "<bos>", "<eos>", "Task", "State", "Action", ":", ",", ";", "-", *words,
             *map(str, range(256))]
    vocab += [f"w{i}" for i in range(size - len(vocab))]
    raw = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="<pad>", unk_token="<unk>",
                                                bos_token="<bos>", eos_token="<eos>")
    fast.save_pretrained(str(path))
    return fast


def save_openpi_stats(path, asset_id: str, state_dim: int, action_dim: int, seed: int = 0) -> dict:
    """<path>/assets/<asset_id>/norm_stats.json in openpi's layout; returns the table."""
    rng = np.random.default_rng(seed)

    def entry(dim):
        q01 = rng.uniform(-1.0, 0.0, dim)
        q99 = q01 + rng.uniform(0.5, 1.5, dim)
        return {"mean": ((q01 + q99) / 2).tolist(), "std": ((q99 - q01) / 4).tolist(), "q01": q01.tolist(),
                "q99": q99.tolist()}

    table = {"norm_stats": {"state": entry(state_dim), "actions": entry(action_dim)}}
    out = Path(path) / "assets" / asset_id / "norm_stats.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(table))
    return table["norm_stats"]


def save_openpi_params(tensors: dict, path, heads: int, vit_heads: int, nnx_values: bool = True) -> None:
    """transformers-named torch tensors of a pi0.5 (pi05_import.canonical_names) -> <path>/params in the
    layout of openpi's JAX release: big_vision SigLIP and gemma.py einsum weights, every layer stacked on a
    leading axis, the action expert's under a '_1' suffix, saved with orbax as {'params': tree} (each
    leaf under 'value', as flax nnx State, when nnx_values). Written from torch's conventions: Linear
    weights are [out, in], and a projection to heads is head-major ([N * H, D] rows n * H + h)."""
    import orbax.checkpoint as ocp  # noqa: PLC0415

    t = {k: np.asarray(v, np.float32) for k, v in tensors.items()}
    llm, dit, vis = "model.vlm.language_model.", "model.dit.", "model.vlm.vision_tower."
    depth = 1 + max(int(k.split(".")[4]) for k in t if k.startswith(llm + "layers."))
    vit_depth = 1 + max(int(k.split(".")[5]) for k in t if k.startswith(vis + "encoder.layers."))

    def stack(fn, n):
        return np.stack([fn(i) for i in range(n)])

    def heads_in(w, n):                  # [n * h, d] -> [n, d, h]
        return w.reshape(n, -1, w.shape[1]).transpose(0, 2, 1)

    def expert(root, suffix, adaptive):
        layer = lambda i, name: t[f"{root}layers.{i}.{name}"]  # noqa: E731
        head_dim = layer(0, "self_attn.q_proj.weight").shape[0] // heads
        kv_heads = layer(0, "self_attn.k_proj.weight").shape[0] // head_dim
        proj = lambda i, x, n: heads_in(layer(i, f"self_attn.{x}_proj.weight"), n)  # noqa: E731
        out = {
            f"attn/q_einsum{suffix}/w": stack(lambda i: proj(i, "q", heads), depth),
            f"attn/kv_einsum{suffix}/w": stack(lambda i: np.stack([proj(i, x, kv_heads) for x in "kv"]), depth),
            f"attn/attn_vec_einsum{suffix}/w": stack(lambda i: layer(i, "self_attn.o_proj.weight").T.reshape(
                heads, -1, layer(i, "self_attn.o_proj.weight").shape[0]), depth),
            f"mlp{suffix}/gating_einsum": stack(lambda i: np.stack([layer(i, "mlp.gate_proj.weight").T,
                                                                    layer(i, "mlp.up_proj.weight").T]), depth),
            f"mlp{suffix}/linear": stack(lambda i: layer(i, "mlp.down_proj.weight").T, depth)}
        for norm, theirs in (("pre_attention_norm", "input_layernorm"), ("pre_ffw_norm", "post_attention_layernorm")):
            if adaptive:
                out[f"{norm}{suffix}/Dense_0/kernel"] = stack(lambda i: layer(i, theirs + ".dense.weight").T, depth)
                out[f"{norm}{suffix}/Dense_0/bias"] = stack(lambda i: layer(i, theirs + ".dense.bias"), depth)
            else:
                out[f"{norm}/scale"] = stack(lambda i: layer(i, theirs + ".weight"), depth)
        return {"layers/" + k: v for k, v in out.items()}

    flat = {f"PaliGemma/llm/{k}": v for k, v in {**expert(llm, "", False), **expert(dit, "_1", True)}.items()}
    flat["PaliGemma/llm/embedder/input_embedding"] = t[llm + "embed_tokens.weight"]
    flat["PaliGemma/llm/final_norm/scale"] = t[llm + "norm.weight"]
    flat["PaliGemma/llm/final_norm_1/Dense_0/kernel"] = t[dit + "norm.dense.weight"].T
    flat["PaliGemma/llm/final_norm_1/Dense_0/bias"] = t[dit + "norm.dense.bias"]
    conv = t[vis + "embeddings.patch_embedding.weight"]                       # [W, C, p, p]
    width = conv.shape[0]
    img = {"embedding/kernel": conv.transpose(2, 3, 1, 0),
           "embedding/bias": t[vis + "embeddings.patch_embedding.bias"],
           "pos_embedding": t[vis + "embeddings.position_embedding.weight"][None],
           "Transformer/encoder_norm/scale": t[vis + "post_layernorm.weight"],
           "Transformer/encoder_norm/bias": t[vis + "post_layernorm.bias"],
           "head/kernel": t["model.vlm.multi_modal_projector.linear.weight"].T,
           "head/bias": t["model.vlm.multi_modal_projector.linear.bias"]}
    block = lambda i, name: t[f"{vis}encoder.layers.{i}.{name}"]  # noqa: E731
    enc = "Transformer/encoderblock/"
    for ours, theirs in (("LayerNorm_0", "layer_norm1"), ("LayerNorm_1", "layer_norm2"),
                         ("MlpBlock_0/Dense_0", "mlp.fc1"), ("MlpBlock_0/Dense_1", "mlp.fc2")):
        dense = "Dense" in ours
        weight = lambda i, n=theirs, dense=dense: block(i, n + ".weight").T if dense else block(i, n + ".weight")  # noqa: E731
        img[enc + ours + ("/kernel" if dense else "/scale")] = stack(weight, vit_depth)
        img[enc + ours + "/bias"] = stack(lambda i, n=theirs: block(i, n + ".bias"), vit_depth)
    mha = enc + "MultiHeadDotProductAttention_0/"
    for ours, theirs in (("query", "q_proj"), ("key", "k_proj"), ("value", "v_proj")):
        img[mha + ours + "/kernel"] = stack(lambda i, n=theirs: block(i, f"self_attn.{n}.weight").T.reshape(
            width, vit_heads, -1), vit_depth)
        img[mha + ours + "/bias"] = stack(lambda i, n=theirs: block(i, f"self_attn.{n}.bias").reshape(vit_heads, -1),
                                          vit_depth)
    img[mha + "out/kernel"] = stack(lambda i: block(i, "self_attn.out_proj.weight").T.reshape(vit_heads, -1, width),
                                    vit_depth)
    img[mha + "out/bias"] = stack(lambda i: block(i, "self_attn.out_proj.bias"), vit_depth)
    flat.update({f"PaliGemma/img/{k}": v for k, v in img.items()})
    for name, theirs in (("action_in_proj", "embed_action_time.action_in_proj"),
                         ("time_mlp_in", "embed_action_time.time_mlp_in"),
                         ("time_mlp_out", "embed_action_time.time_mlp_out"), ("action_out_proj", "action_out_proj")):
        flat[f"{name}/kernel"], flat[f"{name}/bias"] = t[theirs + ".weight"].T, t[theirs + ".bias"]

    tree: dict = {}
    for name, value in flat.items():
        node = tree
        *parents, leaf = name.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = {"value": value} if nnx_values else value
    ocp.PyTreeCheckpointer().save(str(Path(path) / "params"), {"params": tree})
