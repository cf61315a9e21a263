"""Throughput of the MJX tabletop env on this machine; prints JSON.

  python benchmarks/env_throughput.py [--batches 1,16,64] [--size 32] [--steps 20] [--out FILE]

Measures, per batch size (after compilation, best of --repeats):
  physics_steps_per_s: control steps/s of vmapped step_chunk without rendering (each control step is
    `substeps` MJX physics steps);
  render_frames_per_s: two-view frames/s of the pure-JAX renderer alone (head + wrist = one frame);
  step_with_render_per_s: control steps/s of env.step, which renders both views every step;
  chunk_steps_per_s: control steps/s of step_chunk with k = chunk steps, rendering once per chunk.
Also compile seconds of each function (with whatever persistent cache JAX_COMPILATION_CACHE_DIR names).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from vlambpo_jax.envs import tabletop  # noqa: E402


def _time(fn, args, repeats):
    t0 = time.time()
    out = fn(*args)
    jax.block_until_ready(out)
    compile_s = time.time() - t0
    best = float("inf")
    for _ in range(repeats):
        t0 = time.time()
        jax.block_until_ready(fn(*args))
        best = min(best, time.time() - t0)
    return best, compile_s


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batches", default="1,16,64")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--steps", type=int, default=20, help="control steps per timed call")
    p.add_argument("--chunk", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no_shadows", action="store_true")
    p.add_argument("--out", default="")
    args = p.parse_args()
    if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)

    env = tabletop.TabletopEnv(image_size=args.size, shadows=not args.no_shadows)
    reset = jax.jit(jax.vmap(env.reset))
    render = jax.jit(jax.vmap(lambda s: env.render(env.render_poses(s.data), s.info["rgb"])))

    def physics(states, actions):   # [B, T, 7]
        return jax.vmap(lambda s, a: env.step_chunk(s, a, render=False))(states, actions)[0].data.qpos

    def stepping(states, actions):
        def body(s, a):
            return jax.vmap(env.step)(s, a), None
        return jax.lax.scan(body, states, jnp.swapaxes(actions, 0, 1))[0].obs["images"]

    def chunked(states, actions):
        b, t = actions.shape[:2]
        chunks = actions.reshape(b, t // args.chunk, args.chunk, 7)

        def body(s, a):
            return jax.vmap(env.step_chunk)(s, a)[0], None
        return jax.lax.scan(body, states, jnp.swapaxes(chunks, 0, 1))[0].obs["images"]

    physics, stepping, chunked = jax.jit(physics), jax.jit(stepping), jax.jit(chunked)
    results = {"device": str(jax.devices()[0]), "cpu_count": os.cpu_count(), "image_size": args.size,
               "views": 2, "shadows": not args.no_shadows, "substeps": env.substeps,
               "steps_per_call": args.steps, "chunk": args.chunk, "batches": {}}
    for b in [int(x) for x in args.batches.split(",")]:
        states = reset(jax.random.split(jax.random.PRNGKey(0), b))
        actions = jnp.zeros((b, args.steps, 7)).at[..., 0].set(0.004).at[..., 6].set(1.0)
        r = {}
        t, c = _time(render, (states,), args.repeats)
        r["render_frames_per_s"], r["render_compile_s"] = b / t, c
        t, c = _time(physics, (states, actions), args.repeats)
        r["physics_steps_per_s"], r["physics_compile_s"] = b * args.steps / t, c
        r["physics_substeps_per_s"] = r["physics_steps_per_s"] * env.substeps
        t, c = _time(stepping, (states, actions), args.repeats)
        r["step_with_render_per_s"], r["step_compile_s"] = b * args.steps / t, c
        t, c = _time(chunked, (states, actions), args.repeats)
        r["chunk_steps_per_s"], r["chunk_compile_s"] = b * args.steps / t, c
        # Where the time of a rendered step goes: physics vs rendering share.
        per_step = 1 / r["step_with_render_per_s"]
        r["render_share_of_rendered_step"] = (1 / r["render_frames_per_s"]) / per_step
        results["batches"][str(b)] = {k: round(v, 3) for k, v in r.items()}
        print(f"batch {b}: {json.dumps(results['batches'][str(b)])}", file=sys.stderr, flush=True)
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
