"""Imagined chunk transitions per second of the world model (both views + reward), and where time goes.

Usage: python benchmarks/world_model_throughput.py [--config=configs/tabletop.py[:ARG]] [--batch=64]
       [--repeats=3] [--out=wm_throughput.json] [--config.wm.view_decoding=independent ...]

Random weights (throughput does not depend on training). Measures, at the given batch:
  predict (IVD: context prefill + head denoising + clean copy + wrist denoising + VAE decode),
  reward (ViT + question), and the parts: predict with 1 sampling step (fixed cost), VAE decode.
FLOPs: backbone matmuls and attention counted analytically from the layout (every backbone call of the
sampling plan); ViT / VAE convolutions from XLA's cost analysis of those loop-free functions. Achieved
FLOP/s is compared with a matmul peak measured in the same process: square matmuls of growing size
(up to --peak_max_size) in the model's compute dtype (config.wm.dtype) at JAX's default matmul
precision, as the model's own matmuls run (TF32 on recent NVIDIA GPUs), the best of them. A small
matmul is bound by launch latency, not arithmetic (the first version timed 512^2 only and reported
146% of its "peak" on an H200). Writes one JSON file.
"""
from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import flags  # noqa: E402

from vlambpo_jax import cli  # noqa: E402
from vlambpo_jax.models.world_model import WorldModel  # noqa: E402


def timed(fn, *args, repeats=3):
    jax.block_until_ready(fn(*args))  # compile + warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - t)
    return best


def matmul_peak(dtype, max_size: int, repeats=5) -> dict:
    """Best FLOP/s of a chain of four dependent n x n matmuls (random inputs, `dtype`, default
    precision) over n = 256, 512, ... up to max_size -> {gflops, best_size, per_size {n: gflops},
    dtype, precision}."""
    per_size, n = {}, 256
    while n <= max_size:
        a = jax.random.normal(jax.random.key(n), (n, n), jnp.float32).astype(dtype) / np.sqrt(n)
        t = timed(jax.jit(lambda x: x @ x @ x @ x), a, repeats=repeats)
        per_size[n] = 3 * 2 * n ** 3 / t / 1e9
        n *= 2
    best = max(per_size, key=per_size.get)
    return {"gflops": per_size[best], "best_size": best, "per_size": per_size, "dtype": str(jnp.dtype(dtype)),
            "precision": str(jax.config.jax_default_matmul_precision or "default")}


def backbone_flops(spec, layout, text_len, batch):
    """Analytic FLOPs of every backbone call predict() makes (per batch)."""
    u = spec.umm
    per_token = 2 * (u.width * u.heads * u.head_dim + 2 * u.width * u.kv_heads * u.head_dim
                     + u.heads * u.head_dim * u.width + 3 * u.width * u.mlp)
    nb = 3 if spec.cfg_enabled else 1
    total, keys = 0.0, 0
    for op, names in layout.generation_plan():
        t = sum(layout.segment(n).length for n in names)
        calls = 1 if op == "prefill" else spec.num_sample_steps  # CFG branches: upper bound nb
        attn = 2 * 2 * t * (keys + t) * u.heads * u.head_dim
        total += calls * nb * batch * u.depth * (per_token * t + attn)
        total += calls * nb * batch * t * 2 * u.width * spec.patch_dim * (op == "generate")
        if op == "prefill":
            keys += t
    return total


def xla_flops(fn, *args):
    try:
        ca = jax.jit(fn).lower(*args).compile().cost_analysis()
        ca = ca[0] if isinstance(ca, (list, tuple)) else ca
        return float(ca.get("flops", 0.0))
    except Exception:  # noqa: BLE001
        return float("nan")


def _define(fv: flags.FlagValues) -> None:
    flags.DEFINE_integer("batch", 64, "transitions per call", flag_values=fv)
    flags.DEFINE_integer("repeats", 3, "timed calls", flag_values=fv)
    flags.DEFINE_integer("text_len", 0, "0 = config.data.max_text_len", flag_values=fv)
    flags.DEFINE_integer("peak_max_size", 0, "largest matmul of the peak probe (0: 2048 on CPU, 8192 on "
                         "accelerators)", flag_values=fv)
    flags.DEFINE_string("out", "wm_throughput.json", "the JSON file", flag_values=fv)


def main(argv: list[str]) -> None:
    a = cli.command_flags(argv, _define, workdir=False, default_config="configs/tabletop.py")
    config = cli.checked(a.config)
    b = a.batch
    L = a.text_len or int(config.data.get("max_text_len", 32))
    wm = WorldModel(config)
    s = wm.spec
    params = wm.init(jax.random.key(0))
    rng = np.random.default_rng(0)
    S = config.image_size
    images = jnp.asarray(rng.integers(0, 256, (b, 2, S, S, 3), dtype=np.uint8))
    tokens = jnp.asarray(rng.integers(3, 259, (b, L)).astype(np.int32))
    mask = jnp.ones((b, L), bool)
    actions = jnp.asarray(rng.uniform(-1, 1, (b, s.chunk, s.action_dim)).astype(np.float32))
    key = jax.random.key(1)

    max_size = a.peak_max_size or (2048 if jax.devices()[0].platform == "cpu" else 8192)
    peak = matmul_peak(jnp.dtype(config.wm.dtype), max_size)
    step = jax.jit(lambda p, k: (wm.predict(p, images, tokens, mask, actions, k),))
    t_predict = timed(step, params, key, repeats=a.repeats)
    t_reward = timed(jax.jit(lambda p: wm.reward(p, images, tokens, mask)), params, repeats=a.repeats)
    lat = jnp.zeros((b * 2, s.latent_tokens, s.patch_dim))
    t_decode = timed(jax.jit(lambda p: wm.decode_latents(p, lat)), params, repeats=a.repeats)
    import copy
    c1 = copy.deepcopy(config)
    c1.wm.num_sample_steps = 1
    wm1 = WorldModel(c1)
    t_one = timed(jax.jit(lambda p, k: wm1.predict(p, images, tokens, mask, actions, k)), params, key,
                  repeats=a.repeats)
    per_step = (t_predict - t_one) / max(s.num_sample_steps - 1, 1)

    layout = wm.dynamics_layout(L)
    f_backbone = backbone_flops(s, layout, L, b)
    f_decode = xla_flops(lambda p: wm.decode_latents(p, lat), params)
    f_encode = xla_flops(lambda p: wm.encode_latents(p, images.reshape(-1, S, S, 3)), params)
    from vlambpo_jax.models.world_model import WMNet
    f_vit = xla_flops(lambda p: wm.net.apply(p["net"], images.reshape(-1, S, S, 3), method=WMNet.vit_tokens),
                      params)
    f_reward = xla_flops(lambda p: wm.reward(p, images, tokens, mask), params)
    f_predict = f_backbone + f_decode + f_encode + f_vit
    total_t = t_predict + t_reward
    out = {
        "device": jax.devices()[0].device_kind, "config": cli.config_spec(["", *argv]) or "configs/tabletop.py",
        "overrides": [x for x in argv if x.startswith("--config.")], "batch": b, "text_len": L,
        "view_decoding": s.view_decoding, "action_encoding": s.action_encoding,
        "num_sample_steps": s.num_sample_steps, "cfg": s.cfg_enabled,
        "sequence_tokens": layout.length,
        "transitions_per_s": b / total_t,
        "seconds": {"predict": t_predict, "reward": t_reward, "predict_1_step": t_one,
                    "per_denoise_step": per_step, "vae_decode": t_decode},
        "gflop_per_batch": {"backbone": f_backbone / 1e9, "vae_decode": f_decode / 1e9,
                            "vae_encode": f_encode / 1e9, "vit": f_vit / 1e9, "reward": f_reward / 1e9},
        "achieved_gflops": (f_predict + f_reward) / total_t / 1e9,
        "matmul_peak_gflops": peak["gflops"], "matmul_peak": peak,
    }
    out["fraction_of_peak"] = out["achieved_gflops"] / out["matmul_peak_gflops"]
    print(json.dumps(out, indent=2))
    with open(a.out, "w") as f:
        json.dump(out, f, indent=2)


if __name__ == "__main__":
    main(sys.argv[1:])
