"""torch-named checkpoint tensors -> Flax params: a tensor source that refuses by name, and SigLIP's
vision tower (transformers' layout, as PaliGemma/pi0.5 and BAGEL store it) -> models/vit.ViT params."""
from __future__ import annotations

import numpy as np


class TensorSource:
    """A checkpoint's tensors, each taken once: a missing or misfitting one is refused by name, and
    whatever is left in `tensors` at the end is unexpected. `what` names the checkpoint in errors."""

    def __init__(self, tensors: dict[str, np.ndarray], what: str):
        self.tensors, self.what = dict(tensors), what

    def take(self, name: str) -> np.ndarray:
        if name not in self.tensors:
            raise KeyError(f"{self.what} checkpoint lacks tensor {name!r}")
        return self.tensors.pop(name)

    def linear(self, name: str, in_shape: tuple = (), out_shape: tuple = (), bias: bool = False) -> dict:
        """torch Linear `name` [out, in] -> {'kernel': [*in_shape or in, *out_shape or out], 'bias'}."""
        w = self.take(name + ".weight").T
        shape = tuple(in_shape or w.shape[:1]) + tuple(out_shape or w.shape[1:])
        if w.size != np.prod(shape):
            raise ValueError(f"{self.what} checkpoint tensor {name + '.weight'!r} has shape {w.T.shape}, "
                             f"which does not fit the config's {shape}")
        out = {"kernel": w.reshape(shape)}
        if bias:
            out["bias"] = self.take(name + ".bias").reshape(tuple(out_shape or w.shape[1:]))
        return out

    def norm(self, name: str) -> dict:
        """LayerNorm `name` -> {'scale', 'bias'}."""
        return {"scale": self.take(name + ".weight"), "bias": self.take(name + ".bias")}


def siglip_tower(src: TensorSource, p: str, depth: int, heads: int, positions: np.ndarray | None = None) -> dict:
    """SigLIP `p` (e.g. '...vision_tower.') -> ViT params without the projector: the patch embedding (a
    conv [W, C, p, p], or BAGEL's Linear [W, p * p * C] over (row, column, channel) patches), the position
    table (rows `positions` of it: BAGEL's NaViT table is indexed row * max_side + column; None: all), the
    pre-LN blocks and the final LayerNorm (post_layernorm)."""
    patch = src.take(p + "embeddings.patch_embedding.weight")
    width = patch.shape[0]
    kernel = patch.transpose(2, 3, 1, 0).reshape(-1, width) if patch.ndim == 4 else patch.T
    table = src.take(p + "embeddings.position_embedding.weight")
    vit = {"patch_embed": {"kernel": kernel, "bias": src.take(p + "embeddings.patch_embedding.bias")},
           "pos_embed": (table if positions is None else table[positions])[None]}
    head_dim = width // heads
    for i in range(depth):
        q = f"{p}encoder.layers.{i}."
        vit[f"block_{i}"] = {
            "ln_attn": src.norm(q + "layer_norm1"), "ln_mlp": src.norm(q + "layer_norm2"),
            "attn": {name: src.linear(q + f"self_attn.{name[0]}_proj", out_shape=(heads, head_dim), bias=True)
                     for name in ("query", "key", "value")}
            | {"out": src.linear(q + "self_attn.out_proj", in_shape=(heads, head_dim), bias=True)},
            "mlp_in": src.linear(q + "mlp.fc1", bias=True), "mlp_out": src.linear(q + "mlp.fc2", bias=True)}
    vit["ln_final"] = src.norm(p + "post_layernorm")
    return vit
