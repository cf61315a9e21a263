"""The `sft` stage: behaviour cloning of the VLA policy by flow matching on RLDS demonstrations.

AdamW with linear warmup + cosine decay, global grad-norm clipping, an EMA of the parameters (used for
evaluation and saved as the inference `params` item), periodic evaluation in the simulator, orbax
checkpoints (vlambpo_jax.train.checkpoints) whose assets carry the config, the action/state
normalization statistics and the tokenizer, and exact resumption (the batch of step s and the training
noise of step s depend only on s).

Data: config.data describes the dataset (default: the RLDS episodes the `demos` stage wrote). With
config.sft.in_memory (default True) every episode is read once into memory and batch s is a slice of a
seeded per-epoch permutation of all (episode, step) samples; otherwise batches stream from the reader
and a resumed run skips the batches already consumed.

DAgger (config.sft.dagger_rounds > 0, in-memory data and a simulator only): after sft.steps, each
round lets the policy act for a random number of chunks in new scenes, hands over to the noisy
scripted expert (envs/demos.collect_takeover), adds the successful expert parts to the data and trains
sft.dagger_steps more steps on demos + every round's episodes. The learning-rate schedule spans all
steps. Round r's episodes are written to <stage_dir>/dagger/round_<r> and reread on resumption.

The train step is vlambpo_jax/models/policy_train.py. Other stages load the result with
`vlambpo_jax.loading.load_policy(ctx.stage_output('sft') / 'policy')`.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from vlambpo_jax import loading
from vlambpo_jax.data import normalization, rlds_reader
from vlambpo_jax.data import tokenizer as tok_lib
from vlambpo_jax.data.rlds_writer import builder_dir, write_rlds
from vlambpo_jax.envs import demos as demos_lib
from vlambpo_jax.envs import evaluation, has_simulator, scene_pool, tabletop
from vlambpo_jax.errors import UserError
from vlambpo_jax.models import grounding, pi05_import
from vlambpo_jax.models import policy as policy_lib
from vlambpo_jax.models.policy_train import SFTState, make_optimizer, make_train_step
from vlambpo_jax.stages import common
from vlambpo_jax.train import checkpoints, sharding
from vlambpo_jax.train.loop import train_loop

CKPT_NAME = "policy"
MODEL_KEYS = ("images", "image_mask", "tokens", "token_mask", "actions", "action_mask", "state")


def model_batch(batch: dict, use_state: bool, perception_teacher: bool = False) -> dict:
    """Numpy batch from the data reader -> the jnp arrays the model reads. perception_teacher: also
    'percept', the true object and goal xy of the privileged state (grounding targets 0:4, x
    POSITION_SCALE), which the action expert then reads in place of its perception head's estimate."""
    keys = [k for k in MODEL_KEYS if k in batch and (k != "state" or use_state)]
    out = {k: jnp.asarray(batch[k]) for k in keys}
    if perception_teacher:
        out["percept"] = jnp.asarray(batch["raw_state"][:, tabletop.PRIVILEGED_POSITIONS] * grounding.POSITION_SCALE)
    return out


class InMemoryBatches:
    """batch(step): samples step*B .. step*B + B - 1 of an endless sequence of seeded epoch permutations."""

    def __init__(self, episodes: list[dict], batch_size: int, seed: int, make_batch):
        self.pairs = [(ep, t) for ep in episodes for t in range(ep["length"])]
        if not self.pairs:
            raise UserError("sft: the dataset has no steps (config.data points at an empty split?)")
        self.batch_size, self.seed, self.make_batch = batch_size, seed, make_batch
        self._perms: dict[int, np.ndarray] = {}

    def _perm(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) > 4:
                self._perms.clear()
            self._perms[epoch] = np.random.default_rng([self.seed, epoch, 17]).permutation(len(self.pairs))
        return self._perms[epoch]

    def __call__(self, step: int) -> dict:
        n = len(self.pairs)
        idx = [self._perm(s // n)[s % n] for s in range(step * self.batch_size, (step + 1) * self.batch_size)]
        return self.make_batch([self.pairs[i] for i in idx])


class StreamBatches:
    """batch(step) from a deterministic stream; asking for a later step skips the batches in between,
    asking for the last step again returns the same batch (the example batch run() builds the
    policy from is batch 0, which training then asks for)."""

    def __init__(self, iterator):
        self.it, self.next_step, self.last = iterator, 0, None

    def __call__(self, step: int) -> dict:
        if step == self.next_step - 1 and self.last is not None:
            return self.last
        if step < self.next_step:
            raise RuntimeError(f"sft: stream batches go forward only (asked for {step}, at {self.next_step})")
        while self.next_step < step:
            next(self.it)
            self.next_step += 1
        self.next_step += 1
        self.last = next(self.it)
        return self.last


class RoundBatches:
    """batch(step) from the newest data round that has begun by `step` (DAgger: each round's
    InMemoryBatches starts at its first step)."""

    def __init__(self, first):
        self.rounds = [(0, first)]

    def add(self, start_step: int, batches) -> None:
        self.rounds.append((start_step, batches))

    def __call__(self, step: int) -> dict:
        return next(b for start, b in reversed(self.rounds) if step >= start)(step)


def env_policy(config, policy, tokenizer, stats):
    """(the training-split env, its deterministic policy_fn(params, obs, key) -> f32[k, 7])."""
    env = tabletop.make_env(config)
    return env, policy_lib.make_env_policy_fn(
        policy, tokenizer, env.instructions, int(config.data.max_text_len), mode="eval",
        normalize_state=state_normalizer(config, stats))


def _evaluator(ctx, policy, tokenizer, stats, key):
    """eval_fn(state, step) -> metrics: success rates of the EMA policy in the simulator, or None when
    the config has no simulator (Bridge) or config.sft.eval_episodes is 0."""
    config = ctx.config
    episodes = int(config.sft.eval_episodes)
    if episodes <= 0 or not has_simulator(config):
        return None
    env, policy_fn = env_policy(config, policy, tokenizer, stats)
    evaluator = evaluation.make_evaluator(env, policy_fn, episodes)  # compiled once, reused

    def eval_fn(state: SFTState, step: int) -> dict:
        start = time.time()
        res = evaluator(state.ema_params, jax.random.fold_in(key, step))
        metrics = {"eval/success_rate": res["success_rate"], "eval/ci95_lo": res["ci95"][0],
                   "eval/ci95_hi": res["ci95"][1], "eval/mean_length": res["mean_length"],
                   "eval/episodes": res["episodes"]}
        for name, r in res["per_task"].items():
            metrics[f"eval/{name}/success_rate"] = r["success_rate"]
        metrics["eval/seconds"] = time.time() - start
        print(f"[{ctx.stage}] step {step}: success {res['success_rate']:.3f} "
              f"(95% CI {res['ci95'][0]:.3f}-{res['ci95'][1]:.3f}, {res['episodes']} episodes) " +
              " ".join(f"{n}={r['success_rate']:.2f}" for n, r in res["per_task"].items()) +
              f" [{metrics['eval/seconds']:.0f} s]")
        last_eval.clear()
        last_eval.update(metrics)
        return metrics

    last_eval: dict = {}
    eval_fn.last = last_eval
    return eval_fn


def state_normalizer(config, stats):
    """Raw state [..., S] -> what the policy's state token reads, with the dataset's statistics."""
    return lambda x: normalization.normalize(x, stats["state"], config.data.norm_mode)


def policy_pool(pool: dict, normalize_state=None) -> dict:
    """A scene pool's rows as the policy reads them: its raw 'state' normalized (normalize_state) or
    dropped (None: a policy without a state token)."""
    pool = dict(pool)
    state = pool.pop("state")
    if normalize_state is not None:
        pool["state"] = np.asarray(normalize_state(state), np.float32)
    return pool


def grounding_pool(config, tokenizer) -> dict:
    """The grounding co-training frames (envs/scene_pool.py) config.sft.grounding_frames names:
    'reset' scenes or frames along scripted-expert 'episodes'."""
    sft, key = config.sft, jax.random.key(int(config.seed) + 3)
    if sft.grounding_frames == "episodes":
        return scene_pool.make_episode_pool(config, tokenizer, int(sft.grounding_scenes), key,
                                            grounding.POSITION_SCALE, float(config.demos.noise))
    return scene_pool.make_scene_pool(config, tokenizer, int(sft.grounding_scenes), key, grounding.POSITION_SCALE)


def setup_grounding(ctx, policy, tokenizer, batch_fn, batch_size: int, normalize_state=None):
    """Grounding co-training (models/grounding.py) when config.sft.grounding_weight > 0: renders the
    scene pool and wraps batch_fn to add grounding rows. normalize_state: needed when the policy reads
    a state token (config.policy.use_state). -> (head, head params, batch_fn); the head is None without
    grounding or when the policy's perception head takes its place."""
    config, sft = ctx.config, ctx.config.sft
    if float(sft.grounding_weight) <= 0:
        return None, {}, batch_fn
    t0 = time.time()
    pool = grounding_pool(config, tokenizer)
    print(f"[{ctx.stage}] grounding co-training: {len(pool['targets'])} frames ({sft.grounding_frames}) rendered "
          f"({time.time() - t0:.1f} s), weight {float(sft.grounding_weight)}")
    pool = policy_pool(pool, normalize_state if policy.dims.use_state else None)
    num_targets = pool["targets"].shape[1]
    if policy.dims.perception_dim:   # the policy's own head learns the first targets (models/policy.py)
        if not len(grounding.TARGET_NAMES) * 2 <= policy.dims.perception_dim <= num_targets:
            raise ValueError(f"config.policy.perception_dim={policy.dims.perception_dim}: must be in "
                             f"[{len(grounding.TARGET_NAMES) * 2}, {num_targets}] (the simulator's grounding targets)")
        head, head_params = None, {}
    else:
        head = grounding.GroundingHead(tuple(sft.grounding_hidden), num_targets)
        head_params = head.init(jax.random.key(int(config.seed) + 4), jnp.zeros((1, policy.dims.width)))["params"]
    seed = int(config.seed)
    rows = batch_size if sft.in_memory else batch_size // jax.process_count()  # streamed batches are local
    return head, head_params, lambda step: {**batch_fn(step), **grounding.pool_batch(pool, rows, seed, step)}


def make_trainer(ctx, policy, tokenizer, params, batch_fn, normalize_state=None, num_steps: int | None = None):
    """The SFT training state on the config mesh, its jitted step and the sharded batch function
    (grounding rows added when config.sft.grounding_weight > 0) -> (state, step_fn, batch_fn(step)).
    normalize_state: as setup_grounding's; num_steps: the schedule's length (default sft.steps)."""
    config, sft = ctx.config, ctx.config.sft
    head, head_params, batch_fn = setup_grounding(ctx, policy, tokenizer, batch_fn, int(sft.batch_size),
                                                  normalize_state)
    tx, schedule = make_optimizer(sft, int(sft.steps) if num_steps is None else int(num_steps))
    state = SFTState(step=jnp.zeros((), jnp.int32), params=params, ema_params=jax.tree.map(jnp.copy, params),
                     head_params=head_params, opt_state=tx.init((params, head_params)))
    dp = sharding.DataParallel(config.mesh)
    state, state_shardings = dp.place(state)
    step_fn = dp.jit_step(make_train_step(policy, tx, schedule, float(sft.ema), int(config.seed) + 1,
                                          int(sft.noise_samples), head, float(sft.grounding_weight),
                                          int(sft.grounding_layer), int(sft.augment_shift)),
                          state_shardings)
    return state, step_fn, lambda step: dp.shard(batch_fn(step), is_global=bool(sft.in_memory))


def run(ctx) -> dict:
    """The `sft` stage. Returns a JSON-able summary (steps, losses, timing, last evaluation)."""
    config, sft = ctx.config, ctx.config.sft
    stage_dir = Path(ctx.stage_dir)
    tokenizer = loading.make_tokenizer(config.policy.tokenizer)
    loader = rlds_reader.RLDSLoader(config, workdir=ctx.workdir, tokenizer=tokenizer)
    stats_dir = config.data.stats_cache_dir or str(Path(ctx.workdir) / "norm_stats")
    stats = loader.norm_stats(stats_dir)
    policy = policy_lib.Policy(config, vocab_size=tokenizer.vocab_size,
                               unnormalize=loading.action_unnormalizer(stats, config.data.norm_mode))
    use_state = policy.dims.use_state
    teacher = bool(sft.perception_teacher)
    batch_size = int(sft.batch_size)
    max_len = int(config.data.max_text_len)

    if sft.in_memory:
        # Every process holds every episode and builds the same global batch, then keeps its rows, so
        # the numbers do not depend on how many processes share the work.
        t0 = time.time()
        episodes = list(loader.episodes(all_hosts=True))
        print(f"[{ctx.stage}] {len(episodes)} episodes, {sum(e['length'] for e in episodes)} steps in memory "
              f"({time.time() - t0:.1f} s)")
        make = lambda samples: model_batch(rlds_reader.make_batch(
            samples, chunk_size=int(config.chunk_size), tokenizer=tokenizer, max_text_len=max_len,
            action_pad=config.data.action_pad, prompt_format=config.policy.prompt_format), use_state, teacher)
        batch_fn = RoundBatches(InMemoryBatches(episodes, batch_size, int(config.seed), make))
    else:
        stream = (model_batch(b, use_state, teacher) for b in loader.batches(batch_size=batch_size))
        batch_fn = StreamBatches(stream)

    example = batch_fn(0)
    obs = {k: v[:1] for k, v in example.items() if k not in ("actions", "action_mask")}
    params = policy.init(jax.random.key(int(config.seed)), obs)
    if sft.init_from and pi05_import.is_pi05_checkpoint(sft.init_from):
        params = jax.tree.map(jnp.asarray, pi05_import.load_pi05(sft.init_from, params))
        print(f"[{ctx.stage}] initialised from the pi0.5 checkpoint {sft.init_from} (value head: fresh)")
    elif sft.init_from:
        params, _ = checkpoints.load_params(sft.init_from, params)   # a string: gs:// stays a URL
        print(f"[{ctx.stage}] initialised from {sft.init_from}")
    counts = {g: policy_lib.count_params(p) for g, p in params.items()}
    print(f"[{ctx.stage}] params: " + ", ".join(f"{g} {n / 1e6:.2f}M" for g, n in counts.items()))
    rounds = int(sft.dagger_rounds)
    total_steps = int(sft.steps) + rounds * int(sft.dagger_steps)
    rounds_data = batch_fn
    state, step_fn, batch_fn = make_trainer(ctx, policy, tokenizer, params, batch_fn,
                                            state_normalizer(config, stats), num_steps=total_steps)
    assets = {"config": json.loads(config.to_json_best_effort()), "norm_stats": stats.to_dict(),
              "norm_mode": config.data.norm_mode, "tokenizer": tok_lib.tokenizer_assets(tokenizer),
              "vocab_size": int(tokenizer.vocab_size)}
    eval_fn = _evaluator(ctx, policy, tokenizer, stats, jax.random.key(int(config.seed) + 2))

    start = time.time()
    losses = []

    def logged_step(state, batch):
        state, metrics = step_fn(state, batch)
        losses.append(metrics["loss"])
        return state, metrics

    train = lambda state, num_steps: train_loop(
        ctx, name=CKPT_NAME, state=state, step_fn=logged_step, batch_fn=batch_fn, num_steps=num_steps,
        params_fn=lambda s: s.ema_params, assets=assets, eval_fn=eval_fn, eval_every=int(sft.eval_every))
    result = train(state, int(sft.steps))
    dagger = []
    if rounds:
        env, policy_fn = env_policy(config, policy, tokenizer, stats)
        for r in range(rounds):
            if result.interrupted:
                break
            new, info = dagger_round(ctx, env, policy_fn, result.state.ema_params, stats, tokenizer, r)
            episodes += new
            first = int(sft.steps) + r * int(sft.dagger_steps)
            rounds_data.add(first, InMemoryBatches(episodes, batch_size, int(config.seed) + r + 1, make))
            result = train(result.state, first + int(sft.dagger_steps))
            dagger.append({**info, "episodes_total": len(episodes),
                           "eval": dict(getattr(eval_fn, "last", {}) or {})})
    seconds = time.time() - start
    losses = [float(x) for x in jax.device_get(losses)]
    summary = {"steps": result.step, "interrupted": result.interrupted, "seconds": seconds,
               "steps_run": len(losses), "sec_per_step": seconds / max(len(losses), 1),
               "first_loss": losses[0] if losses else None,
               "final_loss": float(np.mean(losses[-20:])) if losses else None,
               "params": counts, "checkpoint_dir": str(stage_dir / CKPT_NAME),
               "eval": dict(getattr(eval_fn, "last", {}) or {}), "dagger": dagger}
    print(f"[{ctx.stage}] " + json.dumps({k: v for k, v in summary.items() if k != "params"}))
    return summary


def dagger_round(ctx, env, policy_fn, params, stats, tokenizer, r: int):
    """DAgger round r: the takeover episodes of the policy `params` (written to
    <stage_dir>/dagger/round_<r> once, reread when they exist), standardized like the demos.
    -> (episodes, info)."""
    config, sft = ctx.config, ctx.config.sft
    data_dir = Path(ctx.stage_dir) / "dagger" / f"round_{r}"
    builder = builder_dir(data_dir, config.demos.dataset_name)
    info = {"round": r}
    if not (builder / "dataset_info.json").exists():
        t0 = time.time()
        key = jax.random.fold_in(jax.random.key(int(config.seed) + 5), r)
        episodes, successes, runs = demos_lib.collect_takeover(
            env, policy_fn, params, key, int(sft.dagger_episodes), int(config.chunk_size),
            float(config.demos.noise), int(config.demos.batch_size), log=lambda m: print(f"[{ctx.stage}] {m}"))
        if not episodes:
            raise UserError(f"sft: DAgger round {r}: no takeover episode succeeded ({runs} runs)")
        common.write_once(f"dagger_{r}", lambda: write_rlds(
            data_dir, episodes, dataset_name=config.demos.dataset_name,
            image_shape=(env.image_size, env.image_size, 3), overwrite=True))
        info.update(runs=runs, successes=successes, seconds=time.time() - t0)
    round_config = config.copy_and_resolve_references()
    round_config.data.builder_dir = str(builder)
    loader = rlds_reader.RLDSLoader(round_config, tokenizer=tokenizer, stats=stats)
    episodes = list(loader.episodes(all_hosts=True))
    info.update(episodes=len(episodes), steps=int(sum(e["length"] for e in episodes)))
    print(f"[{ctx.stage}] DAgger round {r}: {len(episodes)} takeover episodes, {info['steps']} steps")
    return episodes, info
