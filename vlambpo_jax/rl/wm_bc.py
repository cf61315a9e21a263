"""The library of the `wm_bc` stage (stages/wm_bc.py): "BC on world-model data", filtered behaviour
cloning on imagined successes.

A baseline for VLA-MBPO that uses the same world model and the same collected roots but no RL: starting
from the SFT policy, each of config.rl.bc_rounds rounds
  1. rolls config.rl.bc_branches full-horizon branches in the world model (the rollout scan of
     rl/rollout.py with ModelWorld, Flow-SDE sampling, termination latched at the first chunk whose
     world-model reward P(Yes) exceeds config.rl.reward_threshold),
  2. keeps the branches that succeeded within their task's horizon, and their (observation, normalized
     action chunk) pairs up to and including the successful chunk (`successful_pairs`),
  3. runs config.rl.bc_steps flow-matching steps (the sft stage's train step and AdamW schedule, at
     config.rl.bc_lr) on batches of config.rl.bc_batch_size pairs drawn from every round's kept pairs.
Roots are drawn from episode starts (t = 0, one branch = one imagined episode) when
config.rl.bc_initial_roots, else from every chunk-aligned root like mbpo; a branch from a root at step t
of a task with horizon H may take ceil((H - t) / k) chunks.

Output: `<stage>/policy/` in the sft stage's checkpoint format (params + assets), so
`--config.eval.policies="('sft','wm_bc')"` evaluates it; the summary and `<stage>/rounds.json` give per
round the imagined success rate, the branches and pairs kept, the dataset size and the mean BC loss.
No EMA: the saved params are the trained ones. Resuming is exact: each round's kept pairs are written to
`<stage>/data/round_NNN.npz` before its BC steps, and every random draw is keyed by round or step.
Single-process only (the rollout's outputs are gathered on the host).
"""
from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vlambpo_jax.envs import has_simulator
from vlambpo_jax.models import policy_train
from vlambpo_jax.rl.rollout import ImaginedState, rollout

CKPT_NAME = "policy"          # the sft stage's name, so tools treating both alike keep working
OBS_KEYS = ("images", "tokens", "token_mask")
ROOT_KEYS = ("images", "tokens", "token_mask", "wm_tokens", "wm_token_mask")


def successful_pairs(obs: dict, actions: np.ndarray, terminal: np.ndarray, mask: np.ndarray,
                     max_chunks: np.ndarray | None = None) -> tuple[dict, np.ndarray]:
    """The BC filter on one batch of rollouts (time-major, T chunks x B branches).

    obs: leaves [T, B, ...]; actions [T, B, k, D] (normalized); terminal / mask bool [T, B] (the
    rollout's latched success and taken-chunk mask); max_chunks int[B]: chunks each branch may take
    (None = all T). A branch counts as a success when it terminated at a chunk < max_chunks; its pairs
    are the taken chunks up to and including the first successful one. Failed branches give nothing.
    Returns ({**obs, 'actions'} with leading axis N (branch-major, then time), success bool[B]).
    """
    terminal, mask = np.asarray(terminal, bool), np.asarray(mask, bool)
    t, b = terminal.shape
    chunk = np.arange(t)[:, None]
    within = np.ones((t, b), bool) if max_chunks is None else chunk < np.asarray(max_chunks)[None, :]
    hit = terminal & within
    success = hit.any(axis=0)
    first = np.where(success, hit.argmax(axis=0), -1)
    keep = mask & within & (chunk <= first[None, :]) & success[None, :]
    ti, bi = np.nonzero(keep.T)[::-1]   # branch-major order
    pairs = {key: np.asarray(v)[ti, bi] for key, v in obs.items()}
    pairs["actions"] = np.asarray(actions)[ti, bi]
    return pairs, success


def chunk_budgets(config, roots: dict, idx: np.ndarray, num_chunks: int) -> np.ndarray:
    """Chunks the branch from each root in `idx` may take: ceil((H[task] - t) / k), capped at num_chunks."""
    if "task_id" not in roots or "t" not in roots or not has_simulator(config):
        return np.full(len(idx), num_chunks, np.int32)
    horizons = np.asarray([int(config.env.horizons[name]) for name in config.env.tasks])
    left = horizons[np.asarray(roots["task_id"])[idx]] - np.asarray(roots["t"])[idx]
    return np.clip(-(-left // int(config.chunk_size)), 0, num_chunks).astype(np.int32)


class RoundData:
    """The kept pairs of every round so far, collected once per round and saved for exact resumption."""

    def __init__(self, directory: Path, collect_fn):
        self.directory = Path(directory)
        self.collect_fn = collect_fn       # (round, params) -> (pairs dict, stats dict)
        self.pairs: dict[int, dict] = {}
        self.stats: dict[int, dict] = {}
        self._cat: dict | None = None

    def ensure(self, r: int, params) -> list[dict]:
        """Loads or collects rounds 0..r; returns the stats of the rounds collected by this call."""
        new = []
        for q in range(r + 1):
            if q in self.pairs:
                continue
            path = self.directory / f"round_{q:03d}.npz"
            if path.exists():
                with np.load(path) as f:
                    self.pairs[q] = {k[len("pair_"):]: f[k] for k in f.files if k.startswith("pair_")}
                self.stats[q] = json.loads((self.directory / f"round_{q:03d}.json").read_text())
            else:
                pairs, stats = self.collect_fn(q, params)
                self.directory.mkdir(parents=True, exist_ok=True)
                if jax.process_index() == 0:
                    tmp = self.directory / f"round_{q:03d}.tmp.npz"
                    np.savez(tmp, **{f"pair_{k}": v for k, v in pairs.items()})
                    (self.directory / f"round_{q:03d}.json").write_text(json.dumps(stats))
                    tmp.rename(path)
                self.pairs[q], self.stats[q] = pairs, stats
                new.append(stats)
            self._cat = None
        return new

    @property
    def size(self) -> int:
        return sum(len(p["actions"]) for p in self.pairs.values())

    def dataset(self) -> dict:
        if self._cat is None:
            parts = [self.pairs[q] for q in sorted(self.pairs) if len(self.pairs[q]["actions"])]
            self._cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}
        return self._cat


def make_collector(config, policy, world, world_params, roots: dict, num_chunks: int, seed: int):
    """-> collect(round, params) -> (pairs, stats): one round of imagined branches, filtered."""
    rl = config.rl
    candidates = np.arange(len(roots["t"]))
    if rl.bc_initial_roots:
        initial = np.flatnonzero(np.asarray(roots["t"]) == 0)
        if len(initial) == 0:
            raise ValueError("wm_bc: config.rl.bc_initial_roots is set but the collect stage's roots have "
                             "no episode start (t = 0)")
        candidates = initial
    roll = jax.jit(lambda params, wparams, start, key: rollout(policy, params, world, wparams, start, key,
                                                               num_chunks)[0])
    d = int(config.action_dim)

    def collect(r: int, params):
        idx = candidates[np.random.default_rng([seed, r]).integers(0, len(candidates), int(rl.bc_branches))]
        start = ImaginedState(**{k: jnp.asarray(roots[k][idx]) for k in ROOT_KEYS})
        traj = roll(params, world_params, start, jax.random.fold_in(jax.random.PRNGKey(seed), r))
        traj = jax.device_get(traj)
        actions = np.asarray(traj.chain["x"])[:, :, -1, :, :d]  # the sampled chunk, normalized
        budgets = chunk_budgets(config, roots, idx, num_chunks)
        pairs, success = successful_pairs({k: traj.obs[k] for k in OBS_KEYS}, actions, traj.terminal,
                                          traj.mask, budgets)
        stats = {"round": r, "branches": int(len(idx)), "imagined_success": float(success.mean()),
                 "kept_branches": int(success.sum()), "kept_pairs": int(len(pairs["actions"])),
                 "mean_chunks_to_success": (float(np.asarray(traj.terminal).argmax(axis=0)[success].mean() + 1)
                                            if success.any() else None)}
        return pairs, stats

    return collect


def bc_optimizer(config, total_steps: int):
    """The sft stage's AdamW + warm-up/cosine schedule with lr = config.rl.bc_lr."""
    s = ml_collections.ConfigDict(config.sft.to_dict())
    s.lr = float(config.rl.bc_lr)
    s.warmup = min(int(s.warmup), max(total_steps // 10, 0))
    return policy_train.make_optimizer(s, total_steps)
