"""Policy speed on this machine: action-chunk latency (batch 1), throughput (batch 64), SFT step time.

Usage: python benchmarks/policy_latency.py [--config=configs/tabletop.py[:smoke]] [--config.KEY=VALUE ...]
           [--out=FILE.json] [--repeats=N] [--train_batch=32]

Times (median of `repeats` calls after a warm-up/compile call) of:
  prefix      encode_prefix alone (ViT over both views + prefix transformer, KV cache)
  denoise     one action-expert pass against the cache
  eval        Policy.sample(mode='eval'): prefix once + num_denoise_steps Euler steps
  sde         Flow-SDE sampling (chain, log-prob, value)
  log_prob    re-scoring a chain (PPO) with gradients w.r.t. action expert + value head
  sft_step    one AdamW step of flow matching (forward + backward) at --train_batch
and XLA's FLOP estimate for each, so "where time goes" can be read off the JSON.
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from absl import flags  # noqa: E402

from vlambpo_jax import cli, loading  # noqa: E402
from vlambpo_jax.models import policy as policy_lib  # noqa: E402


def fake_obs(config, b, vocab_size, seed=0):
    rng = np.random.default_rng(seed)
    n, s = config.policy.max_text_len, config.image_size
    mask = np.zeros((b, n), bool)
    mask[:, : min(n, 24)] = True
    return dict(images=jnp.asarray(rng.integers(0, 256, (b, len(config.views), s, s, 3)), jnp.uint8),
                image_mask=jnp.ones((b, len(config.views)), bool),
                tokens=jnp.asarray(rng.integers(3, vocab_size, (b, n)) * mask, jnp.int32), token_mask=jnp.asarray(mask))


def timed(fn, *args, repeats):
    """(compile+first call seconds, median seconds per call, GFLOPs per call)."""
    jitted = jax.jit(fn)
    t0 = time.perf_counter()
    jax.block_until_ready(jitted(*args))
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(jitted(*args))
        times.append(time.perf_counter() - t0)
    try:
        cost = jitted.lower(*args).compile().cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        gflops = float(cost.get("flops", float("nan"))) / 1e9
    except Exception:  # cost analysis is best effort
        gflops = float("nan")
    return first, float(np.median(times)), gflops


def _define(fv: flags.FlagValues) -> None:
    flags.DEFINE_string("out", "", "also write the JSON here", flag_values=fv)
    flags.DEFINE_integer("repeats", 10, "timed calls (median)", flag_values=fv)
    flags.DEFINE_integer("train_batch", 32, "batch of the timed SFT step", flag_values=fv)


def main(argv: list[str]) -> None:
    a = cli.command_flags(argv, _define, workdir=False, default_config="configs/tabletop.py")
    config = cli.checked(a.config)
    pol = policy_lib.Policy(config, loading.make_tokenizer(config.policy.tokenizer).vocab_size)
    params = pol.init(jax.random.key(0), fake_obs(config, 1, pol.dims.vocab_size))
    key = jax.random.key(1)
    result = dict(config=cli.config_spec(["", *argv]) or "configs/tabletop.py",
                  overrides=[x for x in argv if x.startswith("--config.")],
                  backend=jax.default_backend(), devices=str(jax.devices()),
                  machine=platform.processor() or platform.machine(), cpu_count=os.cpu_count(),
                  params={g: policy_lib.count_params(p) for g, p in params.items()},
                  prefix_tokens=pol.dims.prefix_len + config.policy.max_text_len,
                  num_denoise_steps=pol.num_steps, timings={})

    def record(name, b, fn, *args):
        first, sec, gflops = timed(fn, *args, repeats=a.repeats)
        result["timings"][f"{name}_b{b}"] = dict(
            batch=b, ms=1e3 * sec, per_sample_ms=1e3 * sec / b, samples_per_s=b / sec, compile_s=first,
            gflops=gflops, gflop_per_s=gflops / sec if sec > 0 else None)
        print(f"{name:>9} b={b:<3} {1e3 * sec:9.2f} ms  {b / sec:9.1f} samples/s  {gflops:8.3f} GFLOP  "
              f"(first call {first:.1f} s)", flush=True)

    for b in (1, 64):
        obs = fake_obs(config, b, pol.dims.vocab_size)
        cache = jax.jit(pol.encode_prefix)(params, obs)
        x = jnp.zeros((b, pol.dims.chunk_size, pol.dims.action_pad_dim))
        t = jnp.full((b,), 0.5)
        record("prefix", b, pol.encode_prefix, params, obs)
        record("denoise", b, pol.denoise, params, cache, x, t)
        record("eval", b, lambda p, o, k: pol.sample(p, o, k, mode="eval"), params, obs, key)
        record("sde", b, pol.sample_sde, params, obs, key)
        chain = jax.jit(pol.sample_sde)(params, obs, key).chain
        record("log_prob", b, jax.grad(lambda p, o, c: pol.log_prob(p, o, c).sum()), params, obs, chain)

    b = a.train_batch
    obs = fake_obs(config, b, pol.dims.vocab_size)
    batch = dict(obs, actions=jnp.zeros((b, config.chunk_size, config.action_dim)),
                 action_mask=jnp.ones((b, config.chunk_size), bool))
    opt = optax.adamw(1e-4)
    state = opt.init(params)

    def sft_step(params, state, key):
        (loss, _), g = jax.value_and_grad(pol.flow_matching_loss, has_aux=True)(params, batch, key)
        updates, state = opt.update(g, state, params)
        return optax.apply_updates(params, updates), state, loss

    record("sft_step", b, sft_step, params, state, key)
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            json.dump(result, f, indent=1)
        print("wrote", a.out)


if __name__ == "__main__":
    main(sys.argv[1:])
