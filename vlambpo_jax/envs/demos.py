"""Scripted-expert episodes in the RLDS (Bridge) layout: the data of the `demos` stage.

`collect` runs the experts (vlambpo_jax.envs.experts) with some action noise for a number of episodes
of every task (vmapped batches, one jitted scan over steps each, rendering every step) and returns
episode dicts that vlambpo_jax.data.rlds_writer.write_rlds writes in the Bridge schema:

  steps/observation/image_0: head view uint8 [T, H, W, 3]; image_1: wrist view; state f32 [T, 7]
  steps/action f32 [T, 7]; language_instruction; reward, discount, is_first, is_last, is_terminal.
  episode_metadata: task, success, episode_id, instruction_id, length (actions taken), noise.

An episode of L actions has T = L + 1 steps: step t < L holds observation t, the action taken there and
the reward that action earned; the last step holds the final observation (the success frame when the
episode succeeded) with a no-op action (zero motion, gripper unchanged), reward 0, is_last = True and
is_terminal = success.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from vlambpo_jax.envs import experts
from vlambpo_jax.envs import scene as S
from vlambpo_jax.envs.tabletop import TabletopEnv


def make_collector(env: TabletopEnv, noise: float, expert_labels: bool = False):
    """jit(reset_keys [B], run_keys [B], task_ids [B], targets [B]) -> dict of per-step arrays for B
    expert episodes of max_horizon (targets < 0: drawn at random). The noisy action steps the
    simulator; the recorded action is that one, or with expert_labels the expert's noiseless action
    at the same state (DART: the labels then show how the expert recovers from the noise's drift)."""
    def one(k_reset, k_run, task_id, target):
        state = env.reset(k_reset, task_id, target)

        def body(s, k):
            a = experts.expert_action(env, s, k, noise)
            nxt = env.step(s, a)
            label = experts.expert_action(env, s, k, 0.0) if expert_labels else a
            return nxt, dict(images=s.obs["images"], state=s.obs["state"], action=label, reward=nxt.reward)

        final, rec = jax.lax.scan(body, state, jax.random.split(k_run, env.max_horizon))
        rec["final_images"] = final.obs["images"]
        rec["final_state"] = final.obs["state"]
        rec.update(success=final.success, length=final.info["step"],
                   instruction_id=final.info["instruction_id"])
        return rec

    return jax.jit(jax.vmap(one))


def make_takeover_collector(env: TabletopEnv, policy_fn, chunk_size: int, noise: float):
    """DAgger's data: the policy acts first, then the noisy expert takes over to the end of the episode.

    jit(params, reset_keys [B], run_keys [B], task_ids [B], handover [B]) -> make_collector's per-step
    arrays. policy_fn(params, obs, key) -> f32[chunk_size, 7] acts (one chunk per call, replanning at
    chunk boundaries) for the first handover[b] chunks, then the expert (expert_action with `noise`)
    acts at every step; the recorded action is the one executed. The steps from handover[b] x
    chunk_size on are an expert episode that starts from a state the policy reached (episodes_from_batch
    with `start`).
    """
    n_chunks = -(-env.max_horizon // chunk_size)

    def one(params, k_reset, k_run, task_id, handover):
        state = env.reset(k_reset, task_id, -1)

        def chunk_body(s, xs):
            c, k = xs
            k_policy, k_steps = jax.random.split(k)
            chunk = policy_fn(params, s.obs, k_policy)

            def step_body(s, xs):
                policy_action, k = xs
                a = jnp.where(c < handover, policy_action, experts.expert_action(env, s, k, noise))
                nxt = env.step(s, a)
                return nxt, dict(images=s.obs["images"], state=s.obs["state"], action=a, reward=nxt.reward)

            return jax.lax.scan(step_body, s, (chunk, jax.random.split(k_steps, chunk_size)))

        final, rec = jax.lax.scan(chunk_body, state, (jnp.arange(n_chunks), jax.random.split(k_run, n_chunks)))
        rec = jax.tree.map(lambda x: x.reshape((n_chunks * chunk_size,) + x.shape[2:])[:env.max_horizon], rec)
        rec["final_images"] = final.obs["images"]
        rec["final_state"] = final.obs["state"]
        rec.update(success=final.success, length=final.info["step"],
                   instruction_id=final.info["instruction_id"])
        return rec

    return jax.jit(jax.vmap(one, in_axes=(None, 0, 0, 0, 0)))


def episodes_from_batch(env: TabletopEnv, rec: dict, task_ids: np.ndarray, first_id: int, noise: float,
                        start: np.ndarray | None = None):
    """Host-side cut of a collected batch into RLDS episode dicts (see the module docstring).
    start [B]: the step each episode's record begins at (takeover episodes; default 0); an episode
    that ended before its start yields none."""
    out = []
    for b in range(len(task_ids)):
        t0, n = (0 if start is None else int(start[b])), int(rec["length"][b])
        if t0 and n <= t0:
            continue
        images = np.concatenate([rec["images"][b, t0:n], rec["final_images"][b][None]], 0)
        state = np.concatenate([rec["state"][b, t0:n], rec["final_state"][b][None]], 0)
        noop = np.zeros((1, 7), np.float32)
        noop[0, 6] = rec["action"][b, n - 1, 6] if n else 1.0
        action = np.concatenate([rec["action"][b, t0:n], noop], 0).astype(np.float32)
        reward = np.concatenate([rec["reward"][b, t0:n], [0.0]]).astype(np.float32)
        n -= t0
        success = bool(rec["success"][b])
        t = n + 1
        is_last = np.zeros(t, bool)
        is_last[-1] = True
        is_terminal = is_last & success
        out.append({
            "steps": {
                "observation": {"image_0": images[:, 0], "image_1": images[:, 1],
                                "state": state.astype(np.float32)},
                "action": action,
                "language_instruction": env.instructions[int(rec["instruction_id"][b])],
                "reward": reward,
                "discount": np.where(is_terminal, 0.0, 1.0).astype(np.float32),
                "is_first": np.arange(t) == 0,
                "is_last": is_last,
                "is_terminal": is_terminal,
            },
            "episode_metadata": {"task": env.task_names[int(task_ids[b])], "success": success,
                                 "episode_id": first_id + b, "instruction_id": int(rec["instruction_id"][b]),
                                 "length": n, "noise": float(noise)},
        })
    return out


def collect(env: TabletopEnv, key: jax.Array, episodes_per_task: int, noise: float, batch_size: int,
            keep_failures: bool = False, preemption=None, log=print, targets_per_scene: int = 1,
            expert_labels: bool = False):
    """All demo episodes (a list of RLDS episode dicts) and per-task success counts; expert_labels:
    see make_collector.

    targets_per_scene > 1: consecutive episodes of a task share their initial scene and differ in the
    target object (cycling through the objects), so only the instruction tells them apart.
    """
    task_ids = np.repeat(np.arange(env.num_tasks, dtype=np.int32), episodes_per_task)
    within = np.tile(np.arange(episodes_per_task), env.num_tasks)
    scene_ids = task_ids * episodes_per_task + within // targets_per_scene
    targets = ((within % targets_per_scene) % S.NUM_OBJECTS if targets_per_scene > 1
               else np.full_like(within, -1)).astype(np.int32)
    scene_key = jax.random.fold_in(key, 0x5CE7E)
    run = make_collector(env, noise, expert_labels)
    episodes, stats = [], {name: [0, 0] for name in env.task_names}
    for i, start in enumerate(range(0, len(task_ids), batch_size)):
        if preemption is not None and getattr(preemption, "requested", False):
            return None, stats
        ids = task_ids[start:start + batch_size]
        pad = batch_size - len(ids)   # keep one compiled batch shape
        sl = lambda a: jnp.asarray(np.concatenate([a[start:start + batch_size], a[start:start + 1].repeat(pad)]))
        reset_keys = jax.vmap(lambda s: jax.random.fold_in(scene_key, s))(sl(scene_ids))
        run_keys = jax.random.split(jax.random.fold_in(key, i), batch_size)
        rec = jax.device_get(run(reset_keys, run_keys, sl(task_ids), sl(targets)))
        rec = {k: v[:len(ids)] for k, v in rec.items()}
        for ep in episodes_from_batch(env, rec, ids, start, noise):
            meta = ep["episode_metadata"]
            stats[meta["task"]][0] += int(meta["success"])
            stats[meta["task"]][1] += 1
            if meta["success"] or keep_failures:
                episodes.append(ep)
        log(f"[demos] {min(start + batch_size, len(task_ids))}/{len(task_ids)} episodes")
    return episodes, stats


def collect_takeover(env: TabletopEnv, policy_fn, params, key: jax.Array, episodes: int, chunk_size: int,
                     noise: float, batch_size: int, first_id: int = 0, log=print):
    """DAgger episodes (make_takeover_collector): `episodes` runs over the tasks in turn, each handing
    over after a number of policy chunks drawn uniformly from [1, n_chunks). Only the runs whose
    expert part succeeds are kept. -> (RLDS episode dicts of the expert parts, successes, runs)."""
    n_chunks = -(-env.max_horizon // chunk_size)
    run = make_takeover_collector(env, policy_fn, chunk_size, noise)
    task_ids = (np.arange(episodes) % env.num_tasks).astype(np.int32)
    k_scene, k_run, k_handover = jax.random.split(key, 3)
    handover = np.asarray(jax.random.randint(k_handover, (episodes,), 1, max(n_chunks, 2)), np.int32)
    out, successes, runs = [], 0, 0
    for i, begin in enumerate(range(0, episodes, batch_size)):
        sl = slice(begin, begin + batch_size)
        ids, hand = task_ids[sl], handover[sl]
        pad = batch_size - len(ids)   # keep one compiled batch shape
        padded = lambda a: jnp.asarray(np.concatenate([a, a[:1].repeat(pad)]))
        reset_keys = jax.random.split(jax.random.fold_in(k_scene, i), batch_size)
        rec = jax.device_get(run(params, reset_keys, jax.random.split(jax.random.fold_in(k_run, i), batch_size),
                                 padded(ids), padded(hand)))
        rec = {k: v[:len(ids)] for k, v in rec.items()}
        for ep in episodes_from_batch(env, rec, ids, first_id + begin, noise, start=hand * chunk_size):
            runs += 1
            if ep["episode_metadata"]["success"]:
                successes += 1
                out.append(ep)
        log(f"[takeover] {min(begin + batch_size, episodes)}/{episodes} runs, {successes} expert parts succeeded")
    return out, successes, runs
