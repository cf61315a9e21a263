"""World-model training pieces the wm_pretrain / wm_finetune stages use: the train state, the
optimizer, the consistency probe's fitting and the held-out evaluator (PSNR / SSIM per view and for the
copy-current-frame baseline, reward accuracy / F1, multi-view consistency).
"""
from __future__ import annotations

import dm_pix
import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from PIL import Image

from vlambpo_jax.models import state_probe
from vlambpo_jax.models.world_model import WorldModel

CONSISTENCY_KEYS = ("consistency_pos", "consistency_grip", "real_consistency_pos",
                    "real_consistency_grip", "probe_err_pos_head", "probe_err_pos_wrist",
                    "real_probe_err_pos_head", "real_probe_err_pos_wrist", "copy_probe_err_pos_head",
                    "copy_probe_err_pos_wrist")


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: dict          # the trained tree (VAE params or the WMNet params)
    ema_params: dict
    opt_state: optax.OptState


# -------------------------------------------------------------------------------------- optimizer

def make_optimizer(w, num_steps: int, lr: float | None = None, frozen=()):
    """AdamW (b1, b2, weight decay) with linear warm-up + cosine decay and global-norm clipping;
    top-level param groups named in `frozen` get no updates."""
    lr = float(lr if lr is not None else w.lr)
    warm = max(1, min(int(w.warmup_steps), num_steps // 2))
    sched = optax.warmup_cosine_decay_schedule(0.0, lr, warm, max(num_steps, warm + 1), lr * 0.1)
    tx = optax.chain(optax.clip_by_global_norm(float(w.grad_clip)),
                     optax.adamw(sched, b1=float(w.b1), b2=float(w.b2), weight_decay=float(w.weight_decay)))
    if not frozen:
        return tx

    def labels(params):
        inner = params["params"]
        return {"params": {k: jax.tree.map(lambda _: "frozen" if k in frozen else "train", v)
                           for k, v in inner.items()}}
    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


# ------------------------------------------------------------------------------------------- eval

def train_state_probe(p, batch_fn, seed: int):
    """The consistency probe (state_probe.py) fitted on the real frames t and t + k of
    p.train_batches training batches (batch_fn(3_000_000 + i): deterministic, so every stage run on
    the same data - e.g. an interleaved and an independent model - gets the same probe)."""
    imgs, states = [], []
    for i in range(int(p.train_batches)):
        b = batch_fn(3_000_000 + i)
        imgs += [np.asarray(b["images"]), np.asarray(b["next_images"])]
        states += [np.asarray(b["state"]), np.asarray(b["next_state"])]
    return state_probe.train(np.concatenate(imgs), np.concatenate(states), jax.random.key(seed + 19),
                             steps=int(p.steps), batch_size=int(p.batch_size), lr=float(p.lr))


PSNR_CAP_DB = 50.0


def balanced_accuracy(tp: int, fp: int, fn: int, tn: int) -> float:
    """Mean recall over the classes present (Yes: tp / (tp + fn), No: tn / (tn + fp)); plain accuracy
    reads 1.0 on held-out data without successes, this does not reward answering No everywhere."""
    recalls = [hit / (hit + miss) for hit, miss in ((tp, fn), (tn, fp)) if hit + miss > 0]
    return sum(recalls) / len(recalls) if recalls else 0.0


def make_evaluator(wm: WorldModel, batches, key, probe=None):
    """-> fn(params, png=None) -> {psnr_head, ssim_head, psnr_wrist, ssim_wrist, copy_psnr_*, copy_ssim_*,
    reward_acc, reward_f1, reward_balanced_acc} over the held-out batches (one prediction per
    transition); with a state probe (state_probe.py) also the multi-view consistency of the predicted
    next views (consistency_pos [m] / consistency_grip), the same on the real next views (real_consistency_*),
    and the probe's xyz error against the true next state on predicted, real and current (copy_)
    frames (*probe_err_pos_head / _wrist). With interleaved view decoding also the wrist sampled from
    the real next head instead of the predicted one (given_head_psnr_wrist / given_head_ssim_wrist):
    the wrist decoder's error apart from the head's. flow_mse_head / _wrist: the held-out flow loss
    (train=False), and flow_mse_*_other_action the same with each transition given the actions of
    another one in its batch (rolled by one), same noise and times: the gap is how much the
    denoiser reads the action (0 = it ignores it). Same batches + key + probe -> comparable numbers across
    models (e.g. view_decoding interleaved vs independent). Per-frame PSNR is capped at PSNR_CAP_DB, so
    identical frames (a copied still frame) do not make the mean infinite."""
    predict = jax.jit(wm.predict)
    reward = jax.jit(wm.reward)
    flow_mse = jax.jit(lambda p, b, k: {v: m for v, m in wm.loss(p, b, k, train=False)[1].items()
                                        if v in ("mse_head", "mse_wrist")})
    read = jax.jit(state_probe.read) if probe is not None else None
    given_head = None
    if wm.spec.view_decoding == "interleaved":
        given_head = jax.jit(lambda p, images, tokens, mask, actions, next_images, k: wm.predict(
            p, images, tokens, mask, actions, k, given_next={0: next_images[:, 0]}))

    def fn(params, png=None):
        sums, n, tp, fp, fn_, correct, valid_n = {}, 0, 0, 0, 0, 0, 0
        first = None
        for i, b in enumerate(batches):
            pred = predict(params, b["images"], b["tokens"], b["token_mask"], b["actions"],
                           jax.random.fold_in(key, i))
            real = jnp.asarray(b["next_images"]).astype(jnp.float32) / 255.0
            frames = [("", pred, ("head", "wrist")), ("copy_", b["images"], ("head", "wrist"))]
            if given_head is not None:
                frames.append(("given_head_", given_head(params, b["images"], b["tokens"], b["token_mask"],
                                                         b["actions"], b["next_images"],
                                                         jax.random.fold_in(key, i)), ("wrist",)))
            for name, p, views in frames:
                p = jnp.asarray(p).astype(jnp.float32) / 255.0
                for view in views:
                    v = ("head", "wrist").index(view)
                    sums[f"{name}psnr_{view}"] = sums.get(f"{name}psnr_{view}", 0.0) + float(
                        jnp.sum(jnp.minimum(dm_pix.psnr(real[:, v], p[:, v]), PSNR_CAP_DB)))
                    sums[f"{name}ssim_{view}"] = sums.get(f"{name}ssim_{view}", 0.0) + float(
                        jnp.sum(dm_pix.ssim(real[:, v], p[:, v])))
            n += real.shape[0]
            other = {k: np.roll(b[k], 1, axis=0) for k in ("actions", "action_bins") if k in b}
            for suffix, batch in (("", b), ("_other_action", {**b, **other})):
                for k, v in flow_mse(params, batch, jax.random.fold_in(key, 10_000 + i)).items():
                    name = f"flow_{k}{suffix}"
                    sums[name] = sums.get(name, 0.0) + float(v) * real.shape[0]
            ex = wm.reward_examples(b, wm.spec.reward_labels)
            yes, valid = np.asarray(ex["yes"], bool), np.asarray(ex["valid"], bool)
            p_yes = np.asarray(reward(params, ex["images"], ex["tokens"], ex["token_mask"])) > 0.5
            correct += int(np.sum(valid & (p_yes == yes)))
            valid_n += int(valid.sum())
            tp += int(np.sum(valid & p_yes & yes))
            fp += int(np.sum(valid & p_yes & ~yes))
            fn_ += int(np.sum(valid & ~p_yes & yes))
            if read is not None:
                nxt_state = b.get("next_state")
                for prefix, frames in (("", pred), ("real_", b["next_images"]), ("copy_", b["images"])):
                    terms = state_probe.metrics(read(probe, frames), nxt_state, prefix)
                    if prefix == "copy_":  # current frames are real: only the error vs the next state
                        terms = {k: v for k, v in terms.items() if "probe_err" in k}
                    for k, v in terms.items():
                        sums[k] = sums.get(k, 0.0) + float(np.sum(v))
            if first is None:
                first = (np.asarray(b["images"]), np.asarray(b["next_images"]), np.asarray(pred))
        out = {k: v / max(n, 1) for k, v in sums.items()}
        out["reward_acc"] = correct / max(valid_n, 1)
        out["reward_f1"] = 2 * tp / max(2 * tp + fp + fn_, 1)
        out["reward_balanced_acc"] = balanced_accuracy(tp, fp, fn_, correct - tp)
        if png is not None and first is not None:
            save_side_by_side(png, *first)
        return out
    return fn


def save_side_by_side(path, current, real_next, pred_next, max_rows: int = 8):
    """PNG: one row per transition: head (current | real next | predicted), then wrist likewise."""
    rows = []
    for i in range(min(max_rows, current.shape[0])):
        cells = []
        for v in range(current.shape[1]):
            cells += [current[i, v], real_next[i, v], pred_next[i, v]]
        rows.append(np.concatenate(cells, axis=1))
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)


