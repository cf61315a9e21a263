"""The real-robot data path: VLA-MBPO from logged RLDS episodes, without a simulator.

Two pieces replace the simulator stages of the tabletop pipeline:

* the `logged_roots` stage (in place of `collect`): reads the logged episodes config.data describes and
  writes `<workdir>/logged_roots/roots.npz`, the chunk-aligned branch roots MBPO draws from (frames
  0, k, 2k, ... of every episode of config.data.split, successes and failures; a superset of what the
  `collect` stage writes), and `heldout.npz`, every step of the episodes of config.logged.heldout_split
  (never trained on) with the logged action chunks in dataset units;
* the offline evaluation, which the `evaluate` stage runs when the config has no `env` section: for
  each policy in config.eval.policies, the error of its deterministic action chunk against the logged
  chunk on held-out steps (MSE / L1 per dim in dataset units, first-step MSE, gripper agreement), and
  its imagined success rate: config.eval.imagined_branches branches from held-out chunk-aligned roots
  rolled in the world model (the MBPO rollout), success = the world model's Yes/No reward; plus the
  world-model metrics wm_pretrain / wm_finetune measured on their held-out transitions.

The world model trains on config.data itself (wm_finetune falls back to it when no `collect` output
exists), so the whole loop is: sft -> logged_roots -> wm_pretrain -> wm_finetune -> mbpo -> evaluate.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

ROOT_KEYS = ("images", "tokens", "token_mask", "wm_tokens", "wm_token_mask")


# ------------------------------------------------------------------------------------------- data

def read_episodes(config, split: str, max_episodes: int = 0, workdir=None) -> list[dict]:
    """Standardized episodes (dataset units: binarized gripper, first zero action dropped) of `split`
    of config.data, in file order; the first `max_episodes` (0 = all)."""
    from vlambpo_jax.data import rlds_reader

    loader = rlds_reader.RLDSLoader(config, split=split, workdir=workdir, process_index=0, process_count=1)
    out = []
    for ep in loader.episodes(all_hosts=True):
        out.append(ep)
        if max_episodes and len(out) >= max_episodes:
            break
    if not out:
        raise ValueError(f"logged episodes: split {split!r} of {loader.builder_dir} has no episodes")
    return out


def _tokens(texts: list[str], tokenizer, max_text_len: int, wm_max_text_len: int) -> dict:
    from vlambpo_jax.models.tokenizer import ByteTokenizer

    tokens, token_mask = tokenizer.encode_batch(texts, max_text_len)
    wm_tokens, wm_token_mask = ByteTokenizer().encode_batch(texts, wm_max_text_len)
    return {"tokens": np.asarray(tokens, np.int32), "token_mask": np.asarray(token_mask, bool),
            "wm_tokens": np.asarray(wm_tokens, np.int32), "wm_token_mask": np.asarray(wm_token_mask, bool)}


def _task_ids(texts: list[str]) -> np.ndarray:
    """Index of each instruction among the sorted distinct instructions."""
    names = sorted(set(texts))
    return np.asarray([names.index(t) for t in texts], np.int32)


def step_table(episodes: list[dict], chunk_size: int, tokenizer, max_text_len: int, wm_max_text_len: int,
               stride: int = 1) -> dict[str, np.ndarray]:
    """Steps t = 0, stride, 2 stride, ... of every episode: the observation, the instruction tokens
    (policy and world model), the raw state and the logged action chunk t..t+k-1 in dataset units
    (past the end: the last action, masked out), the instruction's task id and episode bookkeeping."""
    k = chunk_size
    cols = {k_: [] for k_ in ("images", "image_mask", "state", "actions", "action_mask", "instruction",
                              "episode_success", "episode_id", "t", "episode_length")}
    for ep in episodes:
        T = ep["length"]
        for t in range(0, T, stride):
            idx = t + np.arange(k)
            cols["images"].append(ep["images"][t])
            cols["image_mask"].append(ep["image_mask"])
            cols["state"].append(ep["state"][t])
            cols["actions"].append(ep["action"][np.minimum(idx, T - 1)])
            cols["action_mask"].append(idx < T)
            cols["instruction"].append(str(ep["instruction"][t]))
            cols["episode_success"].append(bool(ep["success"]))
            cols["episode_id"].append(int(ep["index"]))
            cols["t"].append(t)
            cols["episode_length"].append(T)
    texts = cols["instruction"]
    return {"images": np.stack(cols["images"]).astype(np.uint8),
            "image_mask": np.stack(cols["image_mask"]).astype(bool),
            "state": np.stack(cols["state"]).astype(np.float32),
            "actions": np.stack(cols["actions"]).astype(np.float32),
            "action_mask": np.stack(cols["action_mask"]).astype(bool),
            **_tokens(texts, tokenizer, max_text_len, wm_max_text_len),
            "instruction": np.asarray(texts), "task_id": _task_ids(texts),
            "episode_success": np.asarray(cols["episode_success"]),
            "episode_id": np.asarray(cols["episode_id"], np.int32), "t": np.asarray(cols["t"], np.int32),
            "episode_length": np.asarray(cols["episode_length"], np.int32)}


def logged_roots(episodes: list[dict], chunk_size: int, tokenizer, max_text_len: int,
                 wm_max_text_len: int) -> dict[str, np.ndarray]:
    """Chunk-aligned branch roots (frames 0, k, 2k, ... of every episode): the keys of
    rl.collect.branch_roots plus those of step_table."""
    return step_table(episodes, chunk_size, tokenizer, max_text_len, wm_max_text_len, stride=chunk_size)


def heldout_samples(episodes: list[dict], chunk_size: int, tokenizer, max_text_len: int,
                    wm_max_text_len: int) -> dict[str, np.ndarray]:
    """Every step of every episode (step_table with stride 1)."""
    return step_table(episodes, chunk_size, tokenizer, max_text_len, wm_max_text_len)


def roots_of(samples: dict, chunk_size: int) -> dict[str, np.ndarray]:
    """The chunk-aligned steps (t = 0, k, 2k, ...) of heldout_samples: branch roots."""
    keep = samples["t"] % chunk_size == 0
    return {key: v[keep] for key, v in samples.items()}


def run_roots(ctx) -> dict:
    """The `logged_roots` stage (module docstring)."""
    from vlambpo_jax.models import tokenizer as tok_lib

    config, logged = ctx.config, ctx.config.logged
    tokenizer = tok_lib.load_tokenizer(config.policy.tokenizer)
    k, L, Lw = int(config.chunk_size), int(config.data.max_text_len), int(config.wm.max_text_len)
    train = read_episodes(config, config.data.split, int(logged.max_episodes), ctx.workdir)
    roots = logged_roots(train, k, tokenizer, L, Lw)
    np.savez_compressed(Path(ctx.stage_dir) / "roots.npz", **roots)
    held = read_episodes(config, logged.heldout_split, int(logged.heldout_max_episodes), ctx.workdir)
    samples = heldout_samples(held, k, tokenizer, L, Lw)
    np.savez_compressed(Path(ctx.stage_dir) / "heldout.npz", **samples)
    summary = {
        "roots": str(Path(ctx.stage_dir) / "roots.npz"), "heldout": str(Path(ctx.stage_dir) / "heldout.npz"),
        "split": config.data.split, "episodes": len(train), "num_roots": int(len(roots["t"])),
        "logged_steps": int(sum(e["length"] for e in train)),
        "success_rate": float(np.mean([e["success"] for e in train])),
        "heldout_split": logged.heldout_split, "heldout_episodes": len(held),
        "heldout_steps": int(len(samples["t"])),
        "heldout_roots": int(np.sum(samples["t"] % k == 0)),
    }
    print(f"[{ctx.stage}] {len(train)} logged episodes of split '{config.data.split}' -> "
          f"{summary['num_roots']} branch roots (success rate {summary['success_rate']:.2f}); held out: "
          f"{len(held)} episodes, {summary['heldout_steps']} steps of split '{logged.heldout_split}'")
    return summary


# ----------------------------------------------------------------------------------- evaluation

def action_errors(act_fn: Callable[[dict, jax.Array], np.ndarray], samples: dict, key: jax.Array,
                  batch_size: int, gripper_dim: int = 6, stride: int = 1) -> dict:
    """Error of act_fn's action chunks against the logged ones, in dataset units, over valid steps.

    act_fn(batch, key) -> f32[B, k, D]: batch holds the samples' keys (rows of `samples`) plus 'index',
    the rows' positions in `samples`; every batch has exactly batch_size rows (the last is padded by
    repeating rows, which are not counted). Batch i gets key fold_in(key, i), so two policies see the
    same noise. Returns mse / l1 (mean over valid steps and dims), per-dim versions, first_step_mse
    (the action executed first), gripper_accuracy ((pred > 0.5) == (logged > 0.5)) and samples.
    """
    rows = np.flatnonzero(samples["t"] % max(int(stride), 1) == 0)
    n = len(rows)
    d = samples["actions"].shape[-1]
    se, ae, first_se = np.zeros(d), np.zeros(d), np.zeros(d)
    grip_ok, steps = 0, 0
    for i, start in enumerate(range(0, n, batch_size)):
        idx = rows[start:start + batch_size]
        real = len(idx)
        idx = np.concatenate([idx, np.repeat(idx[-1:], batch_size - real)])
        batch = {k_: v[idx] for k_, v in samples.items() if k_ != "instruction"}
        batch["index"] = idx
        pred = np.asarray(act_fn(batch, jax.random.fold_in(key, i)), np.float64)[:real]
        true = samples["actions"][idx[:real]].astype(np.float64)
        mask = samples["action_mask"][idx[:real]]
        err = (pred - true) * mask[..., None]
        se += (err ** 2).sum(axis=(0, 1))
        ae += np.abs(err).sum(axis=(0, 1))
        first_se += ((pred[:, 0] - true[:, 0]) ** 2).sum(axis=0)
        grip_ok += int(np.sum(((pred[..., gripper_dim] > 0.5) == (true[..., gripper_dim] > 0.5)) & mask))
        steps += int(mask.sum())
    steps = max(steps, 1)
    return {"action_mse": float(se.sum() / (steps * d)), "action_l1": float(ae.sum() / (steps * d)),
            "action_mse_per_dim": (se / steps).tolist(), "action_l1_per_dim": (ae / steps).tolist(),
            "first_action_mse": float(first_se.sum() / (max(n, 1) * d)),
            "gripper_accuracy": grip_ok / steps, "samples": n, "action_steps": steps}


def policy_act_fn(policy, params, norm_state=None):
    """act_fn for action_errors: deterministic (Euler) sampling of `policy`, actions in dataset units."""
    keys = ("images", "image_mask", "tokens", "token_mask") + (("state",) if policy.dims.use_state else ())
    jitted = jax.jit(lambda params, obs, key: policy.sample(params, obs, key, mode="eval"))

    def fn(batch, key):
        obs = {k: batch[k] for k in keys}
        if "state" in obs and norm_state is not None:  # raw logged state -> the policy's normalization
            obs["state"] = np.asarray(norm_state(obs["state"]), np.float32)
        return jitted(params, {k: jnp.asarray(v) for k, v in obs.items()}, key)
    return fn


def draw_roots(roots: dict, num: int, seed: int) -> dict:
    idx = np.random.default_rng([seed, 0x0FF]).integers(0, len(roots["t"]), num)
    return {k: roots[k][idx] for k in ROOT_KEYS}


def make_imagined_eval(policy, world, num_chunks: int):
    """-> fn(params, world_params, start: dict of ROOT_KEYS, key) -> (terminal.any f32[B], chunks_taken)."""
    from vlambpo_jax.rl.rollout import ImaginedState, rollout

    @jax.jit
    def fn(params, world_params, start, key):
        traj, _, _ = rollout(policy, params, world, world_params, ImaginedState(**start), key, num_chunks)
        return traj.terminal.any(axis=0), traj.mask.sum(axis=0)
    return fn


def imagined_success(fn, params, world_params, start: dict, key, batch_size: int) -> dict:
    from vlambpo_jax.envs.evaluation import wilson_interval

    n = len(start["images"])
    wins, taken = [], []
    for i, s in enumerate(range(0, n, batch_size)):
        part = {k: jnp.asarray(v[s:s + batch_size]) for k, v in start.items()}
        real = len(part["images"])
        if real < batch_size:  # fixed shapes: one compilation
            part = {k: jnp.concatenate([v, jnp.repeat(v[-1:], batch_size - real, 0)]) for k, v in part.items()}
        w, c = fn(params, world_params, part, jax.random.fold_in(key, i))
        wins.append(np.asarray(w)[:real])
        taken.append(np.asarray(c)[:real])
    wins, taken = np.concatenate(wins), np.concatenate(taken)
    lo, hi = wilson_interval(int(wins.sum()), n)
    return {"imagined_success_rate": float(wins.mean()), "imagined_ci95": [lo, hi], "imagined_branches": n,
            "imagined_chunks_taken": float(taken.mean())}


def wm_heldout_batches(samples: dict, chunk_size: int, batch_size: int, max_batches: int, seed: int) -> list:
    """Held-out transitions (frame t -> t + k, clamped to the last frame, under the logged chunk) in
    the batch format of wm_train's evaluator: up to max_batches full batches of seeded random steps
    (the last step of each episode, which has no next frame, is left out)."""
    t, length = samples["t"], samples["episode_length"]
    nxt = np.arange(len(t)) + np.minimum(t + chunk_size, length - 1) - t  # an episode's rows are consecutive
    order = np.random.default_rng([seed, 0x3D]).permutation(np.flatnonzero(t < length - 1))
    n = len(order)
    bs = min(batch_size, n)
    out = []
    for i in range(min(n // max(bs, 1), max_batches)):
        r = order[i * bs:(i + 1) * bs]
        out.append({"images": samples["images"][r], "next_images": samples["images"][nxt[r]],
                    "actions": samples["actions"][r], "tokens": samples["wm_tokens"][r],
                    "token_mask": samples["wm_token_mask"][r], "episode_success": samples["episode_success"][r],
                    "steps_to_end": (length[r] - 1 - t[r]).astype(np.int32)})
    return out


def branch_chunks(config, roots: dict) -> int:
    """rl.branch_chunks, or (0) enough chunks to cover the longest logged episode."""
    n = int(config.rl.branch_chunks)
    if n > 0:
        return n
    return max(1, math.ceil(int(np.max(roots["episode_length"])) / int(config.chunk_size)))


def _stage_summary_if_done(ctx, stage: str) -> dict:
    from vlambpo_jax import pipeline

    return ctx.stage_summary(stage) if pipeline.is_done(Path(ctx.workdir), stage) else {}


def run_eval(ctx) -> dict:
    """Offline evaluation (the `evaluate` stage of a config without `env`; module docstring)."""
    from vlambpo_jax.data import normalization
    from vlambpo_jax.models import wm_train
    from vlambpo_jax.models.sft import load_policy
    from vlambpo_jax.rl.evaluate import checkpoint_of
    from vlambpo_jax.rl.rollout import ModelWorld

    config, ev = ctx.config, ctx.config.eval
    k = int(config.chunk_size)
    roots_summary = ctx.stage_summary("logged_roots")
    samples = dict(np.load(roots_summary["heldout"]))
    held_roots = roots_of(samples, k)
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 0x0FF1)
    batch = int(ev.batch_size)
    results = {"mode": "offline", "heldout": {
        "split": roots_summary["heldout_split"], "episodes": roots_summary["heldout_episodes"],
        "steps": int(len(samples["t"])), "roots": int(len(held_roots["t"])),
        "logged_success_rate": float(np.mean(held_roots["episode_success"]))}, "policies": {}}

    has_wm = bool(_stage_summary_if_done(ctx, "wm_finetune"))
    imagine = has_wm and int(ev.imagined_branches) > 0
    if has_wm:
        wm, wm_params, _ = wm_train.load_world_model(Path(ctx.stage_output("wm_finetune")) / wm_train.CKPT_WM,
                                                     config)
        world = ModelWorld(wm, float(config.rl.reward_threshold))
    if imagine:
        num_chunks = int(ev.imagined_chunks) or branch_chunks(config, held_roots)
        start = draw_roots(held_roots, int(ev.imagined_branches), int(config.seed))
        results["heldout"]["imagined_chunks"] = num_chunks
    results["world_model"] = {stage: _stage_summary_if_done(ctx, stage).get("eval", {})
                              for stage in ("wm_pretrain", "wm_finetune")}
    if has_wm and int(ev.wm_batches) > 0:  # the fine-tuned world model on the held-out split
        batches = wm_heldout_batches(samples, k, batch, int(ev.wm_batches), int(config.seed))
        results["world_model"]["heldout_split"] = wm_train.make_evaluator(
            wm, batches, jax.random.fold_in(key, 3))(wm_params, png=Path(ctx.stage_dir) / "wm_heldout.png")
        m = results["world_model"]["heldout_split"]
        print(f"[evaluate] world model on held-out split: PSNR head {m['psnr_head']:.2f} "
              f"(copy {m['copy_psnr_head']:.2f}), wrist {m['psnr_wrist']:.2f}, reward acc {m['reward_acc']:.3f}")

    stats = None
    for name in ev.policies:
        policy, params, _, assets = load_policy(checkpoint_of(ctx, name), config)
        stats = normalization.NormStats.from_dict(assets["norm_stats"])
        mode = assets.get("norm_mode", config.data.norm_mode)
        norm_state = lambda x, s=stats, m=mode: normalization.normalize(x, s["state"], m)  # noqa: E731
        out = action_errors(policy_act_fn(policy, params, norm_state), samples, key, batch,
                            int(config.data.gripper_dim), int(ev.action_stride))
        if imagine:
            fn = make_imagined_eval(policy, world, num_chunks)
            out.update(imagined_success(fn, params, wm_params, start, jax.random.fold_in(key, 7), batch))
        results["policies"][name] = out
        line = (f"[evaluate] {name}: held-out action MSE {out['action_mse']:.5f}, L1 {out['action_l1']:.4f}, "
                f"gripper agreement {out['gripper_accuracy']:.3f} ({out['samples']} steps)")
        if imagine:
            lo, hi = out["imagined_ci95"]
            line += (f"; imagined success {out['imagined_success_rate']:.3f} [{lo:.3f}, {hi:.3f}] over "
                     f"{out['imagined_branches']} branches")
        print(line)
    if stats is not None:  # reference: always predicting the mean logged (training) action
        mean = np.asarray(stats["action"].mean, np.float32)
        results["baselines"] = {"mean_action": action_errors(
            lambda b, _: np.broadcast_to(mean, b["actions"].shape), samples, key, batch,
            int(config.data.gripper_dim), int(ev.action_stride))}
    path = Path(ctx.stage_dir) / "results.json"
    path.write_text(json.dumps(results, indent=2, default=float))
    summary = {"results": str(path), "mode": "offline"}
    for name, r in results["policies"].items():
        summary[f"{name}_action_mse"] = r["action_mse"]
        if "imagined_success_rate" in r:
            summary[f"{name}_imagined_success"] = r["imagined_success_rate"]
    return summary


# --------------------------------------------------------------------------------------- report

WM_REPORT_KEYS = ("psnr_head", "copy_psnr_head", "ssim_head", "copy_ssim_head", "psnr_wrist", "copy_psnr_wrist",
                  "ssim_wrist", "copy_ssim_wrist", "reward_acc", "reward_balanced_acc", "reward_f1")


def report_lines(results: dict, logged_steps: int | None) -> list[str]:
    """Markdown tables of an offline results.json."""
    held = results["heldout"]
    lines = ["## Offline evaluation (held-out logged episodes, no simulator)", "",
             f"Held-out split `{held['split']}`: {held['episodes']} episodes, {held['steps']} steps, "
             f"{held['roots']} chunk-aligned roots (logged success rate {held['logged_success_rate']:.2f}). "
             "Action errors are in dataset units against the logged action chunks (deterministic sampling); "
             "imagined success: branches from held-out roots rolled in the world model, success = its "
             f"Yes/No reward ({held.get('imagined_chunks', '-')} chunks per branch).", "",
             "| policy | action MSE | action L1 | first-action MSE | gripper agreement | "
             "imagined success (95% CI) |", "|---|---|---|---|---|---|"]
    rows = dict(results["policies"])
    rows.update({f"baseline: {n}": r for n, r in results.get("baselines", {}).items()})
    for name, r in rows.items():
        imag = "-"
        if "imagined_success_rate" in r:
            lo, hi = r["imagined_ci95"]
            imag = f"{r['imagined_success_rate']:.3f} [{lo:.3f}, {hi:.3f}] (n={r['imagined_branches']})"
        lines.append(f"| {name} | {r['action_mse']:.5f} | {r['action_l1']:.4f} | {r['first_action_mse']:.5f} "
                     f"| {r['gripper_accuracy']:.3f} | {imag} |")
    wm = {s: m for s, m in results.get("world_model", {}).items() if m}
    if wm:
        keys = [k_ for k_ in WM_REPORT_KEYS if any(k_ in m for m in wm.values())]
        lines += ["", "World model (k-step prediction under the logged chunk; `copy_` = the current frame "
                  "as prediction; all metrics in evaluate/results.json). Rows `wm_pretrain` / `wm_finetune`: "
                  "the transitions each stage held out of its training data; `heldout_split`: the fine-tuned "
                  "model on the held-out split.", "", "| data | " + " | ".join(keys) + " |",
                  "|" + "---|" * (len(keys) + 1)]
        lines += [f"| {s} | " + " | ".join(f"{m.get(k_, float('nan')):.3f}" for k_ in keys) + " |"
                  for s, m in wm.items()]
    if logged_steps is not None:
        lines += ["", f"Real robot steps used: {logged_steps} logged steps (no new interaction)."]
    return lines + [""]


def imagined_vs_logged(ctx, num_videos: int, num_chunks: int, upscale: int = 4) -> tuple[list[str], list[str]]:
    """GIFs of held-out episodes: the logged frames at 0, k, 2k, ... (left) and the world model driven
    open-loop by the logged action chunks from the same first frame (right)."""
    import imageio.v2 as imageio

    from vlambpo_jax.models import wm_train

    config, k = ctx.config, int(ctx.config.chunk_size)
    samples = dict(np.load(ctx.stage_summary("logged_roots")["heldout"]))
    wm, wm_params, _ = wm_train.load_world_model(Path(ctx.stage_output("wm_finetune")) / wm_train.CKPT_WM,
                                                 config)
    predict = jax.jit(wm.predict)
    firsts = np.flatnonzero(samples["t"] == 0)[:num_videos]
    paths, texts = [], []
    for b, row in enumerate(firsts):
        T = int(samples["episode_length"][row])
        real, imagined = [samples["images"][row]], [samples["images"][row]]
        for c in range(num_chunks):
            t = c * k
            if t >= T - 1:
                break
            s = row + t
            real.append(samples["images"][row + min(t + k, T - 1)])
            imagined.append(np.asarray(predict(
                wm_params, jnp.asarray(imagined[-1][None]), jnp.asarray(samples["wm_tokens"][s:s + 1]),
                jnp.asarray(samples["wm_token_mask"][s:s + 1]), jnp.asarray(samples["actions"][s:s + 1]),
                jax.random.fold_in(jax.random.PRNGKey(config.seed + 4242), b * 1000 + c)))[0])
        frames = []
        for r, m in zip(real, imagined):
            row_img = np.concatenate([r[0], r[1], np.full_like(r[0][:, :2], 255), m[0], m[1]], 1)
            frames.append(np.kron(row_img, np.ones((upscale, upscale, 1), np.uint8)))
        path = Path(ctx.stage_dir) / f"imagined_vs_logged_{b}.gif"
        imageio.mimsave(path, frames, duration=0.6, loop=0)
        paths.append(str(path))
        texts.append(str(samples["instruction"][row]))
    return paths, texts

