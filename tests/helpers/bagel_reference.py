"""Tiny BAGEL-7B-MoT stand-ins built from public implementations (transformers, diffusers), in the
release's tensor names, and a reference forward assembled by hand from their submodules.

- The MoT language model: transformers' Qwen3 with q/k/v biases and a zero o_proj bias is a Qwen2
  decoder with per-head q/k RMSNorms before RoPE, BAGEL's expert. Two random ones are the understanding
  and the generation expert (`language_model.*`, the second's under `_moe_gen`; embedding and lm_head
  shared).
- The vision encoder: transformers' SiglipVisionModel (patch embedding stored as a Linear, a NaViT
  position table of max_side x max_side rows) and the connector, two torch Linears (`vit_model.*`,
  `connector.*`).
- The FLUX VAE: diffusers' AutoencoderKL with FLUX's settings, in black-forest-labs' names (the
  inverse of diffusers' own converter of that layout).
Only torch, transformers and diffusers compute here; nothing of vlambpo_jax.
"""
from __future__ import annotations

import re

import numpy as np
import torch
import transformers
from transformers.models.qwen3.modeling_qwen3 import apply_rotary_pos_emb


def _perturb(model: torch.nn.Module) -> None:
    """Norm scales and biases start at 1 / 0: move them so a wrong mapping shows."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "o_proj.bias" in name:
                p.zero_()                                        # BAGEL's o_proj has no bias
            elif "norm" in name or name.endswith("bias"):
                p.add_(0.2 * torch.randn_like(p))


def qwen3(sizes: dict, seed: int):
    torch.manual_seed(seed)
    model = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(**sizes)).eval()
    _perturb(model)
    return model


def experts(sizes: dict):
    """-> (und, gen, tensors): two Qwen3 experts sharing embedding and lm_head, and their
    `language_model.*` tensors in BAGEL's names."""
    und, gen = qwen3(sizes, 0), qwen3(sizes, 1)
    with torch.no_grad():
        gen.model.embed_tokens.weight.copy_(und.model.embed_tokens.weight)
        gen.lm_head.weight.copy_(und.lm_head.weight)
    tensors = {}
    for model, suffix in ((und, ""), (gen, "_moe_gen")):
        for name, value in model.state_dict().items():
            if "o_proj.bias" in name:
                continue
            if name.startswith("model.layers."):
                layer, rest = name.split(".", 3)[2:]
                module, _, leaf = rest.rpartition(".")
                module = "mlp" + suffix + module[3:] if module.startswith("mlp.") else module + suffix
                name = f"model.layers.{layer}.{module}.{leaf}"
            elif name == "model.norm.weight":
                name = f"model.norm{suffix}.weight"
            elif suffix:
                continue                                         # shared: taken from the first
            tensors["language_model." + name] = value.numpy()
    return und, gen, tensors


def mot_forward(und, gen, x, routing, positions, mask):
    """The two experts' own submodules, each token through its expert's (`routing` int[T]: 0 und, 1
    gen), one joint attention with `mask` bool[T, T] and RoPE `positions` int[T].
    x [B, T, W] input embeddings -> the final hidden states after each token's expert's final norm."""
    models = (und, gen)
    c = und.config
    b, t, w = x.shape
    heads, kv, hd = c.num_attention_heads, c.num_key_value_heads, c.head_dim
    cos, sin = und.model.rotary_emb(x, torch.as_tensor(positions)[None])
    route = torch.as_tensor(routing)
    bias = torch.where(torch.as_tensor(mask), 0.0, -1e9)

    def per_token(fn):
        outs = [fn(m) for m in models]
        return torch.where(route.view(1, t, *[1] * (outs[0].ndim - 2)) == 1, outs[1], outs[0])

    for i in range(c.num_hidden_layers):
        layer = lambda m, i=i: m.model.layers[i]  # noqa: E731
        h = per_token(lambda m: layer(m).input_layernorm(x))
        q = per_token(lambda m: layer(m).self_attn.q_norm(layer(m).self_attn.q_proj(h).view(b, t, heads, hd)))
        k = per_token(lambda m: layer(m).self_attn.k_norm(layer(m).self_attn.k_proj(h).view(b, t, kv, hd)))
        v = per_token(lambda m: layer(m).self_attn.v_proj(h).view(b, t, kv, hd))
        q, k = apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
        k, v = k.repeat_interleave(heads // kv, dim=1), v.transpose(1, 2).repeat_interleave(heads // kv, dim=1)
        scores = q @ k.transpose(-1, -2) / hd ** 0.5 + bias
        o = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, heads * hd)
        x = x + per_token(lambda m: layer(m).self_attn.o_proj(o))
        x = x + per_token(lambda m: layer(m).mlp(layer(m).post_attention_layernorm(x)))
    return per_token(lambda m: m.model.norm(x))


def siglip_and_connector(hidden: int, out_width: int, patch: int, image_size: int, max_side: int, seed: int):
    """-> (siglip, fc1, fc2, tensors): a tiny SiglipVisionModel and connector, and their tensors in
    BAGEL's names (the position table has max_side ** 2 rows, the model's at row * max_side + column,
    the others junk that must not be read)."""
    torch.manual_seed(seed)
    cfg = transformers.SiglipVisionConfig(hidden_size=hidden, intermediate_size=48, num_hidden_layers=2,
                                          num_attention_heads=2, patch_size=patch, image_size=image_size,
                                          layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh", vision_use_head=False)
    siglip = transformers.SiglipVisionModel(cfg).eval()
    fc1, fc2 = torch.nn.Linear(hidden, out_width), torch.nn.Linear(out_width, out_width)
    _perturb(siglip)
    tensors = {"vit_model.vision_model." + k: v.numpy() for k, v in siglip.state_dict().items()
               if "position_ids" not in k}
    conv = tensors.pop("vit_model.vision_model.embeddings.patch_embedding.weight")       # [W, C, p, p]
    tensors["vit_model.vision_model.embeddings.patch_embedding.weight"] = conv.transpose(0, 2, 3, 1).reshape(hidden, -1)
    grid = image_size // patch
    table = np.random.default_rng(seed + 1).standard_normal((max_side ** 2, hidden)).astype(np.float32)
    rows = (np.arange(grid)[:, None] * max_side + np.arange(grid)[None, :]).reshape(-1)
    table[rows] = tensors["vit_model.vision_model.embeddings.position_embedding.weight"]
    tensors["vit_model.vision_model.embeddings.position_embedding.weight"] = table
    tensors |= {f"connector.{n}.{k}": v.detach().numpy() for n, m in (("fc1", fc1), ("fc2", fc2))
                for k, v in m.state_dict().items()}
    return siglip, fc1, fc2, tensors


def siglip_connector_forward(siglip, fc1, fc2, images: np.ndarray):
    """images float32[N, H, W, 3] in [-1, 1] -> connector output [N, n, out_width]."""
    h = siglip(pixel_values=torch.tensor(images).permute(0, 3, 1, 2)).last_hidden_state
    return fc2(torch.nn.functional.gelu(fc1(h), approximate="tanh"))


def flux_diffusers_kwargs(c) -> dict:
    """AutoencoderKL arguments for a models/flux_vae.FluxVAEConfig (read by attribute only)."""
    n = len(c.ch_mult)
    return dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
                up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=tuple(c.ch * m for m in c.ch_mult),
                layers_per_block=c.num_res_blocks, latent_channels=c.z_channels, norm_num_groups=c.groups,
                use_quant_conv=False, use_post_quant_conv=False, scaling_factor=c.scale, shift_factor=c.shift)


def bfl_names(state: dict, levels: int) -> dict:
    """diffusers names -> black-forest-labs' (the inverse of diffusers' converter; up levels reversed,
    attention projections as 1x1 convs)."""
    out = {}
    for name, value in state.items():
        value = value.numpy()
        name = re.sub(r"^(encoder|decoder)\.conv_norm_out", r"\1.norm_out", name)
        name = re.sub(r"down_blocks\.(\d+)\.resnets\.", r"down.\1.block.", name)
        name = re.sub(r"down_blocks\.(\d+)\.downsamplers\.0\.", r"down.\1.downsample.", name)
        name = re.sub(r"up_blocks\.(\d+)\.resnets\.", lambda m: f"up.{levels - 1 - int(m[1])}.block.", name)
        name = re.sub(r"up_blocks\.(\d+)\.upsamplers\.0\.", lambda m: f"up.{levels - 1 - int(m[1])}.upsample.", name)
        name = re.sub(r"mid_block\.resnets\.(\d)", lambda m: f"mid.block_{int(m[1]) + 1}", name)
        name = name.replace("conv_shortcut", "nin_shortcut").replace("mid_block.attentions.0", "mid.attn_1")
        attn = re.sub(r"\.(group_norm|to_q|to_k|to_v|to_out\.0)\.",
                      lambda m: "." + {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v",
                                       "to_out.0": "proj_out"}[m[1]] + ".", name)
        if attn != name and value.ndim == 2:
            value = value[:, :, None, None]
        out[attn] = value
    return out


def flux_vae(c, seed: int = 0):
    """-> (diffusers AutoencoderKL, its tensors in black-forest-labs' names) for FluxVAEConfig c."""
    import diffusers

    torch.manual_seed(seed)
    model = diffusers.AutoencoderKL(**flux_diffusers_kwargs(c)).eval()
    _perturb(model)
    return model, bfl_names(model.state_dict(), len(c.ch_mult))
