"""What the world-model stages share: their data (dynamics batches and balanced Yes/No reward
examples from RLDS episodes, with held-out episodes for evaluation) and their two training phases (VAE,
then dynamics + reward), plus re-evaluating a finished stage's checkpoint (tools/wm_eval.py).

Data: config.data's RLDS dataset (the demos stage output by default), overridden per stage by
config.wm.pretrain_data / finetune_data (a TFDS builder dir; '' = config.data's, and for fine-tuning
the collect stage's RLDS output under <workdir>/collect when it exists); config.wm.play_data adds the
episodes of more datasets to pretraining's training split, and config.wm.dynamics_replay adds those and
the pretraining data's to fine-tuning's. The reward's Yes/No examples
(config.wm.reward_batch_size per step, half Yes) are drawn from whole training episodes
(RewardExamples), in wm_finetune also from the pretraining data (config.wm.reward_replay); held-out
reward metrics use the labelled frames of the held-out episodes of the same datasets.
"""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vlambpo_jax import loading
from vlambpo_jax.data import normalization, rlds_reader
from vlambpo_jax.data.tokenizer import load_wm_tokenizer
from vlambpo_jax.errors import UserError
from vlambpo_jax.models import bagel_import, state_probe, wm_training
from vlambpo_jax.models.vae import VAE, to_float, vae_loss
from vlambpo_jax.models.world_model import WorldModel
from vlambpo_jax.train import sharding
from vlambpo_jax.train.loop import train_loop

CKPT_VAE = "vae"
CKPT_WM = "world_model"
PROBE_FILE = "state_probe.msgpack"


class Batches:
    """batch(step): samples step*B .. step*B + B - 1 of seeded epoch permutations (deterministic, so
    a resumed run sees the same batches)."""

    def __init__(self, episodes, batch_size, seed, make):
        self.pairs = [(ep, t) for ep in episodes for t in range(ep["length"])]
        if not self.pairs:
            raise UserError("world model: the dataset has no steps (config.data / config.wm.*_data)")
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

    Frames are labelled by WorldModel.reward_labels in mode `labels` (config.wm.reward_labels).
    batch(step): `size` examples, half Yes and half No (all No when there is no Yes frame), drawn
    with replacement by a generator seeded with (seed, step) - deterministic, so resumes match.
    heldout(n_batches, per_class): every Yes and No frame (an evenly spaced subset when a class has
    more than per_class), split into n_batches equal batches.
    tokenizer: the world model's (None: the byte tokenizer).
    Each batch: reward_images uint8[R, V, H, W, 3] (all views), reward_tokens int32[R, L],
    reward_token_mask bool[R, L], reward_yes / reward_valid bool[R].
    """

    def __init__(self, episodes, size: int, seed: int, max_text_len: int, labels: str = "paper", tokenizer=None):
        self.size, self.seed = size, seed
        self.make = lambda samples: rlds_reader.make_batch(samples, chunk_size=1, max_text_len=max_text_len,
                                                           future=True, tokenizer=tokenizer)
        self.pools = {True: [], False: []}
        for ep in episodes:
            t = np.arange(ep["length"])
            yes, valid = WorldModel.reward_labels(np.full(t.shape, bool(ep["success"])), ep["length"] - 1 - t,
                                                  labels)
            for i in t[valid]:
                self.pools[bool(yes[i])].append((ep, int(i)))
        if not self.pools[False] and not self.pools[True]:
            raise UserError("world model: no labelled reward frame in the data (config.wm.*_data)")

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

    def every_frame(self) -> dict:
        """One batch of every labelled frame (Yes frames first)."""
        picks = [(y, p) for y in (True, False) for p in self.pools[y]]
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


def find_rlds(directory: Path) -> str:
    found = sorted(p.parent for p in directory.rglob("dataset_info.json")) if directory.exists() else []
    return str(found[0]) if found else ""


def collected_data(ctx) -> str:
    """The world model's target rollouts: config.wm.finetune_data, else the collect stage's RLDS
    output in the workdir ('' when neither exists)."""
    return ctx.config.wm.finetune_data or find_rlds(Path(ctx.workdir) / "collect")


def load_episodes(ctx, builder_dir: str, stats=None):
    """-> (episodes of the RLDS dataset (config.data's when builder_dir is ''), NormStats, config)."""
    config = copy.deepcopy(ctx.config)
    if builder_dir:
        config.data.builder_dir = builder_dir
    loader = rlds_reader.RLDSLoader(config, workdir=ctx.workdir)
    if stats is None:
        stats = loader.norm_stats(config.data.stats_cache_dir or str(Path(ctx.workdir) / "norm_stats"))
    loader.stats = stats
    # Every process builds the same global batches and keeps its rows (sharding.DataParallel).
    return list(loader.episodes(all_hosts=True)), stats, config


def fit_probe_on_rollouts(ctx, steps: int, batch_size: int = 64, lr: float = 2e-3) -> tuple[dict, dict]:
    """A fresh consistency probe (models/state_probe.py) fitted on every real frame of the collected
    rollouts (config.wm.finetune_data in their place when set) for `steps` steps, where the
    wm_finetune stage's probe sees config.wm.probe.train_batches batches. -> (probe, info)."""
    source = collected_data(ctx)
    if not source:
        raise UserError(f"no collected rollouts in {ctx.workdir} to fit the probe on: run the collect stage")
    episodes = load_episodes(ctx, source)[0]
    images = np.concatenate([ep["images"][:ep["length"]] for ep in episodes])
    states = np.concatenate([ep["state"][:ep["length"]] for ep in episodes]).astype(np.float32)
    probe, info = state_probe.train(images, states, jax.random.key(int(ctx.config.seed) + 23), steps=steps,
                                    batch_size=batch_size, lr=lr)
    return probe, dict(info, frames=int(len(images)), steps=int(steps))


def split_heldout(episodes):
    """-> (train, held-out): the last tenth of the episodes (at least one) is held out."""
    n_eval = max(1, len(episodes) // 10) if len(episodes) > 1 else 0
    return episodes[:len(episodes) - n_eval], episodes[len(episodes) - n_eval:]


def transition_batch(samples, config, stats, tokenizer) -> dict:
    """The world model's transitions (frame t -> t + k under the chunk at t, env-unit actions) of
    samples [(episode, t)]: images / next_images uint8[B, V, H, W, 3], actions f32[B, k, D], tokens,
    token_mask, episode_success, steps_to_end, and the raw proprio state of frames t and t + k."""
    b = rlds_reader.make_batch(samples, chunk_size=int(config.chunk_size), max_text_len=int(config.wm.max_text_len),
                               future=True, action_pad=config.data.action_pad, tokenizer=tokenizer)
    actions = normalization.unnormalize(b["actions"], stats["action"], config.data.norm_mode)
    k = int(config.chunk_size)
    # raw proprio state of frames t and t + k (targets of the consistency probe, state_probe.py)
    state = np.stack([ep["state"][t] for ep, t in samples]).astype(np.float32)
    next_state = np.stack([ep["state"][min(t + k, ep["length"] - 1)] for ep, t in samples])
    return {"images": b["images"], "next_images": b["next_images"], "actions": actions,
            "tokens": b["tokens"], "token_mask": b["token_mask"],
            "episode_success": b["episode_success"], "steps_to_end": b["steps_to_end"],
            "state": state, "next_state": next_state.astype(np.float32)}


def predicted_transitions(config, wm, params, samples, stats, seed: int, batch_size: int, name: str):
    """Yields, per batch of batch_size samples [(episode, t)], (their transition_batch, the world
    model's prediction of the views of frame t + k under the chunk at t, uint8[B, V, H, W, 3]), each
    batch keyed by its offset in samples; prints progress as `[name]`."""
    predict = jax.jit(wm.predict)
    tokenizer = load_wm_tokenizer(config.wm)
    for i in range(0, len(samples), batch_size):
        b = transition_batch(samples[i:i + batch_size], config, stats, tokenizer)
        key = jax.random.fold_in(jax.random.PRNGKey(seed), i)
        yield b, np.asarray(predict(params, b["images"], b["tokens"], b["token_mask"], b["actions"], key))
        print(f"[{name}] predicted {min(i + batch_size, len(samples))}/{len(samples)} views", flush=True)


def open_data(ctx, builder_dir: str, batch_size: int, seed: int, stats=None, reward_data=(), extra_data=()):
    """-> (train batch_fn, held-out batches list, NormStats). With config.wm.reward_batch_size > 0
    every batch also carries that many balanced reward examples (RewardExamples) drawn from the
    training episodes of this dataset and of the datasets in reward_data (builder dirs), and the
    held-out batches carry the labelled frames of their held-out episodes. Every episode of the
    datasets in extra_data (builder dirs, e.g. simulator play) joins the training split, not the
    held-out one, so held-out metrics stay comparable with and without them."""
    episodes, stats, config = load_episodes(ctx, builder_dir, stats)
    extra_episodes = [e for d in extra_data for e in load_episodes(ctx, d, stats)[0]]
    tokenizer = load_wm_tokenizer(config.wm)
    make = lambda samples: transition_batch(samples, config, stats, tokenizer)  # noqa: E731

    train_eps, eval_eps = split_heldout(episodes)
    heldout = Batches(eval_eps or train_eps, batch_size, seed + 1, make)
    train_eps = train_eps + extra_episodes
    w = ctx.config.wm
    n_eval_batches = int(w.eval_batches)
    train_fn, heldout = Batches(train_eps, batch_size, seed, make), [heldout(i) for i in range(n_eval_batches)]
    if int(w.get("reward_batch_size", 0)) > 0:
        extra = [split_heldout(load_episodes(ctx, d, stats)[0]) for d in reward_data]
        text_len, labels = int(w.max_text_len), str(w.get("reward_labels", "paper"))
        r_train = RewardExamples(train_eps + [e for tr, _ in extra for e in tr], int(w.reward_batch_size),
                                 seed + 2, text_len, labels, tokenizer)
        r_eval = RewardExamples((eval_eps or train_eps) + [e for tr, ev in extra for e in (ev or tr)], 1,
                                seed + 3, text_len, labels, tokenizer)
        r_eval = r_eval.heldout(n_eval_batches, int(w.eval_reward_frames) // 2)
        if len(r_eval) == len(heldout):
            heldout = [dict(h, **r) for h, r in zip(heldout, r_eval)]
        else:
            print(f"world model: only {sum(len(r['reward_yes']) for r in r_eval)} held-out labelled "
                  f"reward frames for {len(heldout)} eval batches (config.wm.eval_batches): the reward "
                  "metrics read the held-out transitions' current frames instead")
        batch_fn = lambda step: dict(train_fn(step), **r_train(step))  # noqa: E731
        return batch_fn, heldout, stats
    return train_fn, heldout, stats



def initial_params(ctx, wm: WorldModel, stats, batch_fn, log):
    """The world model's starting point -> (params, interrupted). A BAGEL release (config.wm.init_from)
    is loaded whole and keeps its FLUX VAE and latent statistics, so there is no VAE phase; otherwise
    fresh weights, with the VAE phase trained first. Actions are scaled by the data's range either way."""
    key = jax.random.key(int(ctx.config.seed))
    action_range = {"action_min": jnp.asarray(stats["action"].min, jnp.float32),
                    "action_max": jnp.asarray(stats["action"].max, jnp.float32)}
    release = ctx.config.wm.get("init_from", "")
    if not release:
        return train_vae(ctx, wm, wm.init(key, action_range["action_min"], action_range["action_max"]), batch_fn,
                         log)
    params, fresh = bagel_import.load_world_model(release, wm, key)
    log(f"initialised from the BAGEL release {release} (new: {', '.join(fresh) or 'nothing'}); its FLUX VAE "
        "is kept frozen, no VAE phase")
    return dict(params, stats=dict(params["stats"], **action_range)), False


def train_vae(ctx, wm: WorldModel, params, batch_fn, log):
    """VAE phase; returns params with 'vae' trained and 'stats' latent shift / scale measured."""
    v = ctx.config.wm.vae
    steps = int(v.steps)
    tx = wm_training.make_optimizer(ctx.config.wm, steps, lr=float(v.lr))
    state = wm_training.TrainState(jnp.zeros((), jnp.int32), params["vae"], params["vae"], tx.init(params["vae"]))
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
        return wm_training.TrainState(state.step + 1, p, p, opt), dict(m, loss=loss)

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
    zs = []
    for i in range(4):
        b = batch_fn(10 ** 6 + i)
        zs.append(np.asarray(enc(params["vae"], to_float(b["images"].reshape((-1,) + b["images"].shape[2:])))))
    z = np.concatenate(zs).reshape(-1, zs[0].shape[-1])
    params["stats"] = dict(params["stats"], latent_shift=jnp.asarray(z.mean(0)),
                           latent_scale=jnp.asarray(np.maximum(z.std(0), 1e-3)))
    log(f"VAE phase: {res.step} steps, {time.time() - t0:.1f} s; latent std {z.std(0).round(3).tolist()}")
    return params, res.interrupted


def train_dynamics(ctx, wm: WorldModel, params, batch_fn, heldout, num_steps, frozen, assets, log):
    """Dynamics + reward phase (checkpoint CKPT_WM), with the consistency probe fitted first when
    config.wm.probe.enabled; evaluates on `heldout`. -> the stage summary."""
    w = ctx.config.wm
    tx = wm_training.make_optimizer(w, num_steps, frozen=frozen)
    ema = float(w.ema)
    state = wm_training.TrainState(jnp.zeros((), jnp.int32), params["net"], params["net"], tx.init(params["net"]))
    base = jax.random.key(int(ctx.config.seed) + 13)
    dp = sharding.DataParallel(ctx.config.mesh)
    state, state_shardings = dp.place(state)
    # On the mesh too: the checkpoint saves them with the net, and orbax refuses host-local arrays
    # when there are several processes.
    fixed = dp.on_mesh({"vae": params["vae"], "stats": params["stats"]})

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
        return wm_training.TrainState(state.step + 1, p, e, opt), dict(m, grad_norm=optax.tree.norm(g))

    step_fn = dp.jit_step(step_fn, state_shardings)
    probe, probe_info = None, {}
    if w.get("probe") is not None and w.probe.enabled:
        probe, probe_info = wm_training.train_state_probe(w.probe, batch_fn, int(ctx.config.seed))
        state_probe.save(Path(ctx.stage_dir) / PROBE_FILE, probe)
        log(f"consistency probe: {json.dumps(probe_info)}")
    evaluator = wm_training.make_evaluator(wm, heldout, jax.random.key(int(ctx.config.seed) + 17), probe=probe)
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
            **{k: last_eval[k] for k in wm_training.CONSISTENCY_KEYS if k in last_eval}}
    log(json.dumps({k: v for k, v in summary.items()}, default=float))
    return summary



def checkpoint_assets(config, stats):
    return {"config": json.loads(config.to_json_best_effort()), "norm_stats": stats.to_dict(),
            "norm_mode": config.data.norm_mode}


def finetune_data(ctx, stats):
    """wm_finetune's data (open_data): the collected rollouts unless config.wm.finetune_data names
    others; after pretraining with the pretraining statistics and, with reward_replay, its reward
    examples (a weak policy's rollouts may hold no success; the pretraining data has Yes frames).
    With dynamics_replay every episode of the pretraining data and play_data joins the training split
    (more transitions at no extra real budget; the held-out split stays the rollouts')."""
    w = ctx.config.wm
    data = collected_data(ctx)
    replay = (w.pretrain_data,) if w.pretrain_enabled and w.get("reward_replay", False) else ()
    # without collected rollouts the fine-tuning data is the pretraining data already: not twice
    dynamics = tuple(d for d in (w.pretrain_data, *w.play_data) if d != data) if w.get("dynamics_replay") else ()
    return open_data(ctx, data, int(w.batch_size), int(ctx.config.seed) + 1, stats, reward_data=replay,
                     extra_data=dynamics)


def evaluate_checkpoint(ctx, stage: str) -> dict:
    """The held-out metrics (make_evaluator) of a finished world-model stage's checkpoint, on the
    batches, key and consistency probe that stage evaluated with, so numbers match its summary and
    metrics added since can be read on old runs."""
    if stage not in ("wm_pretrain", "wm_finetune"):
        raise ValueError(f"stage must be wm_pretrain or wm_finetune, not {stage!r}")
    w, seed = ctx.config.wm, int(ctx.config.seed)
    stage_dir = Path(ctx.stage_output(stage))
    wm, params, assets = loading.load_world_model(stage_dir / CKPT_WM, ctx.config)
    stats = loading.norm_stats(assets)
    if stage == "wm_pretrain":
        _, heldout, _ = open_data(ctx, w.pretrain_data, int(w.batch_size), seed, stats)
    else:
        _, heldout, _ = finetune_data(ctx, stats)
    probe = state_probe.load(stage_dir / PROBE_FILE) if (stage_dir / PROBE_FILE).exists() else None
    return wm_training.make_evaluator(wm, heldout, jax.random.key(seed + 17), probe=probe)(params)
