"""Policy rollouts in the simulator, recorded as RLDS episodes and as chunk-aligned branch roots: the
library of the `collect` stage (the SFT policy's episodes become data for the world model and branch
roots for MBPO).

Episodes are recorded step by step (the world model learns frame t -> t + k for every t), in the
Bridge schema the rest of the project reads: image_0 = head, image_1 = wrist, state[7], action[7],
language_instruction, reward, is_first/is_last/is_terminal, plus a final step holding the observation
after the last action. Successes and failures are both kept.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from vlambpo_jax.envs.demos import episodes_from_batch
from vlambpo_jax.rl.rollout import SimWorld
from vlambpo_jax.train.metrics import progress

SIM_PREFIX = "sim"   # roots.npz keys of the simulator states (SIM_PREFIX + TabletopEnv.state_arrays key)


def make_episode_runner(env, policy, params, tokens: np.ndarray, token_mask: np.ndarray, mode: str,
                        normalize_state=None):
    """A jitted function (keys [B, 2], task_ids [B]) -> (final states, (records [T, k, B, ...],
    chunk-start simulator states {TabletopEnv.state_arrays key: [T, B, ...]})).

    Each record holds the observation before the step, the action, and the reward / success / done
    after it; `done_before` marks steps taken after the episode had ended. normalize_state: as
    SimWorld's (None for a policy without a state token).
    """
    k = policy.dims.chunk_size
    num_chunks = math.ceil(env.max_horizon / k)
    world = SimWorld(env, tokens, token_mask, normalize_state)

    def run(keys, task_ids):
        states = jax.vmap(env.reset)(keys, task_ids)
        chunk_keys = jax.random.split(jax.random.fold_in(keys[0], 1), num_chunks)

        def chunk(states, key):
            actions = policy.sample(params, world.observe(states), key, mode=mode)

            def step(s, a):
                new = jax.vmap(env.step)(s, a)
                return new, {"images": s.obs["images"], "state": s.obs["state"], "action": a,
                             "reward": new.reward, "success": new.success, "done": new.done,
                             "done_before": s.done}

            new_states, records = jax.lax.scan(step, states, jnp.swapaxes(actions, 0, 1))
            return new_states, (records, env.state_arrays(states))

        return jax.lax.scan(chunk, states, chunk_keys)

    return jax.jit(run)


def episodes_from_records(env, records: dict, final_obs: dict, task_ids: np.ndarray,
                          first_id: int) -> list[dict]:
    """Batched records [T, k, B, ...] -> RLDS episode dicts, in the demos stage's exact layout
    (envs.demos.episodes_from_batch: L actions -> L + 1 steps, the last one the final observation with
    a no-op action). Expert noise is recorded as 0: these are policy rollouts."""
    rec = {key: np.swapaxes(np.asarray(v).reshape((-1,) + np.asarray(v).shape[2:]), 0, 1)
           for key, v in records.items()}                                  # [B, T * k, ...]
    batch = {"images": rec["images"], "state": rec["state"], "action": rec["action"],
             "reward": rec["reward"], "length": (~rec["done_before"]).sum(axis=1),
             "success": rec["success"].any(axis=1), "final_images": np.asarray(final_obs["images"]),
             "final_state": np.asarray(final_obs["state"]),
             "instruction_id": np.asarray(final_obs["instruction_id"])}
    return episodes_from_batch(env, batch, task_ids, first_id, noise=0.0)


def branch_roots(episodes: list[dict], chunk_size: int, tokenizer, max_text_len: int,
                 task_names: tuple[str, ...], wm_tokenizer, wm_max_text_len: int,
                 sim_states: list[dict] | None = None) -> dict[str, np.ndarray]:
    """Chunk-aligned start states (frames 0, k, 2k, ... of every episode, before its end), with the
    instruction tokenized for the policy and for the world model (wm_tokenizer). sim_states (one dict
    per episode, as `collect` returns them) adds each root's full simulator state under
    SIM_PREFIX + its state_arrays key, for restoring the simulator there (rl.world='sim_roots')."""
    images, texts, task, success, episode, t_index = [], [], [], [], [], []
    sim = {}
    for i, ep in enumerate(episodes):
        obs = ep["steps"]["observation"]
        n = ep["episode_metadata"]["length"]
        for t in range(0, n, chunk_size):
            for key, value in (sim_states[i].items() if sim_states is not None else ()):
                sim.setdefault(SIM_PREFIX + key, []).append(value[t // chunk_size])
            images.append(np.stack([obs["image_0"][t], obs["image_1"][t]]))
            texts.append(ep["steps"]["language_instruction"])
            task.append(task_names.index(ep["episode_metadata"]["task"]))
            success.append(ep["episode_metadata"]["success"])
            episode.append(ep["episode_metadata"]["episode_id"])
            t_index.append(t)
    tokens, token_mask = tokenizer.encode_batch(texts, max_text_len)
    wm_tokens, wm_token_mask = wm_tokenizer.encode_batch(texts, wm_max_text_len)
    return {"images": np.stack(images).astype(np.uint8), "tokens": tokens, "token_mask": token_mask,
            "wm_tokens": wm_tokens, "wm_token_mask": wm_token_mask,
            "instruction": np.asarray(texts), "task_id": np.asarray(task, np.int32),
            "episode_success": np.asarray(success), "episode_id": np.asarray(episode, np.int32),
            "t": np.asarray(t_index, np.int32), **{key: np.stack(v) for key, v in sim.items()}}


def collect(env, policy, params, tokenizer, key, episodes_per_task: int, mode: str, batch_size: int,
            max_text_len: int, progress_mode: str = "auto", normalize_state=None) -> tuple[list[dict], list[dict]]:
    """Runs `episodes_per_task` episodes of every task -> (RLDS episode dicts, per episode its
    chunk-start simulator states {state_arrays key: [T chunks, ...]})."""
    tokens, token_mask = tokenizer.encode_batch(list(env.instructions), max_text_len)
    runner = make_episode_runner(env, policy, params, tokens, token_mask, mode, normalize_state)
    task_ids = np.repeat(np.arange(env.num_tasks, dtype=np.int32), episodes_per_task)
    episodes, sim_states = [], []
    starts = range(0, len(task_ids), batch_size)
    for i, start in enumerate(progress(starts, total=len(starts), desc="collect", mode=progress_mode)):
        ids = task_ids[start:start + batch_size]
        keys = jax.random.split(jax.random.fold_in(key, i), len(ids))
        final, (records, states) = runner(keys, jnp.asarray(ids))
        episodes += episodes_from_records(env, jax.device_get(records), jax.device_get(final.obs), ids,
                                          start)
        states = jax.device_get(states)
        sim_states += [{key: v[:, b] for key, v in states.items()} for b in range(len(ids))]
    return episodes, sim_states
