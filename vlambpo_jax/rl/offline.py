"""The real-robot data path: VLA-MBPO from logged RLDS episodes, without a simulator.

The library of two pieces that replace the simulator stages of the tabletop pipeline:

* the `logged_roots` stage (stages/logged_roots.py, in place of `collect`): reads the logged
  episodes config.data describes and writes `<workdir>/logged_roots/roots.npz`, the chunk-aligned
  branch roots MBPO draws from (frames 0, k, 2k, ... of every episode of config.data.split,
  successes and failures; a superset of what the `collect` stage writes), and `heldout.npz`, every
  step of the episodes of config.logged.heldout_split (never trained on) with the logged action
  chunks in dataset units;
* the offline evaluation, which the `evaluate` stage (stages/evaluate.py) runs when the config has
  no `env` section: for each policy in config.eval.policies, the error of its deterministic action
  chunk against the logged chunk on held-out steps (MSE / L1 per dim in dataset units, first-step
  MSE, gripper agreement), and its imagined success rate: config.eval.imagined_branches branches
  from held-out chunk-aligned roots rolled in the world model (the MBPO rollout), success = the
  world model's Yes/No reward; plus the world-model metrics wm_pretrain / wm_finetune measured on
  their held-out transitions.

The world model trains on config.data itself (wm_finetune falls back to it when no `collect` output
exists), so the whole loop is: sft -> logged_roots -> wm_pretrain -> wm_finetune -> mbpo -> evaluate.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from vlambpo_jax.data import rlds_reader
from vlambpo_jax.envs.evaluation import wilson_interval
from vlambpo_jax.rl.rollout import ImaginedState, rollout

ROOT_KEYS = ("images", "tokens", "token_mask", "wm_tokens", "wm_token_mask")


# ------------------------------------------------------------------------------------------- data

def read_episodes(config, split: str, max_episodes: int = 0, workdir=None) -> list[dict]:
    """Standardized episodes (dataset units: binarized gripper, first zero action dropped) of `split`
    of config.data, in file order; the first `max_episodes` (0 = all)."""
    loader = rlds_reader.RLDSLoader(config, split=split, workdir=workdir, process_index=0, process_count=1)
    out = []
    for ep in loader.episodes(all_hosts=True):
        out.append(ep)
        if max_episodes and len(out) >= max_episodes:
            break
    if not out:
        raise ValueError(f"logged episodes: split {split!r} of {loader.builder_dir} has no episodes")
    return out


def _tokens(texts: list[str], tokenizer, max_text_len: int, wm_tokenizer, wm_max_text_len: int) -> dict:
    tokens, token_mask = tokenizer.encode_batch(texts, max_text_len)
    wm_tokens, wm_token_mask = wm_tokenizer.encode_batch(texts, wm_max_text_len)
    return {"tokens": np.asarray(tokens, np.int32), "token_mask": np.asarray(token_mask, bool),
            "wm_tokens": np.asarray(wm_tokens, np.int32), "wm_token_mask": np.asarray(wm_token_mask, bool)}


def _task_ids(texts: list[str]) -> np.ndarray:
    """Index of each instruction among the sorted distinct instructions."""
    names = sorted(set(texts))
    return np.asarray([names.index(t) for t in texts], np.int32)


def step_table(episodes: list[dict], chunk_size: int, tokenizer, max_text_len: int, wm_tokenizer,
               wm_max_text_len: int, stride: int = 1) -> dict[str, np.ndarray]:
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
            **_tokens(texts, tokenizer, max_text_len, wm_tokenizer, wm_max_text_len),
            "instruction": np.asarray(texts), "task_id": _task_ids(texts),
            "episode_success": np.asarray(cols["episode_success"]),
            "episode_id": np.asarray(cols["episode_id"], np.int32), "t": np.asarray(cols["t"], np.int32),
            "episode_length": np.asarray(cols["episode_length"], np.int32)}


def logged_roots(episodes: list[dict], chunk_size: int, tokenizer, max_text_len: int, wm_tokenizer,
                 wm_max_text_len: int) -> dict[str, np.ndarray]:
    """Chunk-aligned branch roots (frames 0, k, 2k, ... of every episode): the keys of
    rl.collect.branch_roots plus those of step_table."""
    return step_table(episodes, chunk_size, tokenizer, max_text_len, wm_tokenizer, wm_max_text_len,
                      stride=chunk_size)


def heldout_samples(episodes: list[dict], chunk_size: int, tokenizer, max_text_len: int, wm_tokenizer,
                    wm_max_text_len: int) -> dict[str, np.ndarray]:
    """Every step of every episode (step_table with stride 1)."""
    return step_table(episodes, chunk_size, tokenizer, max_text_len, wm_tokenizer, wm_max_text_len)


def roots_of(samples: dict, chunk_size: int) -> dict[str, np.ndarray]:
    """The chunk-aligned steps (t = 0, k, 2k, ...) of heldout_samples: branch roots."""
    keep = samples["t"] % chunk_size == 0
    return {key: v[keep] for key, v in samples.items()}


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
    @jax.jit
    def fn(params, world_params, start, key):
        traj, _, _ = rollout(policy, params, world, world_params, ImaginedState(**start), key, num_chunks)
        return traj.terminal.any(axis=0), traj.mask.sum(axis=0)
    return fn


def imagined_success(fn, params, world_params, start: dict, key, batch_size: int) -> dict:
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
    the batch format of models/wm_training's evaluator: up to max_batches full batches of seeded random steps
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
