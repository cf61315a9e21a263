"""The `collect` stage: the SFT policy acts in the simulator; its episodes become RLDS data for the
world model (<stage_dir>/rlds) and chunk-aligned branch roots for MBPO (<stage_dir>/roots.npz, with
each root's full simulator state for MBPO with a perfect world model, rl.world='sim_roots').

Episodes are recorded step by step (the world model learns frame t -> t + k for every t), in the
Bridge schema the rest of the project reads (vlambpo_jax/rl/collect.py). Successes and failures are
both kept.
"""
from __future__ import annotations

import jax
import numpy as np

from vlambpo_jax import loading
from vlambpo_jax.data.rlds_writer import builder_dir as rlds_builder_dir
from vlambpo_jax.data.rlds_writer import write_rlds
from vlambpo_jax.data.tokenizer import load_wm_tokenizer
from vlambpo_jax.envs.tabletop import make_env
from vlambpo_jax.rl import collect
from vlambpo_jax.stages import common

DATASET = "tabletop_rollouts"


def sampling_config(config):
    """config with the collect stage's Flow-SDE settings (rl.collect_noise_level, rl.collect_stochastic_step)
    as the policy's: the SFT policy collects as deployed, whatever exploration PPO later uses."""
    out = config.copy_and_resolve_references()
    out.policy.noise_level = float(config.rl.collect_noise_level)
    out.policy.stochastic_step = str(config.rl.collect_stochastic_step)
    return out


def run(ctx) -> dict:
    config = ctx.config
    policy, params, tokenizer, assets = loading.load_policy(ctx.stage_summary("sft")["checkpoint_dir"],
                                                            sampling_config(config))
    env = make_env(config)
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 0xC011EC7)
    episodes, sim_states = collect.collect(env, policy, params, tokenizer, key, config.rl.collect_episodes_per_task,
                       config.rl.collect_mode, config.rl.collect_batch, config.data.max_text_len,
                       config.log.progress, loading.policy_state_normalizer(policy, assets, config))
    roots = collect.branch_roots(episodes, config.chunk_size, tokenizer, config.data.max_text_len, env.task_names,
                                 load_wm_tokenizer(config.wm), config.wm.max_text_len, sim_states)

    def write():
        write_rlds(ctx.stage_dir / "rlds", episodes, dataset_name=DATASET,
                   image_shape=(config.image_size, config.image_size, 3), overwrite=True)
        np.savez_compressed(ctx.stage_dir / "roots.npz", **roots)

    common.write_once("collect", write)
    builder_dir = rlds_builder_dir(ctx.stage_dir / "rlds", DATASET)
    per_task = {name: float(np.mean([e["episode_metadata"]["success"] for e in episodes
                                     if e["episode_metadata"]["task"] == name])) for name in env.task_names}
    steps = int(sum(e["episode_metadata"]["length"] for e in episodes))
    print(f"[collect] {len(episodes)} episodes, {steps} env steps, success "
          + ", ".join(f"{k} {v:.2f}" for k, v in per_task.items()) + f"; {len(roots['t'])} branch roots")
    return {"builder_dir": str(builder_dir), "roots": str(ctx.stage_dir / "roots.npz"),
            "episodes": len(episodes), "env_steps": steps, "num_roots": int(len(roots["t"])),
            "success_rate": float(np.mean([e["episode_metadata"]["success"] for e in episodes])),
            "success_by_task": per_task}
