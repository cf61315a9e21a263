"""World-model stages: `wm_pretrain` (broad data) and `wm_finetune` (target rollouts).

Each stage: (1) a VAE phase (checkpoint `vae/`) when the VAE is not inherited - reconstruction + KL on
both views' frames, then per-channel latent statistics; (2) dynamics + reward training (checkpoint
`world_model/`): AdamW with warm-up + cosine decay, grad clip, EMA; the saved `params` item is the
whole inference tree {'net': EMA weights, 'vae', 'stats'} with the config and normalization statistics
as assets. Fine-tuning starts from wm_pretrain's output with the ViT and the VAE frozen; with
config.wm.pretrain_enabled False, wm_pretrain does nothing and wm_finetune trains from scratch (the
"w/o pretraining" ablation). After training, held-out transitions give PSNR / SSIM per view (and for
the copy-current-frame baseline), reward accuracy / F1, a side-by-side PNG `samples.png`, and the
multi-view consistency of the predicted views read by a state probe (models/state_probe.py; trained in
seconds on training frames before the dynamics phase, saved as `state_probe.msgpack`; summary key
'consistency', with the model's view_decoding).

Data: config.data's RLDS dataset (the demos stage output by default), overridden per stage by
config.wm.pretrain_data / finetune_data (a TFDS builder dir; '' = config.data's, and for fine-tuning
the collect stage's RLDS output under <workdir>/collect when it exists). The reward's Yes/No examples
(config.wm.reward_batch_size per step, half Yes) are drawn from whole training episodes
(RewardExamples), in wm_finetune also from the pretraining data (config.wm.reward_replay); held-out
reward metrics use the labelled frames of the held-out episodes of the same datasets.

Other stages load the result with `load_world_model(ctx.stage_output('wm_finetune') / 'world_model')`.
"""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vlambpo_jax.models import state_probe
from vlambpo_jax.models.vae import VAE, vae_loss
from vlambpo_jax.models.world_model import WorldModel, spec_from_config
from vlambpo_jax.train import sharding

CKPT_VAE = "vae"
CKPT_WM = "world_model"
PROBE_FILE = "state_probe.msgpack"
LAYOUT_KEYS = ("view_decoding", "ivd_vit_copy", "ivd_wrist_sees_head", "action_encoding", "predict_delta",
               "delta_pixels", "delta_scale", "timestep_shift", "reward_views")
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


# ------------------------------------------------------------------------------------------- data

class Batches:
    """batch(step): samples step*B .. step*B + B - 1 of seeded epoch permutations (deterministic, so
    a resumed run sees the same batches)."""

    def __init__(self, episodes, batch_size, seed, make):
        self.pairs = [(ep, t) for ep in episodes for t in range(ep["length"])]
        if not self.pairs:
            raise ValueError("world model: the dataset has no steps (config.data / config.wm.*_data)")
        self.batch_size, self.seed, self.make = batch_size, seed, make

    def __call__(self, step: int) -> dict:
        n = len(self.pairs)
        idx = []
        for s in range(step * self.batch_size, (step + 1) * self.batch_size):
            perm = np.random.default_rng([self.seed, s // n, 23]).permutation(n)
            idx.append(perm[s % n])
        return self.make([self.pairs[i] for i in idx])


class RewardExamples:
    """Yes/No examples of the reward question, drawn from whole episodes rather than from the
    dynamics batch (whose frames are ~10% Yes, and none at all in a weak policy's rollouts).

    Frames are labelled as the paper does (WorldModel.reward_labels; the window between dropped).
    batch(step): `size` examples, half Yes and half No (all No when there is no Yes frame), drawn
    with replacement by a generator seeded with (seed, step) - deterministic, so resumes match.
    heldout(n_batches, per_class): every Yes and No frame (an evenly spaced subset when a class has
    more than per_class), split into n_batches equal batches.
    Each batch: reward_images uint8[R, V, H, W, 3] (all views), reward_tokens int32[R, L],
    reward_token_mask bool[R, L], reward_yes / reward_valid bool[R].
    """

    def __init__(self, episodes, size: int, seed: int, max_text_len: int):
        from vlambpo_jax.data import rlds_reader

        self.size, self.seed = size, seed
        self.make = lambda samples: rlds_reader.make_batch(samples, chunk_size=1, max_text_len=max_text_len,
                                                           future=True)
        self.pools = {True: [], False: []}
        for ep in episodes:
            t = np.arange(ep["length"])
            yes, valid = WorldModel.reward_labels(np.full(t.shape, bool(ep["success"])), ep["length"] - 1 - t)
            for i in t[valid]:
                self.pools[bool(yes[i])].append((ep, int(i)))
        if not self.pools[False] and not self.pools[True]:
            raise ValueError("world model: no labelled reward frame in the data (config.wm.*_data)")

    def _batch(self, samples, yes):
        b = self.make(samples)
        return {"reward_images": b["images"], "reward_tokens": b["tokens"],
                "reward_token_mask": b["token_mask"], "reward_yes": np.asarray(yes, bool),
                "reward_valid": np.ones(len(samples), bool)}

    def __call__(self, step: int) -> dict:
        rng = np.random.default_rng([self.seed, step, 31])
        n_yes = self.size // 2 if self.pools[True] else 0
        n_no = self.size - n_yes if self.pools[False] else 0
        n_yes = self.size - n_no
        picks = [(y, self.pools[y][i]) for y, n in ((True, n_yes), (False, n_no))
                 for i in rng.integers(0, len(self.pools[y]), n)]
        return self._batch([p for _, p in picks], [y for y, _ in picks])

    def heldout(self, n_batches: int, per_class: int) -> list[dict]:
        picks = []
        for y in (True, False):
            pool = self.pools[y]
            idx = np.linspace(0, len(pool) - 1, min(per_class, len(pool))).round().astype(int) if pool else []
            picks += [(y, pool[i]) for i in idx]
        size = len(picks) // n_batches
        if size == 0:
            return []
        picks = [picks[i] for i in np.random.default_rng(self.seed).permutation(len(picks))[:size * n_batches]]
        return [self._batch([p for _, p in picks[j * size:(j + 1) * size]],
                            [y for y, _ in picks[j * size:(j + 1) * size]]) for j in range(n_batches)]


def _find_rlds(directory: Path) -> str:
    found = sorted(p.parent for p in directory.rglob("dataset_info.json")) if directory.exists() else []
    return str(found[0]) if found else ""


def _load_episodes(ctx, builder_dir: str, stats=None):
    """-> (episodes of the RLDS dataset (config.data's when builder_dir is ''), NormStats, config)."""
    from vlambpo_jax.data import rlds_reader

    config = copy.deepcopy(ctx.config)
    if builder_dir:
        config.data.builder_dir = builder_dir
    loader = rlds_reader.RLDSLoader(config, workdir=ctx.workdir)
    if stats is None:
        stats = loader.norm_stats(config.data.stats_cache_dir or str(Path(ctx.workdir) / "norm_stats"))
    loader.stats = stats
    # Every process builds the same global batches and keeps its rows (sharding.DataParallel).
    return list(loader.episodes(all_hosts=True)), stats, config


def _split(episodes):
    """-> (train, held-out): the last tenth of the episodes (at least one) is held out."""
    n_eval = max(1, len(episodes) // 10) if len(episodes) > 1 else 0
    return episodes[:len(episodes) - n_eval], episodes[len(episodes) - n_eval:]


def _open_data(ctx, builder_dir: str, batch_size: int, seed: int, stats=None, reward_data=()):
    """-> (train batch_fn, held-out batches list, NormStats). With config.wm.reward_batch_size > 0
    every batch also carries that many balanced reward examples (RewardExamples) drawn from the
    training episodes of this dataset and of the datasets in reward_data (builder dirs), and the
    held-out batches carry the labelled frames of their held-out episodes."""
    from vlambpo_jax.data import normalization, rlds_reader

    episodes, stats, config = _load_episodes(ctx, builder_dir, stats)
    mode = config.data.norm_mode

    def make(samples):
        b = rlds_reader.make_batch(samples, chunk_size=int(config.chunk_size),
                                   max_text_len=int(config.wm.max_text_len), future=True,
                                   action_pad=config.data.action_pad)
        actions = normalization.unnormalize(b["actions"], stats["action"], mode)  # env units
        k = int(config.chunk_size)
        # raw proprio state of frames t and t + k (targets of the consistency probe, state_probe.py)
        state = np.stack([ep["state"][t] for ep, t in samples]).astype(np.float32)
        next_state = np.stack([ep["state"][min(t + k, ep["length"] - 1)] for ep, t in samples])
        return {"images": b["images"], "next_images": b["next_images"], "actions": actions,
                "tokens": b["tokens"], "token_mask": b["token_mask"],
                "episode_success": b["episode_success"], "steps_to_end": b["steps_to_end"],
                "state": state, "next_state": next_state.astype(np.float32)}

    train_eps, eval_eps = _split(episodes)
    heldout = Batches(eval_eps or train_eps, batch_size, seed + 1, make)
    w = ctx.config.wm
    n_eval_batches = int(w.eval_batches)
    train_fn, heldout = Batches(train_eps, batch_size, seed, make), [heldout(i) for i in range(n_eval_batches)]
    if int(w.get("reward_batch_size", 0)) > 0:
        extra = [_split(_load_episodes(ctx, d, stats)[0]) for d in reward_data]
        text_len = int(w.max_text_len)
        r_train = RewardExamples(train_eps + [e for tr, _ in extra for e in tr], int(w.reward_batch_size),
                                 seed + 2, text_len)
        r_eval = RewardExamples((eval_eps or train_eps) + [e for tr, ev in extra for e in (ev or tr)], 1,
                                seed + 3, text_len).heldout(n_eval_batches, int(w.eval_reward_frames) // 2)
        if len(r_eval) == len(heldout):
            heldout = [dict(h, **r) for h, r in zip(heldout, r_eval)]
        else:
            print(f"world model: only {sum(len(r['reward_yes']) for r in r_eval)} held-out labelled "
                  f"reward frames for {len(heldout)} eval batches (config.wm.eval_batches): the reward "
                  "metrics read the held-out transitions' current frames instead")
        batch_fn = lambda step: dict(train_fn(step), **r_train(step))  # noqa: E731
        return batch_fn, heldout, stats
    return train_fn, heldout, stats


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


# ----------------------------------------------------------------------------------------- phases

def _train_vae(ctx, wm: WorldModel, params, batch_fn, log):
    """VAE phase; returns params with 'vae' trained and 'stats' latent shift / scale measured."""
    from vlambpo_jax.train.loop import train_loop

    v = ctx.config.wm.vae
    steps = int(v.steps)
    tx = make_optimizer(ctx.config.wm, steps, lr=float(v.lr))
    state = TrainState(jnp.zeros((), jnp.int32), params["vae"], params["vae"], tx.init(params["vae"]))
    base = jax.random.key(int(ctx.config.seed) + 11)
    kl = float(v.kl_weight)
    dp = sharding.DataParallel(ctx.config.mesh)
    state, state_shardings = dp.place(state)

    def step_fn(state, batch):
        imgs = jnp.concatenate([batch["images"], batch["next_images"]], axis=1)
        imgs = imgs.reshape((-1,) + imgs.shape[2:])
        key = jax.random.fold_in(base, state.step)
        (loss, m), g = jax.value_and_grad(lambda p: vae_loss(wm.vae, p, imgs, key, kl), has_aux=True)(
            state.params)
        upd, opt = tx.update(g, state.opt_state, state.params)
        p = optax.apply_updates(state.params, upd)
        return TrainState(state.step + 1, p, p, opt), dict(m, loss=loss)

    def batch_fn_v(step):
        b = batch_fn(step)
        return dp.shard({"images": b["images"], "next_images": b["next_images"]}, is_global=True)

    t0 = time.time()
    res = train_loop(ctx, name=CKPT_VAE, state=state, step_fn=dp.jit_step(step_fn, state_shardings),
                     batch_fn=batch_fn_v,
                     num_steps=steps, assets={"config": json.loads(ctx.config.to_json_best_effort())})
    params = dict(params, vae=res.state.params)
    # latent statistics -> normalized latents of about unit scale
    enc = jax.jit(lambda p, x: wm.vae.apply(p, x, method=VAE.encode)[0])
    from vlambpo_jax.models.vae import to_float
    zs = []
    for i in range(4):
        b = batch_fn(10 ** 6 + i)
        zs.append(np.asarray(enc(params["vae"], to_float(b["images"].reshape((-1,) + b["images"].shape[2:])))))
    z = np.concatenate(zs).reshape(-1, zs[0].shape[-1])
    params["stats"] = dict(params["stats"], latent_shift=jnp.asarray(z.mean(0)),
                           latent_scale=jnp.asarray(np.maximum(z.std(0), 1e-3)))
    log(f"VAE phase: {res.step} steps, {time.time() - t0:.1f} s; latent std {z.std(0).round(3).tolist()}")
    return params, res.interrupted


def _train_dynamics(ctx, wm: WorldModel, params, batch_fn, heldout, num_steps, frozen, assets, log):
    from vlambpo_jax.train.loop import train_loop

    w = ctx.config.wm
    tx = make_optimizer(w, num_steps, frozen=frozen)
    ema = float(w.ema)
    fixed = {"vae": params["vae"], "stats": params["stats"]}
    state = TrainState(jnp.zeros((), jnp.int32), params["net"], params["net"], tx.init(params["net"]))
    base = jax.random.key(int(ctx.config.seed) + 13)
    dp = sharding.DataParallel(ctx.config.mesh)
    state, state_shardings = dp.place(state)

    def step_fn(state, batch):
        key = jax.random.fold_in(base, state.step)
        (loss, m), g = jax.value_and_grad(lambda n: wm.loss({**fixed, "net": n}, batch, key),
                                          has_aux=True)(state.params)
        upd, opt = tx.update(g, state.opt_state, state.params)
        p = optax.apply_updates(state.params, upd)
        # EMA with the usual warm-up (decay min(ema, (1 + n) / (10 + n))) so short runs are not
        # dominated by the initial weights
        d = jnp.minimum(ema, (1.0 + state.step) / (10.0 + state.step))
        e = jax.tree.map(lambda a, b: a + (1 - d) * (b - a), state.ema_params, p) if ema > 0 else p
        return TrainState(state.step + 1, p, e, opt), dict(m, grad_norm=optax.tree.norm(g))

    step_fn = dp.jit_step(step_fn, state_shardings)
    probe, probe_info = None, {}
    if w.get("probe") is not None and w.probe.enabled:
        probe, probe_info = train_state_probe(w.probe, batch_fn, int(ctx.config.seed))
        state_probe.save(Path(ctx.stage_dir) / PROBE_FILE, probe)
        log(f"consistency probe: {json.dumps(probe_info)}")
    evaluator = make_evaluator(wm, heldout, jax.random.key(int(ctx.config.seed) + 17), probe=probe)
    last_eval = {}

    def eval_fn(state, step):
        last_eval.clear()
        last_eval.update(evaluator({**fixed, "net": state.ema_params},
                                   png=Path(ctx.stage_dir) / "samples.png"))
        return {f"eval/{k}": v for k, v in last_eval.items()}

    losses = []

    def logged(state, batch):
        state, m = step_fn(state, batch)
        losses.append(m["loss"])
        return state, m

    t0 = time.time()
    res = train_loop(ctx, name=CKPT_WM, state=state, step_fn=logged,
                     batch_fn=lambda step: dp.shard(batch_fn(step), is_global=True),
                     num_steps=num_steps, params_fn=lambda s: {**fixed, "net": s.ema_params},
                     assets=assets, eval_fn=eval_fn)
    seconds = time.time() - t0
    losses = [float(x) for x in jax.device_get(losses)]
    summary = {"steps": res.step, "interrupted": res.interrupted, "steps_run": len(losses),
               "seconds": seconds, "sec_per_step": seconds / max(len(losses), 1),
               "first_loss": losses[0] if losses else None,
               "final_loss": float(np.mean(losses[-20:])) if losses else None,
               "eval": dict(last_eval), "checkpoint_dir": str(Path(ctx.stage_dir) / CKPT_WM),
               "view_decoding": wm.spec.view_decoding}
    if probe is not None:
        summary["consistency"] = {
            "view_decoding": wm.spec.view_decoding, "probe": probe_info,
            **{k: last_eval[k] for k in CONSISTENCY_KEYS if k in last_eval}}
    log(json.dumps({k: v for k, v in summary.items()}, default=float))
    return summary


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
    the wrist decoder's error apart from the head's. Same batches + key + probe -> comparable numbers across
    models (e.g. view_decoding interleaved vs independent). Per-frame PSNR is capped at PSNR_CAP_DB, so
    identical frames (a copied still frame) do not make the mean infinite."""
    import dm_pix

    predict = jax.jit(wm.predict)
    reward = jax.jit(wm.reward)
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
            ex = wm.reward_examples(b)
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
    from PIL import Image

    rows = []
    for i in range(min(max_rows, current.shape[0])):
        cells = []
        for v in range(current.shape[1]):
            cells += [current[i, v], real_next[i, v], pred_next[i, v]]
        rows.append(np.concatenate(cells, axis=1))
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)


# ----------------------------------------------------------------------------------------- stages

def _assets(config, stats):
    return {"config": json.loads(config.to_json_best_effort()), "norm_stats": stats.to_dict(),
            "norm_mode": config.data.norm_mode}


def run_pretrain(ctx) -> dict:
    """The `wm_pretrain` stage (see the module docstring)."""
    config, w = ctx.config, ctx.config.wm
    log = lambda s: print(f"[{ctx.stage}] {s}")  # noqa: E731
    if not w.pretrain_enabled:
        log("config.wm.pretrain_enabled is False: skipping (wm_finetune trains from scratch)")
        return {"skipped": True}
    wm = WorldModel(config)
    batch_fn, heldout, stats = _open_data(ctx, w.pretrain_data, int(w.batch_size), int(config.seed))
    params = wm.init(jax.random.key(int(config.seed)), stats["action"].min, stats["action"].max)
    params, interrupted = _train_vae(ctx, wm, params, batch_fn, log)
    if interrupted:
        return {"interrupted": True, "phase": "vae"}
    summary = _train_dynamics(ctx, wm, params, batch_fn, heldout, int(w.pretrain_steps), (),
                              _assets(config, stats), log)
    return summary


def _finetune_data(ctx, stats):
    """wm_finetune's data (_open_data): the collected rollouts unless config.wm.finetune_data names
    others; after pretraining with the pretraining statistics and, with reward_replay, its reward
    examples (a weak policy's rollouts may hold no success; the pretraining data has Yes frames)."""
    w = ctx.config.wm
    data = w.finetune_data or _find_rlds(Path(ctx.workdir) / "collect")
    replay = (w.pretrain_data,) if w.pretrain_enabled and w.get("reward_replay", False) else ()
    return _open_data(ctx, data, int(w.batch_size), int(ctx.config.seed) + 1, stats, reward_data=replay)


def evaluate_checkpoint(ctx, stage: str) -> dict:
    """The held-out metrics (make_evaluator) of a finished world-model stage's checkpoint, on the
    batches, key and consistency probe that stage evaluated with, so numbers match its summary and
    metrics added since can be read on old runs."""
    from vlambpo_jax.data import normalization

    if stage not in ("wm_pretrain", "wm_finetune"):
        raise ValueError(f"stage must be wm_pretrain or wm_finetune, not {stage!r}")
    w, seed = ctx.config.wm, int(ctx.config.seed)
    stage_dir = Path(ctx.stage_output(stage))
    wm, params, assets = load_world_model(stage_dir / CKPT_WM, ctx.config)
    # settings that change the sequence or the decoding but no parameter shape: a mismatch would load
    # and silently evaluate another model. Compared as the model reads them (spec_from_config), so a
    # key missing from an older saved config counts with the default that model was built with.
    saved = ml_collections.ConfigDict(assets["config"])
    trained = spec_from_config(saved)
    differ = [k for k in LAYOUT_KEYS if getattr(trained, k) != getattr(wm.spec, k)]
    if differ:
        raise ValueError(f"the {stage} checkpoint was trained with " + ", ".join(
            f"wm.{k}={saved.wm.get(k, getattr(trained, k))}" for k in differ)
            + "; pass the same settings (--set KEY=VALUE)")
    stats = normalization.NormStats.from_dict(assets["norm_stats"])
    if stage == "wm_pretrain":
        _, heldout, _ = _open_data(ctx, w.pretrain_data, int(w.batch_size), seed, stats)
    else:
        _, heldout, _ = _finetune_data(ctx, stats)
    probe = state_probe.load(stage_dir / PROBE_FILE) if (stage_dir / PROBE_FILE).exists() else None
    return make_evaluator(wm, heldout, jax.random.key(seed + 17), probe=probe)(params)


def run_finetune(ctx) -> dict:
    """The `wm_finetune` stage (see the module docstring)."""
    from vlambpo_jax.data import normalization

    config, w = ctx.config, ctx.config.wm
    log = lambda s: print(f"[{ctx.stage}] {s}")  # noqa: E731
    wm = WorldModel(config)
    if w.pretrain_enabled:
        src = Path(ctx.stage_output("wm_pretrain")) / CKPT_WM
        _, params, assets = load_world_model(src, config)
        stats = normalization.NormStats.from_dict(assets["norm_stats"])  # keep the action bins' meaning
        batch_fn, heldout, _ = _finetune_data(ctx, stats)
        log(f"initialised from {src}; fine-tuning with the ViT and VAE frozen")
        frozen = ("vit",)
    else:
        batch_fn, heldout, stats = _finetune_data(ctx, None)
        params = wm.init(jax.random.key(int(config.seed)), stats["action"].min, stats["action"].max)
        params, interrupted = _train_vae(ctx, wm, params, batch_fn, log)
        if interrupted:
            return {"interrupted": True, "phase": "vae"}
        frozen = ()
    return _train_dynamics(ctx, wm, params, batch_fn, heldout, int(w.finetune_steps), frozen,
                           _assets(config, stats), log)


def load_world_model(directory, config=None):
    """Checkpoint dir (a stage's `world_model/`) -> (WorldModel, params, assets). The config saved in
    the assets is used unless one is given."""
    from vlambpo_jax.train import checkpoints

    raw, assets = checkpoints.load_params(Path(directory))
    if config is None:
        config = ml_collections.ConfigDict(assets["config"])
    wm = WorldModel(config)
    target = jax.eval_shape(lambda: wm.init(jax.random.key(0)))
    params, _ = checkpoints.load_params(Path(directory), jax.tree.map(
        lambda s: np.zeros(s.shape, s.dtype), target))
    return wm, params, assets
