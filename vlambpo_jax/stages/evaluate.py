"""The `evaluate` stage: every trained policy in the simulator, deterministic sampling, same seeds
(and, with config.eval.stochastic, also under the RL training sampler).

Policies come from finished stages named in config.eval.policies (e.g. 'sft', 'mbpo'); each is run
for config.eval.episodes_per_task episodes per task from the same initial states, and gets a success
rate per task and overall with a 95% Wilson interval; every later policy is also compared with the
first on the same episodes (its 'paired' entry: discordant counts and McNemar's exact p). Results go
to <workdir>/evaluate/results.json and a few episodes per policy to <workdir>/evaluate/videos/<policy>/.

Without a simulator (a config with no `env` section: the real-robot path of configs/bridge.py) the
stage runs the offline evaluation of vlambpo_jax/rl/offline.py instead: held-out action error against
the logged actions and the imagined success rate under the world model, per policy.
"""
from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np

from vlambpo_jax import loading
from vlambpo_jax.envs import has_simulator
from vlambpo_jax.envs.evaluation import evaluate, paired_comparison
from vlambpo_jax.envs.tabletop import make_env
from vlambpo_jax.models import wm_training
from vlambpo_jax.models.policy import make_env_policy_fn
from vlambpo_jax.rl import offline
from vlambpo_jax.rl.rollout import ModelWorld
from vlambpo_jax.stages import common
from vlambpo_jax.train import sharding


def evaluation_key(config) -> jax.Array:
    """The key of this stage's episodes: every policy, every run of the config, the same initial states."""
    return jax.random.fold_in(jax.random.PRNGKey(config.seed), 0xE7A1)


def run(ctx) -> dict:
    if not has_simulator(ctx.config):
        return run_offline(ctx)
    config = ctx.config
    env = make_env(config, instruction_split=config.eval.instruction_split)
    key = evaluation_key(config)
    mesh = sharding.make_mesh(config.mesh.data, config.mesh.fsdp)
    results = {}
    for name, checkpoint in common.policy_checkpoints(ctx, config.eval.policies).items():
        policy, params, tokenizer, assets = loading.load_policy(checkpoint, config)
        normalize_state = loading.policy_state_normalizer(policy, assets, config)
        fn = make_env_policy_fn(policy, tokenizer, env.instructions, config.data.max_text_len,
                                normalize_state=normalize_state)
        out = evaluate(env, fn, params, key, episodes_per_task=config.eval.episodes_per_task,
                       video_dir=Path(ctx.stage_dir) / "videos" / name, num_videos=config.eval.num_videos,
                       video_size=config.eval.video_size, mesh=mesh)
        lo, hi = out["ci95"]
        print(f"[evaluate] {name}: success {out['success_rate']:.3f} [{lo:.3f}, {hi:.3f}] over "
              f"{out['episodes']} episodes")
        if config.eval.get("stochastic", False):  # the same episodes under the RL sampler (Flow-SDE)
            fn = make_env_policy_fn(policy, tokenizer, env.instructions, config.data.max_text_len, mode="train",
                                    normalize_state=normalize_state)
            sde = evaluate(env, fn, params, key, episodes_per_task=config.eval.episodes_per_task, mesh=mesh)
            out["stochastic"] = {k: sde[k] for k in ("success_rate", "ci95", "mean_length", "episodes")}
            print(f"[evaluate] {name}: stochastic (Flow-SDE) success {sde['success_rate']:.3f} "
                  f"[{sde['ci95'][0]:.3f}, {sde['ci95'][1]:.3f}]")
        results[name] = out
    for name, p in paired_against_first(results).items():
        results[name]["paired"] = p
        print(f"[evaluate] {name} vs {p['base']} on the same {p['episodes']} episodes: {p['only_other']} "
              f"succeed only under {name}, {p['only_base']} only under {p['base']} (McNemar p = {p['p_value']:.3g})")
    (Path(ctx.stage_dir) / "results.json").write_text(json.dumps(results, indent=2, default=float))
    return {"results": str(Path(ctx.stage_dir) / "results.json"),
            **{f"{name}_success": r["success_rate"] for name, r in results.items()}}


def paired_against_first(results: dict) -> dict:
    """{policy: paired_comparison against the first evaluated policy, plus 'base'} for every later one."""
    names = list(results)
    return {name: {"base": names[0], **paired_comparison(results[names[0]]["successes"],
                                                          results[name]["successes"])}
            for name in names[1:]}


def run_offline(ctx) -> dict:
    """The offline evaluation of a config without a simulator (module docstring; rl/offline.py)."""
    config, ev = ctx.config, ctx.config.eval
    checkpoints = common.policy_checkpoints(ctx, ev.policies)
    k = int(config.chunk_size)
    roots_summary = ctx.stage_summary("logged_roots")
    samples = dict(np.load(roots_summary["heldout"]))
    held_roots = offline.roots_of(samples, k)
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 0x0FF1)
    batch = int(ev.batch_size)
    results = {"mode": "offline", "heldout": {
        "split": roots_summary["heldout_split"], "episodes": roots_summary["heldout_episodes"],
        "steps": int(len(samples["t"])), "roots": int(len(held_roots["t"])),
        "logged_success_rate": float(np.mean(held_roots["episode_success"]))}, "policies": {}}

    has_wm = ctx.is_done("wm_finetune")
    imagine = has_wm and int(ev.imagined_branches) > 0
    if has_wm:
        wm, wm_params, _ = common.load_world_model(ctx)
        # the imagined success reads the reward MBPO reads (rl.reward_model)
        reward_wm, reward_params, threshold = common.rl_world_model(ctx, loaded=(wm, wm_params))
        world = ModelWorld(reward_wm, threshold)
    if imagine:
        num_chunks = int(ev.imagined_chunks) or common.branch_chunks(config, held_roots)
        start = offline.draw_roots(held_roots, int(ev.imagined_branches), int(config.seed))
        results["heldout"]["imagined_chunks"] = num_chunks
    results["world_model"] = {stage: ctx.stage_summary(stage).get("eval", {}) if ctx.is_done(stage) else {}
                              for stage in ("wm_pretrain", "wm_finetune")}
    if has_wm and int(ev.wm_batches) > 0:  # the fine-tuned world model on the held-out split
        batches = offline.wm_heldout_batches(samples, k, batch, int(ev.wm_batches), int(config.seed))
        results["world_model"]["heldout_split"] = wm_training.make_evaluator(
            wm, batches, jax.random.fold_in(key, 3))(wm_params, png=Path(ctx.stage_dir) / "wm_heldout.png")
        m = results["world_model"]["heldout_split"]
        print(f"[evaluate] world model on held-out split: PSNR head {m['psnr_head']:.2f} "
              f"(copy {m['copy_psnr_head']:.2f}), wrist {m['psnr_wrist']:.2f}, reward acc {m['reward_acc']:.3f}")

    stats = None
    for name, checkpoint in checkpoints.items():
        policy, params, _, assets = loading.load_policy(checkpoint, config)
        stats = loading.norm_stats(assets)
        act_fn = offline.policy_act_fn(policy, params, loading.state_normalizer(assets, config))
        out = offline.action_errors(act_fn, samples, key, batch, int(config.data.gripper_dim),
                                    int(ev.action_stride))
        if imagine:
            fn = offline.make_imagined_eval(policy, world, num_chunks)
            out.update(offline.imagined_success(fn, params, reward_params, start, jax.random.fold_in(key, 7), batch))
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
        results["baselines"] = {"mean_action": offline.action_errors(
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
