"""The `reward` stage: a separate success classifier (models/success_classifier.py) for MBPO to read
instead of the world model's Yes/No (config.rl.reward_model='classifier').

It trains on every frame of the world model's data: config.wm.pretrain_data ('' = config.data's
dataset, the demos), config.wm.play_data and the collect stage's rollouts (config.wm.finetune_data in
their place when set), the policy's own failures included. A frame is Yes where its task holds: the
last frame of a successful episode, since the simulator's episodes stop at the first success
(config.wm.reward_labels 'outcome'), so the near-success frames before it are No. With
config.reward.predicted_views it also trains on the fine-tuned world model's predictions of frame
t + k from frame t under the episode's own chunk (up to config.reward.predicted_frames of them, the
frames near a success first), labelled Yes where the episode's success lies within that chunk: the
views imagined branches end on. The last tenth of each dataset's episodes is held out; the threshold
of best F1 on their frames (real and, with predicted_views, predicted; 0.5 without a held-out
success) is saved with the weights.
"""
from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from vlambpo_jax.data.tokenizer import load_wm_tokenizer
from vlambpo_jax.errors import UserError
from vlambpo_jax.models import success_classifier
from vlambpo_jax.rl.wm_agreement import auc, best_f1_threshold, f1
from vlambpo_jax.stages import common, wm_common

KEYS = ("images", "tokens", "token_mask", "yes")


def classifier_from_config(config) -> success_classifier.SuccessClassifier:
    r = config.reward
    return success_classifier.SuccessClassifier(
        views=len(config.views), members=int(r.members), widths=tuple(r.widths), features=int(r.features),
        text_dim=int(r.text_dim), hidden=int(r.hidden), aggregate=str(r.aggregate))


def load_split(ctx) -> tuple[list, list, dict, dict]:
    """-> (training episodes, held-out episodes, normalization stats, {source: episodes})."""
    w = ctx.config.wm
    collected = w.finetune_data or wm_common.find_rlds(Path(ctx.workdir) / "collect")
    sources = [w.pretrain_data, *tuple(w.play_data)] + ([collected] if collected else [])
    train, heldout, counts, stats = [], [], {}, None
    for source in sources:
        episodes, stats, _ = wm_common.load_episodes(ctx, source, stats)
        tr, ev = wm_common.split_heldout(episodes)
        train += tr
        heldout += ev
        counts[source or "config.data"] = len(episodes)
    return train, heldout or train, stats, counts


def real_frames(config, episodes) -> dict:
    """Every frame of the episodes, Yes where the task holds (SuccessClassifier.train's layout)."""
    tokenizer = load_wm_tokenizer(config.wm)
    ex = wm_common.RewardExamples(episodes, 1, 0, int(config.wm.max_text_len), "outcome", tokenizer).every_frame()
    return {"images": ex["reward_images"], "tokens": ex["reward_tokens"], "token_mask": ex["reward_token_mask"],
            "yes": ex["reward_yes"]}


def predicted_frames(config, wm, params, episodes, stats, limit: int, seed: int, batch_size: int = 128) -> dict:
    """World model `wm`'s views of frame t + k predicted from frame t under the episode's chunk at t,
    for up to `limit` frames t (every t within 3 chunks of a successful episode's end first, then a
    random draw of the rest), Yes where the success is within the chunk (steps_to_end <= k)."""
    k = int(config.chunk_size)
    groups = {True: [], False: []}   # near a success or not
    for ep in episodes:
        for t in range(ep["length"] - 1):
            groups[bool(ep["success"]) and ep["length"] - 1 - t <= 3 * k].append((ep, t))
    rest = groups[False]
    picks = (groups[True] + [rest[i] for i in np.random.default_rng(seed).permutation(len(rest))])[:limit]
    predict = jax.jit(wm.predict)
    tokenizer = load_wm_tokenizer(config.wm)
    out = {key: [] for key in KEYS}
    for i in range(0, len(picks), batch_size):
        b = wm_common.transition_batch(picks[i:i + batch_size], config, stats, tokenizer)
        key = jax.random.fold_in(jax.random.PRNGKey(seed), i)
        out["images"].append(np.asarray(predict(params, b["images"], b["tokens"], b["token_mask"], b["actions"], key)))
        out["tokens"].append(b["tokens"])
        out["token_mask"].append(b["token_mask"])
        out["yes"].append(np.asarray(b["episode_success"], bool) & (np.asarray(b["steps_to_end"]) <= k))
        print(f"[reward] predicted {min(i + batch_size, len(picks))}/{len(picks)} views", flush=True)
    return {key: np.concatenate(v) for key, v in out.items()}


def _join(*frame_sets) -> dict:
    return {key: np.concatenate([f[key] for f in frame_sets]) for key in KEYS}


def _metrics(score, yes, threshold) -> dict:
    return {"frames": int(len(yes)), "yes": int(yes.sum()), "auc": auc(score, yes),
            "f1": f1(score > threshold, yes),
            "false_positive_rate": float(np.mean(score[~yes] > threshold)) if (~yes).any() else 0.0,
            "true_positive_rate": float(np.mean(score[yes] > threshold)) if yes.any() else 0.0}


def run(ctx) -> dict:
    config, r = ctx.config, ctx.config.reward
    train_eps, heldout_eps, stats, counts = load_split(ctx)
    train, heldout = real_frames(config, train_eps), {"real": real_frames(config, heldout_eps)}
    if r.predicted_views:
        limit = int(r.predicted_frames)
        wm, wm_params, _ = common.load_world_model(ctx)
        predicted = predicted_frames(config, wm, wm_params, train_eps, stats, limit, int(config.seed))
        heldout["predicted"] = predicted_frames(config, wm, wm_params, heldout_eps, stats, max(limit // 10, 1),
                                                int(config.seed) + 1)
        train = _join(train, predicted)
    if not train["yes"].any():
        raise UserError("reward stage: no successful episode in the training data, so no Yes frame to learn from")
    classifier = classifier_from_config(config)
    key = jax.random.fold_in(jax.random.PRNGKey(int(config.seed)), 0x5EED)
    params = classifier.init(key, train["images"].shape[2:4], train["tokens"].shape[1])
    print(f"[reward] {len(train['yes'])} training frames ({int(train['yes'].sum())} Yes) from "
          + ", ".join(f"{k} ({v} episodes)" for k, v in counts.items()))
    params, info = classifier.train(
        params, train, jax.random.fold_in(key, 1), int(r.steps), int(r.batch_size), float(r.lr),
        int(r.augment_shift), progress=lambda i, n: print(f"[reward] step {i}/{n}", flush=True))
    scores = {name: classifier.predict_frames(params, frames) for name, frames in heldout.items()}
    all_heldout = _join(*heldout.values())
    threshold, best_f1 = best_f1_threshold(np.concatenate(list(scores.values())), all_heldout["yes"])
    if not np.isfinite(threshold):
        threshold = 0.5
        print("[reward] no held-out success frame to choose the threshold on: it stays 0.5")
    params = dict(params, threshold=np.float32(threshold))
    path = ctx.stage_dir / common.CLASSIFIER_FILE
    common.write_once("reward", lambda: success_classifier.save(path, classifier, params))
    summary = {"classifier": str(path), "train_frames": int(len(train["yes"])), "train_yes": int(train["yes"].sum()),
               "threshold": threshold, "heldout_best_f1": best_f1, "train_loss": info["loss"],
               "seconds": info["seconds"], "sources": counts,
               **{f"heldout_{name}": _metrics(scores[name], frames["yes"], threshold)
                  for name, frames in heldout.items()}}
    for name in heldout:
        m = summary[f"heldout_{name}"]
        print(f"[reward] held-out {name} frames: AUC {m['auc']:.3f}, F1 {m['f1']:.3f}, true positives "
              f"{m['true_positive_rate']:.3f}, false positives {m['false_positive_rate']:.4f} at threshold "
              f"{threshold:.3f}")
    return summary
