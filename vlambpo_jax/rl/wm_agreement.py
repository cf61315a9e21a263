"""Can the world model stand in for the simulator? Two checks against the simulator.

Ranking. MBPO learns only from imagined branches, so what matters is not PSNR but whether the
imagined reward ranks chunks the way the simulator would. From R real states, A Flow-SDE chunks each
are played both in the simulator and in the world model; the simulator's success after the chunk is
the label, scored by:
  imagined      the world-model reward on the predicted views (what MBPO sees)
  real_next     the same reward on the simulator's next views (the reward model alone)
  current       the same reward on the views before the chunk (no prediction: the state alone)
AUC (Mann-Whitney) over all pairs, and within each state whose A chunks had mixed outcomes (only
there can a reward rank actions). MBPO's reward is binary, p(Yes) > its threshold: for each
score, the share of chunks it calls a success at that threshold (against the simulator's) with its F1,
and the threshold of best F1 (WMPO's choice, on these fresh states: pass it as rl.reward_threshold).
If `imagined` is no better than `current`, the model adds nothing about the action's effect, and a
policy gradient from imagined branches is mostly noise. Action sensitivity, beside it: for every pair of
chunks from one state, the cosine between the predicted and the real difference of their next views, and
the ratio of the two differences' norms (0 when the model ignores the action, 1 when it moves as much as
the simulator).

Value. Where a branch stops after its chunk, MBPO adds the value of the state it reaches; the
value's ranking of chunks is what the bootstrap gives the policy. With a value (value_fn, e.g. the
`reward` stage's value classifier), every chunk's real next state is also played on to the episode's
end by the policy's deterministic chunks; its eventual success is the label of the value read on the
imagined next views, the real ones and the current ones (value_imagined / value_real_next /
value_current: the same AUCs, over states whose chunks differ in eventual outcome).

Drift. Driven open-loop by the policy's chunks (its own predictions fed back), does the imagined
gripper stay where the real one is? The consistency probe (models/state_probe.py) reads the
end-effector xyz from each view after every chunk: its error against the simulator's true position
on the imagined views, on the real views (the probe's floor) and on the first frame (copying it).

The report stage runs both (config.report.agreement_*); on a finished run, with more samples:
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

from vlambpo_jax.envs import horizon_chunks
from vlambpo_jax.envs.tabletop import make_env
from vlambpo_jax.models import state_probe


def auc(score: np.ndarray, label: np.ndarray) -> float:
    """P(score of a random positive > score of a random negative), ties 1/2; NaN with one class."""
    label = np.asarray(label, bool)
    pos, neg = np.asarray(score)[label], np.asarray(score)[~label]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    diff = pos[:, None] - neg[None, :]
    return float((diff > 0).mean() + 0.5 * (diff == 0).mean())


def f1(predicted: np.ndarray, label: np.ndarray) -> float:
    """F1 of bool predictions against bool labels; 0 when there is no true positive."""
    tp = float(np.sum(predicted & label))
    return 2 * tp / (np.sum(predicted) + np.sum(label)) if tp else 0.0


def best_f1_threshold(score: np.ndarray, label: np.ndarray) -> tuple[float, float]:
    """The threshold t of best F1 for the prediction score > t, over the midpoints between distinct
    scores (and just below the lowest). -> (t, F1); (NaN, 0.0) without a positive label."""
    label = np.asarray(label, bool)
    if not label.any():
        return float("nan"), 0.0
    order = np.argsort(-np.asarray(score, np.float64), kind="stable")
    s, hit = np.asarray(score, np.float64)[order], label[order]
    tp = np.cumsum(hit)                                     # the top i + 1 scores called successes
    last = np.append(s[1:] < s[:-1], True)                 # cut only between distinct scores
    f1s = np.where(last, 2 * tp / (np.arange(1, len(s) + 1) + hit.sum()), -1.0)
    i = int(np.argmax(f1s))
    t = (s[i] + s[i + 1]) / 2 if i + 1 < len(s) else np.nextafter(s[i], -np.inf)
    return float(t), float(f1s[i])


def agreement_metrics(group: np.ndarray, success: np.ndarray, scores: dict[str, np.ndarray],
                      threshold: float = 0.5) -> dict:
    """group int[N] (the state each chunk started from), success bool[N], scores name -> f32[N].

    -> {success_rate, auc_<name>, mixed_states, within_auc_<name> (mean over mixed states, NaN if
    none), within_auc_<name>_ci95 (95% percentile bootstrap over the mixed states, 2,000 resamples of
    a fixed seed; None with fewer than 2), within_auc_<name>_per_state (each mixed state's AUC),
    positive_rate_<name> and f1_<name> (score > threshold called a success), best_f1_threshold_<name>
    and best_f1_<name>}."""
    success = np.asarray(success, bool)
    out = {"samples": int(len(success)), "success_rate": float(success.mean())}
    mixed = [g for g in np.unique(group) if 0 < success[group == g].sum() < (group == g).sum()]
    out["mixed_states"] = len(mixed)
    for name, s in scores.items():
        s = np.asarray(s)
        out[f"auc_{name}"] = auc(s, success)
        within = [auc(s[group == g], success[group == g]) for g in mixed]
        out[f"within_auc_{name}"] = float(np.mean(within)) if within else float("nan")
        out[f"within_auc_{name}_ci95"] = bootstrap_ci(np.asarray(within)) if len(within) > 1 else None
        out[f"within_auc_{name}_per_state"] = [round(x, 4) for x in within]
        out[f"positive_rate_{name}"] = float((s > threshold).mean())
        out[f"f1_{name}"] = f1(s > threshold, success)
        out[f"best_f1_threshold_{name}"], out[f"best_f1_{name}"] = best_f1_threshold(s, success)
    return out


def bootstrap_ci(values: np.ndarray, resamples: int = 2000, seed: int = 0) -> list[float]:
    """95% percentile bootstrap interval of the mean of values f[n] (resampling the n values)."""
    values = np.asarray(values, np.float64)
    return bootstrap_ratio_ci(values, np.ones_like(values), resamples, seed)


def bootstrap_ratio_ci(num: np.ndarray, den: np.ndarray, resamples: int = 2000, seed: int = 0) -> list[float]:
    """95% percentile bootstrap interval of sum(num) / sum(den) over paired values f[n] (resampling the pairs)."""
    idx = np.random.default_rng(seed).integers(0, len(num), (resamples, len(num)))
    ratios = num[idx].sum(axis=1) / np.maximum(den[idx].sum(axis=1), 1e-12)
    return [float(x) for x in np.percentile(ratios, [2.5, 97.5])]


def to_json(metrics: dict) -> str:
    """The metrics as strict JSON: an undefined AUC (NaN: one class only) becomes null."""
    return json.dumps({k: None if isinstance(v, float) and math.isnan(v) else v for k, v in metrics.items()},
                      indent=2)


def eventual_success(step_chunk: Callable, state, sample_fn: Callable, key: jax.Array,
                     max_chunks: int) -> np.ndarray:
    """Plays env states [B] on with the policy's deterministic chunks until every episode is over (at
    most max_chunks chunks) -> bool[B]: the episode succeeded (at once or later). step_chunk(states,
    actions) -> (states, rewards, success), batched and jitted once by the caller."""
    for c in range(max_chunks):
        if np.asarray(state.done).all():
            break
        state, _, _ = step_chunk(state, sample_fn(state.obs, jax.random.fold_in(key, c), "eval"))
    return np.asarray(state.success)


def measure(env, sample_fn: Callable, predict_fn: Callable, reward_fn: Callable, key: jax.Array,
            num_states: int, samples_per_state: int, num_chunks: int, return_samples: bool = False,
            threshold: float = 0.5, value_fn: Callable | None = None, max_chunks: int = 0):
    """Plays the check from `num_states` fresh episodes for `num_chunks` chunks.

    sample_fn(obs, key, mode) -> actions f32[B, k, 7] (env units; obs = env observation batch with
    images and instruction_id); predict_fn(images uint8[B, V, H, W, 3], instruction_id int32[B],
    actions, key) -> next images; reward_fn(images, instruction_id) -> p_success f32[B]. Between
    chunks the states advance with one deterministic chunk, so later chunks start from states the
    policy reaches. -> agreement_metrics (at `threshold`) plus mean squared pixel error of the prediction and of
    copying the current frame, and the pair_differences summaries (pair_cosine_view<v>: mean,
    pair_norm_ratio_view<v>: median), per view; with return_samples, also the per-chunk arrays (group,
    success, the three scores, pixel errors f32[N, V]) as a second output. value_fn(images,
    instruction_id) -> f32[B]: also the value check (module docstring), each real next state played
    on for at most max_chunks chunks; its agreement_metrics keys start with eventual_
    (eventual_auc_value_imagined, ...).
    """
    a = samples_per_state
    pair_cos, pair_ratio = [], []
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
        if value_fn is not None:
            eventual = eventual_success(step_chunk, nxt, sample_fn, jax.random.fold_in(ckey, 3), max_chunks)
            rows[-1].update({"eventual": eventual,
                             "value_imagined": np.asarray(value_fn(predicted, ids)),
                             "value_real_next": np.asarray(value_fn(real, ids)),
                             "value_current": np.asarray(value_fn(images, ids))})
        cos, ratio = pair_differences(np.asarray(predicted), np.asarray(real), a)
        pair_cos.append(cos)
        pair_ratio.append(ratio)
        advance = sample_fn(branched.obs, jax.random.fold_in(ckey, 2), "eval")[::a]
        branched, _, _ = step_chunk(branched, jnp.repeat(advance, a, axis=0))
    cat = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
    out = agreement_metrics(cat["group"], cat["success"],
                            {k: cat[k] for k in ("imagined", "real_next", "current")}, threshold)
    if value_fn is not None:
        value = agreement_metrics(cat["group"], cat["eventual"],
                                  {k: cat[k] for k in ("value_imagined", "value_real_next", "value_current")})
        out.update({f"eventual_{k}": v for k, v in value.items() if k != "samples"})
    for v in range(cat["mse_copy"].shape[1]):
        out[f"mse_predicted_view{v}"] = float(cat["mse_predicted"][:, v].mean())
        out[f"mse_copy_view{v}"] = float(cat["mse_copy"][:, v].mean())
    cos, ratio = np.concatenate(pair_cos), np.concatenate(pair_ratio)
    for v in range(cos.shape[1]):
        moved = ~np.isnan(cos[:, v])
        out[f"pair_cosine_view{v}"] = float(cos[moved, v].mean()) if moved.any() else float("nan")
        out[f"pair_norm_ratio_view{v}"] = float(np.median(ratio[moved, v])) if moved.any() else float("nan")
    return (out, cat) if return_samples else out


def pair_differences(predicted: np.ndarray, real: np.ndarray, a: int) -> tuple[np.ndarray, np.ndarray]:
    """predicted, real uint8[S a, V, H, W, 3]: the next views of `a` consecutive chunks per state.
    For every pair (i < j) of chunks from one state and every view: the cosine between the predicted
    difference p_i - p_j and the real one r_i - r_j, and |p_i - p_j| / |r_i - r_j|. -> (cosine,
    ratio) f32[S a (a - 1) / 2, V]; NaN where the real views did not differ. A predicted difference
    of zero has cosine 0."""
    n, v = real.shape[:2]
    flat = lambda x: x.reshape(n // a, a, v, -1).astype(np.float32)  # noqa: E731
    p, r = flat(predicted), flat(real)
    i, j = np.triu_indices(a, 1)
    dp, dr = p[:, i] - p[:, j], r[:, i] - r[:, j]                       # [S, P, V, D]
    norm_p, norm_r = np.linalg.norm(dp, axis=-1), np.linalg.norm(dr, axis=-1)
    moved = norm_r > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = np.where(moved, (dp * dr).sum(-1) / np.maximum(norm_p * norm_r, 1e-12), np.nan)
        ratio = np.where(moved, norm_p / norm_r, np.nan)
    return cos.reshape(-1, v), ratio.reshape(-1, v)


def open_loop_drift(env, sample_fn: Callable, predict_fn: Callable, read_fn: Callable, key: jax.Array,
                    num_states: int, num_chunks: int, exact_fn: Callable | None = None) -> dict:
    """From `num_states` fresh episodes the policy's deterministic chunks step the simulator, and the
    world model is driven open-loop by the same chunks from the first frame. After each chunk the
    probe reads the end-effector xyz from the imagined views, the real views and the first frame.

    sample_fn, predict_fn as in `measure`; read_fn(images uint8[B, V, H, W, 3]) -> state readings
    f32[B, V, D] (xyz in state_probe.POS_DIMS). -> {drift_<source>_view<v>: mean xyz error (m) against
    the simulator's end effector after chunks 1..num_chunks, one list per source (imagined | real |
    copy) and view; drift_<source>_vs_real_view<v> (every source but real): the mean distance between
    that source's reading and the real view's, where the probe's own error on real frames cancels;
    motion_gain_<source>_view<v> (imagined, exact): how far the source's reading moved from the first
    frame's along the real view's move, sum(d_source . d_real) / sum(|d_real|^2) over the states (1 = as
    far as the real view, 0 = not at all, as copying); drift_ratio_ci_view<v>: per chunk, the 95% bootstrap
    interval over the states of drift_imagined_vs_real / drift_copy_vs_real (issue 18's bar);
    drift_along_vs_real_view<v> / drift_across_vs_real_view<v>: the mean size of the imagined reading's
    error against the real view's along the real move (short of or past it) and across it}.
    exact_fn(views, real next views) -> views, the world model's decoding of the exact next latents,
    adds the source 'exact': a chain of such steps from the first frame, the ceiling that the model's
    VAE and decoding put on its drift."""
    states = jax.jit(jax.vmap(env.reset))(jax.random.split(jax.random.fold_in(key, 0), num_states))
    step_chunk = jax.jit(jax.vmap(env.step_chunk))
    first = imagined = exact = states.obs["images"]
    ids = states.obs["instruction_id"]
    pos = list(state_probe.POS_DIMS)
    errs: dict[str, list] = {}
    for c in range(num_chunks):
        ckey = jax.random.fold_in(key, c + 1)
        actions = sample_fn(states.obs, jax.random.fold_in(ckey, 0), "eval")
        imagined = predict_fn(imagined, ids, actions, jax.random.fold_in(ckey, 1))
        states, _, _ = step_chunk(states, actions)
        truth = np.asarray(states.obs["state"])[:, None, pos]                    # [B, 1, 3]
        sources = [("imagined", imagined), ("real", states.obs["images"]), ("copy", first)]
        if exact_fn is not None:
            exact = exact_fn(exact, states.obs["images"])
            sources.append(("exact", exact))
        readings = {source: np.asarray(read_fn(images))[..., pos] for source, images in sources}   # [B, V, 3]
        for source, reading in readings.items():
            against = [("", truth)] + ([("_vs_real", readings["real"])] if source != "real" else [])
            for suffix, target in against:
                for v, e in enumerate(np.linalg.norm(reading - target, axis=-1).mean(0)):
                    errs.setdefault(f"drift_{source}{suffix}_view{v}", []).append(float(e))
        moved = readings["real"] - readings["copy"]                                    # [B, V, 3]
        for source in ("imagined", "exact"):
            if source in readings:
                along = ((readings[source] - readings["copy"]) * moved).sum((0, 2))
                for v, g in enumerate(along / np.maximum((moved ** 2).sum((0, 2)), 1e-12)):
                    errs.setdefault(f"motion_gain_{source}_view{v}", []).append(float(g))
        # the imagined reading's miss of the real view's: over copying's (whose miss is the real move) with
        # a bootstrap interval, and split along / across the real move
        miss = readings["imagined"] - readings["real"]                                  # [B, V, 3]
        move = np.linalg.norm(moved, axis=-1)                                          # [B, V]
        unit = moved / np.maximum(move[..., None], 1e-9)
        along_miss = (miss * unit).sum(-1)                                             # [B, V]
        across_miss = np.linalg.norm(miss - along_miss[..., None] * unit, axis=-1)
        for v in range(miss.shape[1]):
            errs.setdefault(f"drift_ratio_ci_view{v}", []).append(
                bootstrap_ratio_ci(np.linalg.norm(miss[:, v], axis=-1), move[:, v]))
            errs.setdefault(f"drift_along_vs_real_view{v}", []).append(float(np.abs(along_miss[:, v]).mean()))
            errs.setdefault(f"drift_across_vs_real_view{v}", []).append(float(across_miss[:, v].mean()))
    return errs


def run_check(config, policy, params, tokenizer, wm, wm_params, threshold: float, key: jax.Array, num_states: int,
              samples_per_state: int, num_chunks: int, probe: dict | None = None, value=None,
              ranking: bool = True) -> dict:
    """`measure` with a policy (models/policy.Policy) and a world model (models/world_model, or one
    whose reward is a separate classifier) whose success is p > threshold; with a state probe also
    `open_loop_drift` from as many states over as many chunks; with value, the value check too:
    value 'critic' reads the policy's own value head, (SuccessClassifier, params) the classifier's
    P(success) with the world model's tokens of the instruction. ranking=False skips `measure` (the
    drift alone)."""
    env = make_env(config)
    texts = list(env.instructions)
    tok, tmask = map(jnp.asarray, tokenizer.encode_batch(texts, config.data.max_text_len))
    wtok, wmask = map(jnp.asarray, wm.tokenizer.encode_batch(texts, config.wm.max_text_len))
    sample = {mode: jax.jit(lambda p, o, k, mode=mode: policy.sample(p, o, k, mode=mode))
              for mode in ("train", "eval")}
    predict, reward = jax.jit(wm.predict), jax.jit(wm.reward)

    def sample_fn(obs, k, mode):
        ids = obs["instruction_id"]
        return sample[mode](params, {"images": obs["images"], "tokens": tok[ids], "token_mask": tmask[ids]}, k)

    def predict_fn(images, ids, actions, k):
        return predict(wm_params, images, wtok[ids], wmask[ids], actions, k)

    value_fn = None
    if value == "critic":
        critic = jax.jit(policy.value)
        value_fn = lambda images, ids: critic(params, {"images": images, "tokens": tok[ids],  # noqa: E731
                                                       "token_mask": tmask[ids]})
    elif value is not None:
        value_prob = jax.jit(value[0].probability)
        value_fn = lambda images, ids: value_prob(value[1], images, wtok[ids], wmask[ids])  # noqa: E731
    reward_fn = lambda images, ids: reward(wm_params, images, wtok[ids], wmask[ids])  # noqa: E731
    metrics = measure(env, sample_fn, predict_fn, reward_fn, key, num_states, samples_per_state, num_chunks,
                      threshold=threshold, value_fn=value_fn, max_chunks=horizon_chunks(config)) if ranking else {}
    if probe is not None:
        exact = jax.jit(wm.exact_latent_next)
        metrics.update(open_loop_drift(env, sample_fn, predict_fn, lambda images: state_probe.read_jit(probe, images),
                                       jax.random.fold_in(key, 99), num_states, num_chunks,
                                       exact_fn=lambda images, real: exact(wm_params, images, real)))
    return metrics
