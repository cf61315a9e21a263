"""Tabletop frames labelled with where things are: the data of grounding co-training
(vlambpo_jax/models/grounding.py). Freshly reset scenes need no physics rollout, so thousands cost
seconds; frames from along scripted-expert episodes also show the gripper near, over and holding the
objects, as the policy's own frames do after the first chunk."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from vlambpo_jax.envs import experts, tabletop


def make_scene_pool(config, tokenizer, num_scenes: int, key: jax.Array, target_scale: float,
                    chunk: int = 256) -> dict:
    """Renders `num_scenes` freshly reset tabletop scenes (uniform task, random target and paraphrase).

    Returns numpy {'images': uint8[N, V, H, W, 3], 'image_mask': bool[N, V], 'tokens': int32[N, L],
    'token_mask': bool[N, L], 'state': float32[N, S] (raw, as the env observes it), 'targets':
    float32[N, 13] (TabletopEnv.grounding_targets x target_scale)}.
    """
    env = tabletop.make_env(config)

    def one(k):
        k_task, k_reset = jax.random.split(k)
        state = env.reset(k_reset, jax.random.randint(k_task, (), 0, env.num_tasks))
        return state.obs["images"], state.obs["instruction_id"], state.obs["state"], env.grounding_targets(state)

    reset = jax.jit(jax.vmap(one))
    keys = jax.random.split(key, max(int(num_scenes), 1))
    parts = [jax.device_get(reset(keys[i:i + chunk])) for i in range(0, len(keys), chunk)]
    return pool_rows(config, tokenizer, env, *(np.concatenate(p) for p in zip(*parts)), target_scale)


def make_episode_pool(config, tokenizer, num_scenes: int, key: jax.Array, target_scale: float, noise: float,
                      chunk: int = 256) -> dict:
    """Like make_scene_pool, but each frame is taken along a scripted-expert episode (the demos'
    experts, with their action noise `noise`), at a step drawn uniformly from the task's horizon; an
    episode that ended before it gives its final frame. The same dict as make_scene_pool."""
    env = tabletop.make_env(config)
    horizons = jnp.asarray(env.horizons)

    def one(k):
        k_task, k_reset, k_stop, k_run = jax.random.split(k, 4)
        task = jax.random.randint(k_task, (), 0, env.num_tasks)
        state = env.reset(k_reset, task)
        stop = jax.random.randint(k_stop, (), 0, horizons[task])

        def body(s, step):
            i, k_act = step
            moved = env.step_chunk(s, experts.expert_action(env, s, k_act, noise)[None], render=False)[0]
            return jax.tree.map(lambda a, b: jnp.where(i < stop, a, b), moved, s), None

        steps = (jnp.arange(env.max_horizon), jax.random.split(k_run, env.max_horizon))
        state, _ = jax.lax.scan(body, state, steps)
        obs = env.observe(state)
        return obs["images"], obs["instruction_id"], obs["state"], env.grounding_targets(state)

    run = jax.jit(jax.vmap(one))
    keys = jax.random.split(key, max(int(num_scenes), 1))
    parts = [jax.device_get(run(keys[i:i + chunk])) for i in range(0, len(keys), chunk)]
    return pool_rows(config, tokenizer, env, *(np.concatenate(p) for p in zip(*parts)), target_scale)


def pool_from_states(config, tokenizer, env, states, target_scale: float) -> dict:
    """The same rows for given env States batched [N] (e.g. an evaluation's initial states)."""
    targets = jax.vmap(env.grounding_targets)(states)
    return pool_rows(config, tokenizer, env, *jax.device_get(
        (states.obs["images"], states.obs["instruction_id"], states.obs["state"], targets)), target_scale)


def pool_rows(config, tokenizer, env, images, instruction_id, state, targets, target_scale: float) -> dict:
    """make_scene_pool's dict from per-scene observations (numpy) and grounding targets in metres."""
    ids, mask = tokenizer.encode_batch(list(env.instructions), int(config.data.max_text_len))
    return {"images": images, "image_mask": np.ones(images.shape[:2], bool), "tokens": ids[instruction_id],
            "token_mask": mask[instruction_id], "state": np.asarray(state, np.float32),
            "targets": (np.asarray(targets) * target_scale).astype(np.float32)}
