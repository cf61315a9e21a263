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


def episodes_from_batch(env: TabletopEnv, rec: dict, task_ids: np.ndarray, first_id: int, noise: float):
    """Host-side cut of a collected batch into RLDS episode dicts (see the module docstring)."""
    out = []
    for b in range(len(task_ids)):
        n = int(rec["length"][b])
        images = np.concatenate([rec["images"][b, :n], rec["final_images"][b][None]], 0)
        state = np.concatenate([rec["state"][b, :n], rec["final_state"][b][None]], 0)
        noop = np.zeros((1, 7), np.float32)
        noop[0, 6] = rec["action"][b, n - 1, 6] if n else 1.0
        action = np.concatenate([rec["action"][b, :n], noop], 0).astype(np.float32)
        reward = np.concatenate([rec["reward"][b, :n], [0.0]]).astype(np.float32)
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
