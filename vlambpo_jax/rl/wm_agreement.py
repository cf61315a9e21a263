"""Does the world model's reward tell a good action chunk from a bad one? Checked against the simulator.

MBPO learns only from imagined branches, so what matters is not PSNR but whether the imagined reward
ranks chunks the way the simulator would. From R real states, A Flow-SDE chunks each are played both in
the simulator and in the world model; the simulator's success after the chunk is the label, scored by:
  imagined      the world-model reward on the predicted views (what MBPO sees)
  real_next     the same reward on the simulator's next views (the reward model alone)
  current       the same reward on the views before the chunk (no prediction: the state alone)
AUC (Mann-Whitney) over all pairs, and within each state whose A chunks had mixed outcomes (only
there can a reward rank actions). If `imagined` is no better than `current`, the model adds nothing
about the action's effect, and a policy gradient from imagined branches is mostly noise.

The report stage runs it (config.report.agreement_*); on a finished run, with more samples:
  python -m vlambpo_jax.tools.wm_agreement --config=configs/tabletop.py --workdir=DIR [--states=64
  --samples=8 --chunks=4] [--policy=STAGE] [--config.KEY=VALUE ...] [--out=FILE]
"""
from __future__ import annotations

import json
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from vlambpo_jax.data.tokenizer import ByteTokenizer
from vlambpo_jax.envs.tabletop import make_env


def auc(score: np.ndarray, label: np.ndarray) -> float:
    """P(score of a random positive > score of a random negative), ties 1/2; NaN with one class."""
    label = np.asarray(label, bool)
    pos, neg = np.asarray(score)[label], np.asarray(score)[~label]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    diff = pos[:, None] - neg[None, :]
    return float((diff > 0).mean() + 0.5 * (diff == 0).mean())


def agreement_metrics(group: np.ndarray, success: np.ndarray, scores: dict[str, np.ndarray]) -> dict:
    """group int[N] (the state each chunk started from), success bool[N], scores name -> f32[N].

    -> {success_rate, auc_<name>, mixed_states, within_auc_<name> (mean over mixed states, NaN if
    none)}."""
    success = np.asarray(success, bool)
    out = {"samples": int(len(success)), "success_rate": float(success.mean())}
    mixed = [g for g in np.unique(group) if 0 < success[group == g].sum() < (group == g).sum()]
    out["mixed_states"] = len(mixed)
    for name, s in scores.items():
        s = np.asarray(s)
        out[f"auc_{name}"] = auc(s, success)
        within = [auc(s[group == g], success[group == g]) for g in mixed]
        out[f"within_auc_{name}"] = float(np.mean(within)) if within else float("nan")
    return out


def to_json(metrics: dict) -> str:
    """The metrics as strict JSON: an undefined AUC (NaN: one class only) becomes null."""
    return json.dumps({k: None if isinstance(v, float) and math.isnan(v) else v for k, v in metrics.items()},
                      indent=2)


def measure(env, sample_fn: Callable, predict_fn: Callable, reward_fn: Callable, key: jax.Array,
            num_states: int, samples_per_state: int, num_chunks: int, return_samples: bool = False):
    """Plays the check from `num_states` fresh episodes for `num_chunks` chunks.

    sample_fn(obs, key, mode) -> actions f32[B, k, 7] (env units; obs = env observation batch with
    images and instruction_id); predict_fn(images uint8[B, V, H, W, 3], instruction_id int32[B],
    actions, key) -> next images; reward_fn(images, instruction_id) -> p_success f32[B]. Between
    chunks the states advance with one deterministic chunk, so later chunks start from states the
    policy reaches. -> agreement_metrics plus mean squared pixel error of the prediction and of
    copying the current frame, per view; with return_samples, also the per-chunk arrays (group,
    success, the three scores, pixel errors f32[N, V]) as a second output.
    """
    a = samples_per_state
    step_chunk = jax.jit(jax.vmap(env.step_chunk))
    states = jax.jit(jax.vmap(env.reset))(jax.random.split(jax.random.fold_in(key, 0), num_states))
    # Every state is carried as `a` identical copies, so the simulator sees one batch shape.
    branched = jax.tree.map(lambda x: jnp.repeat(x, a, axis=0), states)
    rows = []
    for c in range(num_chunks):
        ckey = jax.random.fold_in(key, c + 1)
        images, ids = branched.obs["images"], branched.obs["instruction_id"]
        actions = sample_fn(branched.obs, jax.random.fold_in(ckey, 0), "train")
        nxt, _, success = step_chunk(branched, actions)
        predicted = predict_fn(images, ids, actions, jax.random.fold_in(ckey, 1))
        real = nxt.obs["images"]
        err = lambda x: jnp.mean((x.astype(jnp.float32) - real.astype(jnp.float32)) ** 2,  # noqa: E731
                                 axis=(2, 3, 4))
        rows.append({"group": np.repeat(np.arange(num_states) + c * num_states, a),
                     "success": np.asarray(success[:, -1]),
                     "imagined": np.asarray(reward_fn(predicted, ids)),
                     "real_next": np.asarray(reward_fn(real, ids)),
                     "current": np.asarray(reward_fn(images, ids)),
                     "mse_predicted": np.asarray(err(predicted)), "mse_copy": np.asarray(err(images))})
        advance = sample_fn(branched.obs, jax.random.fold_in(ckey, 2), "eval")[::a]
        branched, _, _ = step_chunk(branched, jnp.repeat(advance, a, axis=0))
    cat = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
    out = agreement_metrics(cat["group"], cat["success"],
                            {k: cat[k] for k in ("imagined", "real_next", "current")})
    for v in range(cat["mse_copy"].shape[1]):
        out[f"mse_predicted_view{v}"] = float(cat["mse_predicted"][:, v].mean())
        out[f"mse_copy_view{v}"] = float(cat["mse_copy"][:, v].mean())
    return (out, cat) if return_samples else out


def run_check(config, policy, params, tokenizer, wm, wm_params, key: jax.Array, num_states: int,
              samples_per_state: int, num_chunks: int) -> dict:
    """`measure` with a policy (models/policy.Policy) and a world model (models/world_model)."""
    env = make_env(config)
    texts = list(env.instructions)
    tok, tmask = map(jnp.asarray, tokenizer.encode_batch(texts, config.data.max_text_len))
    wtok, wmask = map(jnp.asarray, ByteTokenizer().encode_batch(texts, config.wm.max_text_len))
    sample = {mode: jax.jit(lambda p, o, k, mode=mode: policy.sample(p, o, k, mode=mode))
              for mode in ("train", "eval")}
    predict, reward = jax.jit(wm.predict), jax.jit(wm.reward)

    def sample_fn(obs, k, mode):
        ids = obs["instruction_id"]
        return sample[mode](params, {"images": obs["images"], "tokens": tok[ids], "token_mask": tmask[ids]}, k)

    return measure(env, sample_fn,
                   lambda images, ids, actions, k: predict(wm_params, images, wtok[ids], wmask[ids], actions, k),
                   lambda images, ids: reward(wm_params, images, wtok[ids], wmask[ids]),
                   key, num_states, samples_per_state, num_chunks)
