"""Adaptive branch length (config.rl.branch_chunks = -1), beyond the paper.

Thm 4.2 trades a policy-shift term that shrinks with the branch length n against a model term that
grows with it (rl/theory.py). Its model error is measured here on held-out real sequences: the world
model is driven open-loop by the real action chunks from the real first frame, and after each chunk n
its Yes/No reward on the imagined views is compared with the same reward on the real views. The mean
|p_imagined - p_real| is the total-variation distance between the two success distributions after n
chunks (a lower bound of the TV between the state distributions, on the quantity MBPO learns from).
Divided by n it is the per-chunk error eps_m(n) of the bound, whose model term n * eps_m(n) is then
exactly the measured TV. eps_pi, the policy shift over MBPO, cannot be measured before MBPO runs: it is
config.rl.adaptive_eps_pi.

Real sequences come from the simulator (tabletop: the SFT policy's own rollouts, their env steps
counted) or from the held-out logged episodes of the `logged_roots` stage (real-robot path).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from vlambpo_jax.data.tokenizer import load_wm_tokenizer
from vlambpo_jax.rl import theory


def reward_tv_by_chunks(predict, reward, images: np.ndarray, actions: np.ndarray, wm_tokens: np.ndarray,
                        wm_token_mask: np.ndarray, key: jax.Array) -> np.ndarray:
    """Open-loop model error after each chunk.

    predict(images, tokens, token_mask, actions, key) -> next images and reward(images, tokens,
    token_mask) -> p_success f32[R] (the world model's, params bound); images uint8[R, N + 1, V, H, W, 3]
    real frames at chunk boundaries; actions f32[R, N, k, 7]; wm_tokens int32[R, L], wm_token_mask
    bool[R, L]. -> f32[N]: mean |p(imagined) - p(real)| after chunks 1..N.
    """
    imagined = jnp.asarray(images[:, 0])
    tv = []
    for c in range(actions.shape[1]):
        imagined = predict(imagined, wm_tokens, wm_token_mask, jnp.asarray(actions[:, c]),
                           jax.random.fold_in(key, c))
        p_imagined = reward(imagined, wm_tokens, wm_token_mask)
        p_real = reward(jnp.asarray(images[:, c + 1]), wm_tokens, wm_token_mask)
        tv.append(float(jnp.mean(jnp.abs(p_imagined - p_real))))
    return np.asarray(tv, np.float32)


def choose(tv_by_chunks: np.ndarray, gamma: float, k: int, eps_pi: float) -> dict:
    """Measured TV after 1..N chunks -> the Thm 4.2 choice: {branch_chunks, eps_m, bounds, tv}."""
    eps_m = [float(tv) / n for n, tv in enumerate(tv_by_chunks, start=1)]
    n, bounds = theory.choose_branch_length(gamma, k, eps_pi, eps_m)
    return {"branch_chunks": n, "tv_by_chunks": [float(x) for x in tv_by_chunks], "eps_m": eps_m,
            "eps_pi": float(eps_pi), "bounds": [float(b) for b in bounds]}


def sim_sequences(env, policy, params, tokenizer, config, key: jax.Array, num: int, num_chunks: int) -> dict:
    """The policy (config.rl.collect_mode sampling) from `num` fresh episodes for `num_chunks` chunks.
    -> {images uint8[R, N + 1, V, H, W, 3], actions f32[R, N, k, 7], wm_tokens, wm_token_mask,
    env_steps}."""
    texts = list(env.instructions)
    tok, tmask = map(jnp.asarray, tokenizer.encode_batch(texts, config.data.max_text_len))
    wtok, wmask = load_wm_tokenizer(config.wm).encode_batch(texts, config.wm.max_text_len)
    sample = jax.jit(lambda p, o, k: policy.sample(p, o, k, mode=config.rl.collect_mode))
    step_chunk = jax.jit(jax.vmap(env.step_chunk))
    states = jax.jit(jax.vmap(env.reset))(jax.random.split(jax.random.fold_in(key, 0), num))
    ids = np.asarray(states.obs["instruction_id"])
    images, actions = [np.asarray(states.obs["images"])], []
    for c in range(num_chunks):
        obs = {"images": states.obs["images"], "tokens": tok[ids], "token_mask": tmask[ids]}
        a = sample(params, obs, jax.random.fold_in(key, c + 1))
        states, _, _ = step_chunk(states, a)
        images.append(np.asarray(states.obs["images"]))
        actions.append(np.asarray(a))
    return {"images": np.stack(images, 1), "actions": np.stack(actions, 1), "wm_tokens": wtok[ids],
            "wm_token_mask": wmask[ids], "env_steps": num * num_chunks * int(config.chunk_size)}


def logged_sequences(samples: dict, chunk_size: int, num: int, num_chunks: int, seed: int) -> dict:
    """Up to `num` sequences of `num_chunks` chunks from held-out logged steps (offline.heldout_samples:
    every step with its logged chunk), starting at chunk-aligned steps with that many chunks left.
    -> the dict of sim_sequences (env_steps 0); raises if no episode is long enough."""
    index = {(int(e), int(t)): i for i, (e, t) in enumerate(zip(samples["episode_id"], samples["t"]))}
    starts = [i for i, (e, t) in enumerate(zip(samples["episode_id"], samples["t"]))
              if t % chunk_size == 0 and (int(e), int(t) + num_chunks * chunk_size) in index]
    if not starts:
        raise ValueError(f"adaptive branch length: no held-out logged episode has {num_chunks} chunks "
                         f"after a chunk-aligned step; lower config.rl.adaptive_max_chunks")
    starts = np.random.default_rng([seed, 0xB1]).permutation(starts)[:num]
    rows = [[index[(int(samples["episode_id"][i]), int(samples["t"][i]) + c * chunk_size)]
             for c in range(num_chunks + 1)] for i in starts]
    rows = np.asarray(rows)
    return {"images": samples["images"][rows], "actions": samples["actions"][rows[:, :-1]],
            "wm_tokens": samples["wm_tokens"][starts], "wm_token_mask": samples["wm_token_mask"][starts],
            "env_steps": 0}
