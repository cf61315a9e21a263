"""The `reward` stage: a separate success classifier (models/success_classifier.py) for MBPO to read
instead of the world model's Yes/No (config.rl.reward_model='classifier').

It trains on every frame of the world model's data: config.wm.pretrain_data ('' = config.data's
dataset, the demos), config.wm.play_data and the collect stage's rollouts (config.wm.finetune_data in
their place when set), the policy's own failures included. A frame is Yes where its task holds: the
last frame of a successful episode, since the simulator's episodes stop at the first success
(config.wm.reward_labels 'outcome'), so the near-success frames before it are No. The last tenth of
each dataset's episodes is held out; the threshold of best F1 on them is saved with the weights.
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


def classifier_from_config(config) -> success_classifier.SuccessClassifier:
    r = config.reward
    return success_classifier.SuccessClassifier(
        views=len(config.views), members=int(r.members), widths=tuple(r.widths), features=int(r.features),
        text_dim=int(r.text_dim), hidden=int(r.hidden), aggregate=str(r.aggregate))


def labelled_frames(ctx) -> tuple[dict, dict, dict]:
    """-> (training frames, held-out frames, {source: episodes}) in SuccessClassifier.train's layout."""
    w = ctx.config.wm
    collected = w.finetune_data or wm_common.find_rlds(Path(ctx.workdir) / "collect")
    sources = [w.pretrain_data, *tuple(w.play_data)] + ([collected] if collected else [])
    tokenizer = load_wm_tokenizer(w)
    train, heldout, counts, stats = [], [], {}, None
    for source in sources:
        episodes, stats, _ = wm_common.load_episodes(ctx, source, stats)
        tr, ev = wm_common.split_heldout(episodes)
        train += tr
        heldout += ev
        counts[source or "config.data"] = len(episodes)

    def frames(episodes):
        ex = wm_common.RewardExamples(episodes, 1, 0, int(w.max_text_len), "outcome", tokenizer).every_frame()
        return {"images": ex["reward_images"], "tokens": ex["reward_tokens"],
                "token_mask": ex["reward_token_mask"], "yes": ex["reward_yes"]}

    train_frames = frames(train)
    if not train_frames["yes"].any():
        raise UserError("reward stage: no successful episode in the training data, so no Yes frame to learn from")
    return train_frames, frames(heldout or train), counts


def run(ctx) -> dict:
    config, r = ctx.config, ctx.config.reward
    train, heldout, counts = labelled_frames(ctx)
    classifier = classifier_from_config(config)
    key = jax.random.fold_in(jax.random.PRNGKey(int(config.seed)), 0x5EED)
    params = classifier.init(key, train["images"].shape[2:4], train["tokens"].shape[1])
    print(f"[reward] {len(train['yes'])} training frames ({int(train['yes'].sum())} Yes) from "
          + ", ".join(f"{k} ({v} episodes)" for k, v in counts.items())
          + f"; {len(heldout['yes'])} held-out ({int(heldout['yes'].sum())} Yes)")
    params, info = classifier.train(
        params, train, jax.random.fold_in(key, 1), int(r.steps), int(r.batch_size), float(r.lr),
        int(r.augment_shift), progress=lambda i, n: print(f"[reward] step {i}/{n}", flush=True))
    score, yes = classifier.predict_frames(params, heldout), heldout["yes"]
    threshold, best_f1 = best_f1_threshold(score, yes)
    params = dict(params, threshold=np.float32(threshold))
    path = ctx.stage_dir / common.CLASSIFIER_FILE
    common.write_once("reward", lambda: success_classifier.save(path, classifier, params))
    summary = {"classifier": str(path), "train_frames": int(len(train["yes"])), "train_yes": int(train["yes"].sum()),
               "heldout_frames": int(len(yes)), "heldout_yes": int(yes.sum()), "threshold": threshold,
               "heldout_f1": best_f1, "heldout_auc": auc(score, yes),
               "heldout_f1_at_half": f1(score > 0.5, yes),
               "heldout_false_positive_rate": float(np.mean(score[~yes] > threshold)) if (~yes).any() else 0.0,
               "train_loss": info["loss"], "seconds": info["seconds"], "sources": counts}
    print(f"[reward] held-out AUC {summary['heldout_auc']:.3f}, best F1 {best_f1:.3f} at threshold "
          f"{threshold:.3f}, false positives {summary['heldout_false_positive_rate']:.4f} "
          f"({info['seconds']:.0f} s)")
    return summary
