"""The `mbpo` stage: PPO on chunk-level branches imagined by the world model (VLA-MBPO), from the SFT
policy (rl/mbpo.py holds the iteration).

Roots come from the `collect` stage (simulator rollouts) or, on the real-robot path without a
simulator (no `env` section), from the `logged_roots` stage; periodic simulator evaluation needs the
simulator. With `rl.world = 'sim'` the same loop runs in the MJX simulator from fresh episodes instead
(the online-PPO baseline), and the real env steps it uses are counted. With `rl.world = 'sim_roots'`
it is MBPO with a perfect world model: the same branches from the collected roots, stepped in the
simulator restored to each root's recorded state (the ceiling a learned world model is measured
against; its simulated transitions are counted as imagined ones). `rl.reward_from` puts the truth in
place of one half of the world model from the same restored roots (rl/rollout.HybridWorld): its
predicted views with the simulator's success, or the real views with its Yes/No. Branch length: config.rl.
branch_chunks chunks, a whole episode (0), or the adaptive choice of rl/branch_length.py (-1).
"""
from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from vlambpo_jax import loading
from vlambpo_jax.data.tokenizer import load_wm_tokenizer
from vlambpo_jax.envs import has_simulator, horizon_chunks
from vlambpo_jax.envs.evaluation import make_evaluator
from vlambpo_jax.envs.tabletop import make_env
from vlambpo_jax.errors import UserError
from vlambpo_jax.models.policy import make_env_policy_fn
from vlambpo_jax.rl import branch_length, mbpo, ppo
from vlambpo_jax.rl.collect import SIM_PREFIX
from vlambpo_jax.rl.rollout import HybridWorld, ModelWorld, SimWorld
from vlambpo_jax.stages import common, wm_common
from vlambpo_jax.train import sharding
from vlambpo_jax.train.loop import train_loop


def run(ctx) -> dict:
    config, rl = ctx.config, ctx.config.rl
    sft_dir = ctx.stage_summary("sft")["checkpoint_dir"]
    policy, params, tokenizer, assets = loading.load_policy(sft_dir, config)
    normalize_state = loading.policy_state_normalizer(policy, assets, config)
    seed = int(config.seed) * 7919 + 17
    k = config.chunk_size

    anchor = None
    if rl.world == "model" and not rl.reward_from:
        wm, wm_params, threshold = common.rl_world_model(ctx, dynamics=True)
        world = ModelWorld(wm, threshold)
        roots = dict(np.load(ctx.stage_summary(common.roots_stage(ctx))["roots"]))
        start_fn = mbpo.branch_sampler(roots, rl.num_branches, seed, rl.group_size)
        env_steps_per_iteration, extra_env_steps = 0, 0
        anchor = value_anchor_pairs(ctx, tokenizer, wm, wm_params) if rl.value_anchor else None
        if rl.branch_chunks < 0:
            choice = adaptive_branch_chunks(ctx, policy, params, tokenizer, wm, wm_params)
            num_chunks, extra_env_steps = choice["branch_chunks"], choice["env_steps"]
        else:
            num_chunks = common.branch_chunks(config, roots)
    elif rl.world in ("model", "sim_roots"):
        env = make_env(config)
        tokens, token_mask = tokenizer.encode_batch(list(env.instructions), config.data.max_text_len)
        world, wm_params = SimWorld(env, tokens, token_mask, normalize_state), None
        roots_file = ctx.stage_summary(common.roots_stage(ctx))["roots"]
        roots = dict(np.load(roots_file))
        sim = {key[len(SIM_PREFIX):]: v for key, v in roots.items() if key.startswith(SIM_PREFIX)}
        if not sim:
            raise UserError(f"branches from restored roots (rl.world={rl.world!r}): {roots_file} holds no "
                            "simulator states (written by an older collect stage); run the collect stage again")
        restore = lambda idx: env.restore({key: v[idx] for key, v in sim.items()})  # noqa: E731
        if rl.reward_from:
            # the truth in place of one half of the world model (rl/rollout.HybridWorld)
            wm, wm_params, threshold = common.rl_world_model(ctx, dynamics=rl.world == "model")
            world = HybridWorld(world, ModelWorld(wm, threshold),
                                views="model" if rl.world == "model" else "sim")
            if rl.value_anchor:   # config_checks: only with rl.world='model'
                anchor = value_anchor_pairs(ctx, tokenizer, wm, wm_params)
            make_state = lambda idx: (restore(idx), mbpo.imagined_roots(roots, idx))  # noqa: E731
        else:
            make_state = restore
        start_fn = mbpo.branch_sampler(roots, rl.num_branches, seed, rl.group_size, make_state)
        num_chunks = common.branch_chunks(config, roots)
        env_steps_per_iteration, extra_env_steps = 0, 0
    else:
        env = make_env(config)
        tokens, token_mask = tokenizer.encode_batch(list(env.instructions), config.data.max_text_len)
        world, wm_params = SimWorld(env, tokens, token_mask, normalize_state), None
        reset = jax.jit(jax.vmap(env.reset))
        # rl.fixed_starts: the same scenes every iteration (the diagnostic of whether PPO can improve
        # a policy at all on states it trains on, apart from generalizing to new ones)
        start_fn = lambda i: mbpo.repeat_groups(reset(jax.random.split(  # noqa: E731
            jax.random.fold_in(jax.random.PRNGKey(seed), 0 if rl.fixed_starts else i),
            rl.num_branches // rl.group_size)), rl.group_size)
        num_chunks = horizon_chunks(config)
        env_steps_per_iteration, extra_env_steps = rl.num_branches * num_chunks * k, 0

    optimizer = ppo.make_optimizer(rl, params)
    dp = sharding.DataParallel(config.mesh)
    if rl.num_branches % dp.mesh.size:
        raise ValueError(f"config.rl.num_branches={rl.num_branches} must be divisible by the number of "
                         f"devices ({dp.mesh.size}) the branches are split over")
    state, state_shardings = dp.place(ppo.init_state(rl, optimizer, params))
    bootstrap_fn = value_bootstrap(ctx, world) if rl.bootstrap_model == "classifier" else None
    iteration = mbpo.make_iteration(policy, rl, world, wm_params, start_fn, num_chunks, seed, optimizer, dp,
                                    state_shardings, bootstrap_fn, anchor)
    eval_fn = (_sim_evaluator(ctx, policy, tokenizer, normalize_state)
               if rl.eval_every and has_simulator(config) else None)
    result = train_loop(ctx, name="ppo", state=state, step_fn=iteration, batch_fn=lambda i: i,
                        num_steps=rl.iterations, params_fn=lambda s: s.params, assets=assets,
                        eval_fn=eval_fn, eval_every=rl.eval_every,
                        log_every=1)  # an iteration is a whole buffer refill: every one is a curve point
    summary = {"checkpoint_dir": str(Path(ctx.stage_dir) / "ppo"), "iterations": result.step,
               "world": rl.world, "reward_from": rl.reward_from, "reward_model": rl.reward_model,
               "bootstrap_model": rl.bootstrap_model,
               "value_anchor_pairs": 0 if anchor is None else int(len(anchor["real"]["images"])),
               "branch_chunks": num_chunks,
               "env_steps": env_steps_per_iteration * result.step + extra_env_steps,
               "imagined_transitions": (rl.num_branches * num_chunks * result.step
                                        if rl.world != "sim" else 0),
               **{k: v for k, v in ctx.writer.last.items()}}
    (Path(ctx.stage_dir) / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    return summary


def value_bootstrap(ctx, world):
    """rl.bootstrap_model='classifier': final world state -> the `reward` stage's value classifier's
    P(success from here) f32[B], read on the views the policy sees there with the world model's
    tokens of the instruction (which the classifier learned on)."""
    classifier, params = common.load_value_classifier(ctx)
    config = ctx.config
    if isinstance(world, SimWorld):
        env = world.env
        table = [jnp.asarray(x) for x in load_wm_tokenizer(config.wm).encode_batch(
            list(env.instructions), int(config.wm.max_text_len))]
        tokens_of = lambda state: (table[0][state.obs["instruction_id"]],  # noqa: E731
                                   table[1][state.obs["instruction_id"]])
    else:   # ModelWorld's ImaginedState, or HybridWorld's (env States, ImaginedState)
        imagined = (lambda state: state[1]) if isinstance(world, HybridWorld) else (lambda state: state)
        tokens_of = lambda state: (imagined(state).wm_tokens, imagined(state).wm_token_mask)  # noqa: E731
    return jax.jit(lambda state: classifier.probability(params, world.observe(state)["images"], *tokens_of(state)))


def value_anchor_pairs(ctx, tokenizer, wm, wm_params, batch_size: int = 128) -> dict:
    """rl.value_anchor: at every chunk boundary t of the collected rollouts whose next boundary t + k
    is not its episode's last frame, the policy's observations of the world model's prediction of
    frame t + k under the logged chunk and of the real frame t + k, and the discounted return that really
    followed frame t + k (the collecting policy's, discounted as config.rl.gae_variant discounts).
    -> {'predicted': obs, 'real': obs, 'returns': f32[N]}, obs {images uint8[N, V, H, W, 3], tokens, token_mask}."""
    config = ctx.config
    source = wm_common.collected_data(ctx)
    if not source:
        raise UserError(f"rl.value_anchor: no collected rollouts in {ctx.workdir} to anchor the critic on: run "
                        "the collect stage (or set config.wm.finetune_data), or set rl.value_anchor=0")
    episodes, stats, data_config = wm_common.load_episodes(ctx, source)
    k = int(config.chunk_size)
    samples = [(ep, t) for ep in episodes for t in range(0, ep["length"] - k - 1, k)]
    if not samples:
        raise UserError(f"rl.value_anchor: no episode of {source} runs more than one chunk of "
                        f"{k} steps past a chunk boundary; set rl.value_anchor=0")
    predicted, real, returns = [], [], []
    for b, views in wm_common.predicted_transitions(data_config, wm, wm_params, samples, stats,
                                                    int(config.seed) + 0xA7, batch_size, "mbpo value anchor"):
        predicted.append(views)
        real.append(b["next_images"])
        returns.append(real_return(b["episode_success"], np.asarray(b["steps_to_end"]) - k, k, config.rl))
    tokens, token_mask = tokenizer.encode_batch([str(ep["instruction"][t]) for ep, t in samples],
                                                int(config.data.max_text_len))
    text = {"tokens": np.asarray(tokens), "token_mask": np.asarray(token_mask)}
    return {"predicted": {"images": np.concatenate(predicted), **text},
            "real": {"images": np.concatenate(real), **text}, "returns": np.concatenate(returns)}


def real_return(success, frames_to_end, k: int, rl) -> np.ndarray:
    """The discounted return from a frame frames_to_end int[N] frames before its episode's last one,
    whose last step earns 1 where the episode succeeded: gamma per step ('paper') or per chunk of k
    steps ('code'), as rl/gae.chunk_rewards_and_discount discounts. -> f32[N]"""
    steps = np.maximum(np.asarray(frames_to_end) - 1, 0)   # the steps before the rewarded one
    exponent = steps if rl.gae_variant == "paper" else steps // k
    return (np.asarray(success, bool) * float(rl.gamma) ** exponent).astype(np.float32)


def adaptive_branch_chunks(ctx, policy, params, tokenizer, wm, wm_params) -> dict:
    """rl.branch_chunks = -1: the Thm 4.2 choice from the world model's measured error growth
    (rl/branch_length.py), on the simulator's rollouts of the SFT policy or on held-out logged
    episodes. Saved to <stage>/branch_length.json and reused when the stage resumes.
    -> branch_length.choose's dict plus env_steps (simulator steps the measurement used)."""
    path = Path(ctx.stage_dir) / "branch_length.json"
    if path.exists():
        return json.loads(path.read_text())
    config, rl = ctx.config, ctx.config.rl
    key = jax.random.PRNGKey(int(config.seed) * 7919 + 0xB1)
    if has_simulator(config):
        env = make_env(config)
        n_max = int(rl.adaptive_max_chunks) or horizon_chunks(config)
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


def periodic_eval_key(seed: int, step: int) -> jax.Array:
    """The episodes of the periodic check at iteration `step`: from the config's seed, and never the
    evaluate stage's (so the curve is not measured on the final table's initial states)."""
    return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), 0x5E1F), step)


def _sim_evaluator(ctx, policy, tokenizer, normalize_state):
    """Periodic success-rate check in the simulator with deterministic sampling."""
    config = ctx.config
    env = make_env(config, instruction_split=config.eval.instruction_split)
    policy_fn = make_env_policy_fn(policy, tokenizer, env.instructions, config.data.max_text_len,
                                   normalize_state=normalize_state)

    evaluator = make_evaluator(env, policy_fn, config.rl.eval_episodes)  # compiled once, reused

    def eval_fn(state, step):
        out = evaluator(state.params, periodic_eval_key(int(config.seed), step))
        return {"eval/success": out["success_rate"]}
    return eval_fn
