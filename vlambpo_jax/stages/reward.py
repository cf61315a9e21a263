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

With config.reward.value a second ensemble of the same shape learns the value MBPO can bootstrap
from instead of its critic (config.rl.bootstrap_model='classifier'): P(the episode succeeds from
this frame), on every frame of the collected rollouts alone (the SFT policy's own episodes, so it is
that policy's Monte-Carlo value), and with predicted_views on the world model's predictions of their
frame t + k (a uniform draw), labelled by their episode's outcome. Trained on what the world model
imagines against what really followed, it reads predicted views as the truth about them allows, where
the critic's value of a predicted view is exploited (docs/results.md section 48).
"""
from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from vlambpo_jax.data import rlds_reader
from vlambpo_jax.data.tokenizer import load_wm_tokenizer
from vlambpo_jax.errors import UserError
from vlambpo_jax.models import success_classifier
from vlambpo_jax.rl.wm_agreement import auc, best_f1_threshold, f1
from vlambpo_jax.stages import common, wm_common

KEYS = ("images", "tokens", "token_mask", "yes")
COLLECTED = "collect"   # load_split's name for the collected rollouts (or config.wm.finetune_data)


def classifier_from_config(config) -> success_classifier.SuccessClassifier:
    r = config.reward
    return success_classifier.SuccessClassifier(
        views=len(config.views), members=int(r.members), widths=tuple(r.widths), features=int(r.features),
        text_dim=int(r.text_dim), hidden=int(r.hidden), aggregate=str(r.aggregate))


def load_split(ctx) -> tuple[dict, dict]:
    """-> ({source: (training episodes, held-out episodes)}, normalization stats). Sources: the
    world model's pretraining data ('config.data' when it is config.data's dataset), each play
    dataset, and COLLECTED (the collect stage's rollouts, or config.wm.finetune_data) when there is one."""
    w = ctx.config.wm
    collected = wm_common.collected_data(ctx)
    sources = [(w.pretrain_data or "config.data", w.pretrain_data), *((p, p) for p in w.play_data)]
    sources += [(COLLECTED, collected)] if collected else []
    splits, stats = {}, None
    for name, builder_dir in sources:
        episodes, stats, _ = wm_common.load_episodes(ctx, builder_dir, stats)
        train, heldout = wm_common.split_heldout(episodes)
        splits[name] = (train, heldout or train)
    return splits, stats


def real_frames(config, episodes) -> dict:
    """Every frame of the episodes, Yes where the task holds (SuccessClassifier.train's layout)."""
    tokenizer = load_wm_tokenizer(config.wm)
    ex = wm_common.RewardExamples(episodes, 1, 0, int(config.wm.max_text_len), "outcome", tokenizer).every_frame()
    return {"images": ex["reward_images"], "tokens": ex["reward_tokens"], "token_mask": ex["reward_token_mask"],
            "yes": ex["reward_yes"]}


def value_frames(config, episodes) -> dict:
    """Every frame of the episodes, Yes where its episode succeeds (the Monte-Carlo label of the
    value under the policy that played them; SuccessClassifier.train's layout)."""
    samples = [(ep, t) for ep in episodes for t in range(ep["length"])]
    b = rlds_reader.make_batch(samples, chunk_size=1, max_text_len=int(config.wm.max_text_len), future=True,
                               tokenizer=load_wm_tokenizer(config.wm))
    return {"images": b["images"], "tokens": b["tokens"], "token_mask": b["token_mask"],
            "yes": np.array([bool(ep["success"]) for ep, _ in samples])}


def predicted_frames(config, wm, params, episodes, stats, limit: int, seed: int, label: str = "chunk",
                     batch_size: int = 128) -> dict:
    """World model `wm`'s views of frame t + k predicted from frame t under the episode's chunk at t,
    for up to `limit` frames t. label 'chunk' (the reward): every t within 3 chunks of a successful
    episode's end first, then a random draw of the rest, Yes where the success is within the chunk
    (steps_to_end <= k); 'episode' (the value): a random draw, Yes where the episode succeeds."""
    k = int(config.chunk_size)
    groups = {True: [], False: []}   # near a success or not
    for ep in episodes:
        for t in range(ep["length"] - 1):
            near = label == "chunk" and bool(ep["success"]) and ep["length"] - 1 - t <= 3 * k
            groups[near].append((ep, t))
    rest = groups[False]
    picks = (groups[True] + [rest[i] for i in np.random.default_rng(seed).permutation(len(rest))])[:limit]
    out = {key: [] for key in KEYS}
    for b, predicted in wm_common.predicted_transitions(config, wm, params, picks, stats, seed, batch_size, "reward"):
        out["images"].append(predicted)
        out["tokens"].append(b["tokens"])
        out["token_mask"].append(b["token_mask"])
        success = np.asarray(b["episode_success"], bool)
        out["yes"].append(success & (np.asarray(b["steps_to_end"]) <= k) if label == "chunk" else success)
    return {key: np.concatenate(v) for key, v in out.items()}


def _join(*frame_sets) -> dict:
    return {key: np.concatenate([f[key] for f in frame_sets]) for key in KEYS}


def _metrics(score, yes, threshold) -> dict:
    return {"frames": int(len(yes)), "yes": int(yes.sum()), "auc": auc(score, yes),
            "f1": f1(score > threshold, yes),
            "false_positive_rate": float(np.mean(score[~yes] > threshold)) if (~yes).any() else 0.0,
            "true_positive_rate": float(np.mean(score[yes] > threshold)) if yes.any() else 0.0,
            "mean_probability": float(np.mean(score)) if len(score) else float("nan"),
            "yes_rate": float(np.mean(yes)) if len(yes) else float("nan")}


def fit(ctx, name: str, train: dict, heldout: dict, path: Path, salt: int) -> dict:
    """Trains a classifier of config.reward's shape on frames `train`, scores it on each set of
    `heldout` ({set name: frames}), chooses the threshold of best held-out F1 (0.5 without a held-out
    Yes) and saves it to `path`. -> its summary."""
    config, r = ctx.config, ctx.config.reward
    if not train["yes"].any() or train["yes"].all():
        raise UserError(f"reward stage ({name}): the training frames are all "
                        f"{'Yes' if train['yes'].all() else 'No'}: no contrast to learn from")
    classifier = classifier_from_config(config)
    key = jax.random.fold_in(jax.random.PRNGKey(int(config.seed)), salt)
    params = classifier.init(key, train["images"].shape[2:4], train["tokens"].shape[1])
    print(f"[reward] {name}: {len(train['yes'])} training frames ({int(train['yes'].sum())} Yes)")
    params, info = classifier.train(
        params, train, jax.random.fold_in(key, 1), int(r.steps), int(r.batch_size), float(r.lr),
        int(r.augment_shift), progress=lambda i, n: print(f"[reward] {name} step {i}/{n}", flush=True))
    scores = {set_name: classifier.predict_frames(params, frames) for set_name, frames in heldout.items()}
    all_heldout = _join(*heldout.values())
    threshold, best_f1 = best_f1_threshold(np.concatenate(list(scores.values())), all_heldout["yes"])
    if not np.isfinite(threshold):
        threshold = 0.5
        print(f"[reward] {name}: no held-out Yes frame to choose the threshold on: it stays 0.5")
    params = dict(params, threshold=np.float32(threshold))
    common.write_once(f"reward_{name}", lambda: success_classifier.save(path, classifier, params))
    summary = {"classifier": str(path), "train_frames": int(len(train["yes"])), "train_yes": int(train["yes"].sum()),
               "threshold": threshold, "heldout_best_f1": best_f1, "train_loss": info["loss"],
               "seconds": info["seconds"]}
    for set_name, frames in heldout.items():
        m = summary[f"heldout_{set_name}"] = _metrics(scores[set_name], frames["yes"], threshold)
        print(f"[reward] {name}, held-out {set_name} frames: AUC {m['auc']:.3f}, F1 {m['f1']:.3f}, true "
              f"positives {m['true_positive_rate']:.3f}, false positives {m['false_positive_rate']:.4f} at "
              f"threshold {threshold:.3f}, mean P(Yes) {m['mean_probability']:.3f} (Yes rate {m['yes_rate']:.3f})")
    return summary


def run(ctx) -> dict:
    config, r = ctx.config, ctx.config.reward
    splits, stats = load_split(ctx)
    if r.value and COLLECTED not in splits:   # before minutes of training the reward classifier
        raise UserError("reward stage: config.reward.value learns the value of the collected rollouts: "
                        "run the collect stage first (or set config.wm.finetune_data)")
    train_eps = [ep for tr, _ in splits.values() for ep in tr]
    heldout_eps = [ep for _, ev in splits.values() for ep in ev]
    print("[reward] sources: " + ", ".join(f"{k} ({len(tr) + len(ev)} episodes)" for k, (tr, ev) in splits.items()))
    train, heldout = real_frames(config, train_eps), {"real": real_frames(config, heldout_eps)}
    if r.predicted_views:
        wm, wm_params, _ = common.load_world_model(ctx)
        limit, seed = int(r.predicted_frames), int(config.seed)

        def predicted(episodes, heldout_set: bool, label: str = "chunk", salt: int = 0):
            n = max(limit // 10, 1) if heldout_set else limit   # a held-out tenth
            return predicted_frames(config, wm, wm_params, episodes, stats, n, seed + salt + heldout_set, label)
        train = _join(train, predicted(train_eps, False))
        heldout["predicted"] = predicted(heldout_eps, True)
    summary = fit(ctx, "reward", train, heldout, ctx.stage_dir / common.CLASSIFIER_FILE, 0x5EED)
    summary["sources"] = {k: len(tr) + len(ev) for k, (tr, ev) in splits.items()}
    if r.value:
        col_train, col_heldout = splits[COLLECTED]
        vtrain, vheldout = value_frames(config, col_train), {"real": value_frames(config, col_heldout)}
        if r.predicted_views:
            vtrain = _join(vtrain, predicted(col_train, False, "episode", 2))
            vheldout["predicted"] = predicted(col_heldout, True, "episode", 2)
        summary["value"] = fit(ctx, "value", vtrain, vheldout, ctx.stage_dir / common.VALUE_CLASSIFIER_FILE, 0x7A1E)
    return summary
