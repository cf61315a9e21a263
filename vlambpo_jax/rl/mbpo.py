"""The `mbpo` stage: PPO on chunk-level branches imagined by the world model (VLA-MBPO).

One iteration: draw M branch roots from the collected real rollouts, roll n chunks in the world model
(one jitted lax.scan), compute chunk-level GAE, run critic-only warm-up epochs, then PPO epochs (each
a lax.scan over minibatches, values re-computed before each epoch when configured). With
`rl.world = 'sim'` the same loop runs in the MJX simulator from fresh episodes instead (the online-PPO
baseline, piRL-style); the real env steps it uses are counted. Roots come from the `collect` stage
(simulator rollouts) or, on the real-robot path without a simulator (no `env` section), from the
`logged_roots` stage (rl/offline.py); periodic simulator evaluation needs the simulator.
Resuming continues with identical numbers: every random draw is keyed by the iteration index.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from vlambpo_jax.rl import ppo
from vlambpo_jax.rl.rollout import ImaginedState, ModelWorld, SimWorld, rollout
from vlambpo_jax.train import sharding


def branch_sampler(roots: dict, num_branches: int, seed: int):
    """iteration -> ImaginedState of `num_branches` roots drawn uniformly (deterministic per iteration)."""
    n = len(roots["t"])

    def draw(i: int) -> ImaginedState:
        idx = np.random.default_rng([seed, i]).integers(0, n, num_branches)
        return ImaginedState(**{key: jnp.asarray(roots[key][idx]) for key in (
            "images", "tokens", "token_mask", "wm_tokens", "wm_token_mask")})
    return draw


def make_iteration(policy, rl, world, world_params, start_fn, num_chunks: int, seed: int, optimizer,
                   dp: sharding.DataParallel | None = None, state_shardings=None):
    """Returns iteration(state: PPOState, i) -> (state, metrics): one refill + PPO update.

    start_fn(i) gives the branch start states of iteration i (roots or fresh episodes). With a
    DataParallel `dp` (and the PPO state placed by it), branches are split over the mesh and the update
    epochs keep the state's shardings.
    """
    roll_kw = ({} if dp is None or state_shardings is None else
               dict(in_shardings=(state_shardings.params, dp.batch_sharding, sharding.replicated(dp.mesh))))
    roll = jax.jit(lambda params, start, key: rollout(policy, params, world, world_params, start, key,
                                                      num_chunks), **roll_kw)
    epoch, critic_epoch = ppo.make_update_fns(policy, rl, optimizer)
    shard_kw = ({} if state_shardings is None else
                dict(in_shardings=(state_shardings, None, None), out_shardings=(state_shardings, None)))
    epoch = jax.jit(epoch, donate_argnums=0, **shard_kw)
    critic_epoch = jax.jit(critic_epoch, donate_argnums=0, **shard_kw)
    values_fn = jax.jit(lambda p, traj, final_obs, alive: ppo.recompute_values(
        policy, p, traj, final_obs, alive))
    buffer_fn = jax.jit(lambda traj, v, b: ppo.make_buffer(traj, v, b, rl))

    def iteration(state: ppo.PPOState, i: int):
        key = jax.random.fold_in(jax.random.PRNGKey(seed), i)
        roll_key, warm_key, epoch_key = jax.random.split(key, 3)
        start = start_fn(i)
        if dp is not None:
            start = jax.device_put(start, dp.batch_sharding)
        traj, bootstrap, final = roll(state.params, start, roll_key)
        alive = ~traj.terminal.any(axis=0)
        buffer = buffer_fn(traj, traj.value, bootstrap)
        metrics = {}
        for e in range(rl.critic_warmup_epochs):
            state, m = critic_epoch(state, buffer, jax.random.fold_in(warm_key, e))
            metrics["warmup_value_loss"] = m["value_loss"]
        for e in range(rl.epochs):
            if rl.recompute_values and (e > 0 or rl.critic_warmup_epochs > 0):
                values, boot = values_fn(state.params, traj, world.observe(final), alive)
                buffer = buffer_fn(traj, values, boot)
            state, m = epoch(state, buffer, jax.random.fold_in(epoch_key, e))
            metrics.update(m)
        metrics.update({
            "branch_success": jnp.mean(traj.terminal.any(axis=0)),
            "branch_return": jnp.mean(traj.step_rewards.sum(axis=(0, 2))),
            "chunks_taken": jnp.mean(traj.mask.sum(axis=0)),
            "value_mean": jnp.mean(traj.value),
        })
        return state, metrics

    return iteration


def roots_stage(ctx) -> str:
    """The stage whose roots.npz MBPO draws from: 'collect' (simulator rollouts) or 'logged_roots'
    (logged real-robot episodes), whichever config.stages runs (else whichever has finished)."""
    from vlambpo_jax import pipeline

    for name in ("collect", "logged_roots"):
        if name in ctx.config.stages:
            return name
    for name in ("collect", "logged_roots"):
        if pipeline.is_done(Path(ctx.workdir), name):
            return name
    raise RuntimeError("stage 'mbpo' with config.rl.world='model' needs branch roots: add 'collect' "
                       "(simulator) or 'logged_roots' (logged episodes) to config.stages before it")


def run(ctx) -> dict:
    from vlambpo_jax.models import wm_train
    from vlambpo_jax.models.sft import load_policy
    from vlambpo_jax.train.loop import train_loop

    config, rl = ctx.config, ctx.config.rl
    sft_dir = ctx.stage_summary("sft")["checkpoint_dir"]
    policy, params, tokenizer, assets = load_policy(sft_dir, config)
    seed = int(config.seed) * 7919 + 17
    k = config.chunk_size

    if rl.world == "model":
        wm, wm_params, _ = wm_train.load_world_model(Path(ctx.stage_output("wm_finetune")) / wm_train.CKPT_WM,
                                                     config)
        world = ModelWorld(wm, rl.reward_threshold)
        roots = dict(np.load(ctx.stage_summary(roots_stage(ctx))["roots"]))
        start_fn = branch_sampler(roots, rl.num_branches, seed)
        env_steps_per_iteration, extra_env_steps = 0, 0
        if rl.branch_chunks > 0:
            num_chunks = rl.branch_chunks
        elif rl.branch_chunks < 0:
            choice = adaptive_branch_chunks(ctx, policy, params, tokenizer, wm, wm_params)
            num_chunks, extra_env_steps = choice["branch_chunks"], choice["env_steps"]
        elif "env" in config:
            from vlambpo_jax.envs.tabletop import make_env
            num_chunks = math.ceil(max(make_env(config).horizons) / k)
        else:  # logged episodes: enough chunks to cover the longest one
            from vlambpo_jax.rl.offline import branch_chunks
            num_chunks = branch_chunks(config, roots)
    else:
        if "env" not in config:
            raise ValueError("config.rl.world='sim' needs a simulator (config.env); without one use 'model'")
        from vlambpo_jax.envs.tabletop import make_env
        env = make_env(config)
        tokens, token_mask = tokenizer.encode_batch(list(env.instructions), config.data.max_text_len)
        world, wm_params = SimWorld(env, tokens, token_mask), None
        reset = jax.jit(jax.vmap(env.reset))
        start_fn = lambda i: reset(jax.random.split(jax.random.fold_in(jax.random.PRNGKey(seed), i),  # noqa: E731
                                                   rl.num_branches))
        num_chunks = math.ceil(env.max_horizon / k)
        env_steps_per_iteration, extra_env_steps = rl.num_branches * num_chunks * k, 0

    optimizer = ppo.make_optimizer(rl, params)
    dp = sharding.DataParallel(config.mesh)
    if rl.num_branches % dp.mesh.size:
        raise ValueError(f"config.rl.num_branches={rl.num_branches} must be divisible by the number of "
                         f"devices ({dp.mesh.size}) the branches are split over")
    state, state_shardings = dp.place(ppo.PPOState(params, optimizer.init(params), jnp.zeros((), jnp.int32)))
    iteration = make_iteration(policy, rl, world, wm_params, start_fn, num_chunks, seed, optimizer, dp,
                               state_shardings)
    eval_fn = _sim_evaluator(ctx, policy, tokenizer) if rl.eval_every and "env" in config else None
    result = train_loop(ctx, name="ppo", state=state, step_fn=iteration, batch_fn=lambda i: i,
                        num_steps=rl.iterations, params_fn=lambda s: s.params, assets=assets,
                        eval_fn=eval_fn, eval_every=rl.eval_every)
    summary = {"checkpoint_dir": str(Path(ctx.stage_dir) / "ppo"), "iterations": result.step,
               "world": rl.world, "branch_chunks": num_chunks,
               "env_steps": env_steps_per_iteration * result.step + extra_env_steps,
               "imagined_transitions": (rl.num_branches * num_chunks * result.step
                                        if rl.world == "model" else 0),
               **{k: v for k, v in ctx.writer.last.items()}}
    (Path(ctx.stage_dir) / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    return summary


def adaptive_branch_chunks(ctx, policy, params, tokenizer, wm, wm_params) -> dict:
    """rl.branch_chunks = -1: the Thm 4.2 choice from the world model's measured error growth
    (rl/branch_length.py), on the simulator's rollouts of the SFT policy or on held-out logged
    episodes. Saved to <stage>/branch_length.json and reused when the stage resumes.
    -> branch_length.choose's dict plus env_steps (simulator steps the measurement used)."""
    from vlambpo_jax.rl import branch_length

    path = Path(ctx.stage_dir) / "branch_length.json"
    if path.exists():
        return json.loads(path.read_text())
    config, rl = ctx.config, ctx.config.rl
    key = jax.random.PRNGKey(int(config.seed) * 7919 + 0xB1)
    if "env" in config:
        from vlambpo_jax.envs.tabletop import make_env
        env = make_env(config)
        n_max = int(rl.adaptive_max_chunks) or math.ceil(env.max_horizon / config.chunk_size)
        seqs = branch_length.sim_sequences(env, policy, params, tokenizer, config, key,
                                           int(rl.adaptive_sequences), n_max)
    else:
        samples = dict(np.load(ctx.stage_summary("logged_roots")["heldout"]))
        # at most as many chunks as the longest held-out episode holds after its first frame
        n_max = min(int(rl.adaptive_max_chunks) or 4,
                    max(1, (int(samples["episode_length"].max()) - 1) // int(config.chunk_size)))
        seqs = branch_length.logged_sequences(samples, int(config.chunk_size), int(rl.adaptive_sequences),
                                              n_max, int(config.seed))
    predict = jax.jit(lambda im, t, m, a, k: wm.predict(wm_params, im, t, m, a, k))
    reward = jax.jit(lambda im, t, m: wm.reward(wm_params, im, t, m))
    tv = branch_length.reward_tv_by_chunks(predict, reward, seqs["images"], seqs["actions"],
                                           jnp.asarray(seqs["wm_tokens"]), jnp.asarray(seqs["wm_token_mask"]),
                                           key)
    choice = {**branch_length.choose(tv, rl.gamma, int(config.chunk_size), float(rl.adaptive_eps_pi)),
              "sequences": int(len(seqs["images"])), "env_steps": int(seqs["env_steps"])}
    path.write_text(json.dumps(choice, indent=2))
    print(f"[mbpo] adaptive branch length: TV after 1..{n_max} chunks "
          + ", ".join(f"{x:.3f}" for x in choice["tv_by_chunks"]) + f" -> n = {choice['branch_chunks']}")
    return choice


def _sim_evaluator(ctx, policy, tokenizer):
    """Periodic success-rate check in the simulator with deterministic sampling."""
    from vlambpo_jax.envs.evaluation import make_evaluator
    from vlambpo_jax.envs.tabletop import make_env
    from vlambpo_jax.models.policy import make_env_policy_fn

    config = ctx.config
    env = make_env(config, instruction_split=config.eval.instruction_split)
    policy_fn = make_env_policy_fn(policy, tokenizer, env.instructions, config.data.max_text_len)

    evaluator = make_evaluator(env, policy_fn, config.rl.eval_episodes)  # compiled once, reused

    def eval_fn(state, step):
        out = evaluator(state.params, jax.random.PRNGKey(step))
        return {"eval/success": out["success_rate"]}
    return eval_fn
