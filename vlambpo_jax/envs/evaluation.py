"""Evaluation harness: any chunk policy, M episodes per task, one jitted scan over chunks.

`evaluate(env, policy_fn, params, key, episodes_per_task)` resets M episodes of every task of the env
(vmapped), then runs `lax.scan` over ceil(max_horizon / k) chunks; in each, the policy sees the
(unbatched, vmapped) observation and returns an action chunk f32[k, 7] that `env.rollout_chunk`
executes. Episodes end at success or at their task's horizon (the env freezes done states).
Returns success rates per task and overall with Wilson 95% intervals, mean episode lengths and each
episode's outcome, and writes a few episodes as GIFs (head | wrist side by side, rendered at
`video_size` px). `paired_comparison` compares two policies run on the same episodes.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Callable

import imageio.v2 as imageio
import jax
import jax.numpy as jnp
import numpy as np

from vlambpo_jax.train import sharding

Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (95% by default); (0, 1) when n = 0."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def paired_comparison(base: np.ndarray, other: np.ndarray) -> dict:
    """Two policies' outcomes on the same episodes (bool [N] each, same initial states and keys):
    the discordant counts and the exact two-sided McNemar p-value (a binomial test of how the
    discordant episodes split, at 1/2). Far more sensitive than comparing two Wilson intervals when
    the policies agree on most episodes."""
    base, other = np.asarray(base, bool), np.asarray(other, bool)
    if base.shape != other.shape:
        raise ValueError(f"paired outcomes need the same episodes, got {base.shape} and {other.shape}")
    only_base, only_other = int((base & ~other).sum()), int((other & ~base).sum())
    n, low = only_base + only_other, min(only_base, only_other)
    tail = sum(math.comb(n, i) for i in range(low + 1)) / 2.0 ** n
    return dict(episodes=int(base.size), only_base=only_base, only_other=only_other,
                p_value=min(1.0, 2.0 * tail))


def _slug(text: str, n: int = 60) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:n]


def episode_task_ids(num_tasks: int, episodes_per_task: int) -> np.ndarray:
    """int32[num_tasks x M]: each evaluation episode's task, ordered so that the first episodes (the
    recorded ones) cycle through the tasks."""
    t, m = int(num_tasks), int(episodes_per_task)
    order = np.argsort(np.tile(np.arange(m), t) * t + np.repeat(np.arange(t), m), kind="stable")
    return np.repeat(np.arange(t, dtype=np.int32), m)[order]


def reset_episodes(env, key: jax.Array, task_ids: jax.Array):
    """The initial states of an evaluation with this key (one per task id), and the key that then
    drives its rollout: (State batched [B], key)."""
    k_reset, k_run = jax.random.split(key)
    return jax.vmap(env.reset)(jax.random.split(k_reset, task_ids.shape[0]), task_ids), k_run


def rollout(env, policy_fn: Callable, params: Any, key: jax.Array, task_ids: jax.Array, *,
            privileged: bool = False, record: int = 0, chunk_size: int | None = None,
            episode_sharding=None):
    """Runs one episode per entry of task_ids (vmapped) to the longest horizon.

    policy_fn(params, obs, key) -> f32[k, 7] (or (params, state, key) when privileged: it then sees
    the whole env State and the env skips rendering). record: the first `record` episodes also return
    their per-step render poses. episode_sharding: a NamedSharding of the episode axis (splits the
    episodes over a device mesh). Returns (final State, per-chunk rewards [B, n, k], poses or None).
    """
    state, k_run = reset_episodes(env, key, task_ids)
    b = task_ids.shape[0]
    if episode_sharding is not None:
        state = jax.lax.with_sharding_constraint(state, episode_sharding)
    first = jax.tree.map(lambda x: x[:record, None], env.render_poses(state.data)) if record else None
    if chunk_size is None:
        probe = jax.tree.map(lambda x: x[0], state)
        out = jax.eval_shape(policy_fn, params, probe if privileged else probe.obs, k_run)
        if out.ndim != 2 or out.shape[1] != 7:
            raise ValueError(f"policy_fn must return actions f32[k, 7], got shape {out.shape}")
        chunk_size = out.shape[0]
    n_chunks = -(-env.max_horizon // chunk_size)
    pol = jax.vmap(policy_fn, in_axes=(None, 0, 0))
    step = jax.vmap(lambda s, a: env.rollout_chunk(s, a, render=not privileged, record=record > 0))

    def body(s, k):
        actions = pol(params, s if privileged else s.obs, jax.random.split(k, b))
        s, rewards, _, poses = step(s, actions)
        if record:
            poses = jax.tree.map(lambda x: x[:record], poses)
        return s, (rewards, poses)

    state, (rewards, poses) = jax.lax.scan(body, state, jax.random.split(k_run, n_chunks))
    rewards = jnp.swapaxes(rewards, 0, 1)
    if record:   # [n, R, k, ...] -> [R, n * k, ...]
        poses = jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1).reshape(
            (x.shape[1], n_chunks * chunk_size) + x.shape[3:]), poses)
        poses = jax.tree.map(lambda a, b: jnp.concatenate([a, b], 1), first, poses)
    return state, rewards, poses


def write_gif(path: Path, frames: np.ndarray, fps: int = 10) -> None:
    """frames uint8 [T, V, H, W, 3] -> GIF with the views side by side (2 px white gap)."""
    t, v, h, w, _ = frames.shape
    gap = np.full((t, h, 2, 3), 255, np.uint8)
    parts = []
    for i in range(v):
        parts += [frames[:, i]] + ([gap] if i < v - 1 else [])
    imageio.mimsave(path, list(np.concatenate(parts, axis=2)), duration=1.0 / fps, loop=0)


def make_evaluator(env, policy_fn: Callable, episodes_per_task: int, *, privileged: bool = False,
                   num_videos: int = 0, video_size: int = 128, chunk_size: int | None = None,
                   mesh=None) -> Callable[..., dict]:
    """Compiles the evaluation rollout once; returns run(params, key, video_dir=None) -> result dict.

    Call it repeatedly (periodic evaluation during training) without recompiling. Arguments and the
    result are those of `evaluate`; videos are written only when `video_dir` is given.
    """
    t = env.num_tasks
    m = int(episodes_per_task)
    if m < 1:
        raise ValueError(f"episodes_per_task must be >= 1, got {episodes_per_task}")
    tids = episode_task_ids(t, m)
    task_ids = jnp.asarray(tids)
    n_video = min(int(num_videos), t * m)
    shard_kw, episode_sharding = {}, None
    if mesh is not None and len(task_ids) % mesh.size == 0:
        episode_sharding = sharding.batch_sharding(mesh)
        shard_kw = dict(in_shardings=(sharding.replicated(mesh), sharding.replicated(mesh)))
    run = jax.jit(lambda p, k: rollout(env, policy_fn, p, k, task_ids, privileged=privileged,
                                       record=n_video, chunk_size=chunk_size,
                                       episode_sharding=episode_sharding), **shard_kw)
    renderer = env.make_renderer(video_size) if n_video else None
    draw = jax.jit(jax.vmap(jax.vmap(lambda p, c: env.render(p, c, renderer), in_axes=(0, None))))

    def evaluate_once(params, key, video_dir: str | Path | None = None) -> dict:
        state, _, poses = run(params, key)
        # episodes split over a multi-process mesh: every process gathers the whole batch
        success, length, instruction_id = sharding.to_host(
            (state.success, state.info["step"], state.info["instruction_id"]))
        per_task = {}
        for i, name in enumerate(env.task_names):
            s = success[tids == i]
            per_task[name] = dict(success_rate=float(s.mean()), ci95=wilson_interval(int(s.sum()), len(s)),
                                  mean_length=float(length[tids == i].mean()), episodes=int(len(s)))
        overall = dict(success_rate=float(success.mean()),
                       ci95=wilson_interval(int(success.sum()), len(success)),
                       mean_length=float(length.mean()), episodes=int(len(success)))
        result = dict(per_task=per_task, overall=overall, **overall,
                      instruction_split=env.instruction_split, videos=[],
                      successes=np.asarray(success, np.int32).tolist())
        if n_video and video_dir is not None:
            video_dir = Path(video_dir)
            video_dir.mkdir(parents=True, exist_ok=True)
            recorded, rgb = sharding.to_host((poses, state.info["rgb"]))   # poses: the first n_video only
            frames = np.asarray(draw(recorded, rgb[:n_video]))   # [R, 1 + T, V, H, W, 3]
            for r in range(n_video):
                clip = frames[r, :int(length[r]) + 1]
                name = env.task_names[int(tids[r])]
                text = env.instructions[int(instruction_id[r])]
                tag = "success" if success[r] else "fail"
                path = video_dir / f"{r:02d}_{name}_{tag}_{_slug(text)}.gif"
                write_gif(path, clip)
                result["videos"].append(str(path))
        return result

    return evaluate_once


def evaluate(env, policy_fn: Callable, params: Any, key: jax.Array, episodes_per_task: int, *,
             privileged: bool = False, video_dir: str | Path | None = None, num_videos: int = 0,
             video_size: int = 128, chunk_size: int | None = None, mesh=None) -> dict:
    """Evaluates a policy on every task of `env` (its instruction_split decides seen/unseen wording).

    Args:
      env: a TabletopEnv (not AutoReset).
      policy_fn: (params, obs, key) -> actions f32[k, 7]; obs unbatched as the env documents.
        With privileged=True: (params, state, key), state an unbatched env State (scripted experts).
      episodes_per_task: M; the batch is M x num_tasks episodes, all in one jitted scan.
      video_dir, num_videos: write this many episodes (spread over tasks) as GIFs there.
      mesh: a ('data', 'fsdp') device mesh to split the episodes over (when they divide evenly).
    Returns:
      dict with per_task {name: {success_rate, ci95, mean_length, episodes}}, overall (the same four
      over all episodes; also repeated at the top level), instruction_split, videos (GIF paths),
      successes (0/1 per episode, in a fixed order: with the same key, another policy's list pairs
      with it episode by episode; see paired_comparison).
    For repeated evaluations use `make_evaluator`, which compiles once.
    """
    evaluator = make_evaluator(env, policy_fn, episodes_per_task, privileged=privileged,
                               num_videos=num_videos if video_dir is not None else 0,
                               video_size=video_size, chunk_size=chunk_size, mesh=mesh)
    return evaluator(params, key, video_dir)
