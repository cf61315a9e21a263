"""Does the SFT policy's image pathway find the instructed object and goal in scenes it never trained
on? The grounding co-training head (models/grounding.py), restored with the SFT training state, is read
on the training pool and on as many freshly reset scenes:

  python -m vlambpo_jax.tools.grounding_eval --config=configs/tabletop.py --workdir=DIR [--scenes=512]
      [--episodes=200] [--config.KEY=VALUE ...] [--out=FILE]

Prints JSON: per parameter set ('params', what trained with the head; 'ema_params', the policy that
acts) and per scene set ('training_scenes', the first --scenes of the pool; 'new_scenes'), the mean xy
error in cm of the instructed object and of the goal, beside 'mean_position_cm', the error of always
answering the pool's mean position. A new-scene error far above the training one means the policy
memorised where things were in its training scenes rather than learning to find them.

With --episodes=N it also runs the evaluate stage's first N deterministic episodes (the same initial
states) and links each outcome to the acting policy's object error in its first frame: 'outcomes'
holds the mean error of the successes and of the failures, the success rate per error quartile and
per instructed object. 'error_by_chunk' follows the episodes: the object error on the frame each
chunk starts from (episodes still running), for the successes and the failures apart.
If success falls as the error grows, finding the object is what the policy fails at; an error that
grows along the episode means the policy loses the object after its first frames.
"""
from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from vlambpo_jax import cli, loading
from vlambpo_jax.envs import evaluation, scene_pool, tabletop
from vlambpo_jax.envs import scene as S
from vlambpo_jax.models import grounding
from vlambpo_jax.models.policy import make_env_policy_fn
from vlambpo_jax.stages import evaluate, sft
from vlambpo_jax.tools import sft_checkpoint
from vlambpo_jax.train import checkpoints

NEW_SCENES_SEED = 0x5EE   # offset from config.seed; SFT's pool uses + 3


def _define(fv: flags.FlagValues) -> None:
    flags.DEFINE_integer("scenes", 512, "scenes per set (new ones, and the first of the training pool)",
                         lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("batch_size", 256, "scenes per forward pass", lower_bound=1, flag_values=fv)
    flags.DEFINE_integer("episodes", 0, "also link the outcomes of this many evaluation episodes to the "
                         "first frame's object error (0 = off)", lower_bound=0, flag_values=fv)
    flags.DEFINE_string("out", "", "also write the JSON here", flag_values=fv)


def errors_cm(error_fn, params, head_params, pool: dict, batch_size: int) -> np.ndarray:
    """Per-scene xy errors float32[N, len(TARGET_NAMES)] of the head over a whole pool."""
    n = len(pool["targets"])
    return np.concatenate([np.asarray(error_fn(params, head_params, {k: v[i:i + batch_size] for k, v in pool.items()}))
                           for i in range(0, n, batch_size)])


def outcome_table(errors_cm: np.ndarray, success: np.ndarray) -> dict:
    """Episode outcomes against the first frame's object error (cm), both [N]: mean error of the
    successes and failures, and the success rate within each error quartile (with its bounds)."""
    success = np.asarray(success, bool)
    bounds = np.quantile(errors_cm, [0.0, 0.25, 0.5, 0.75, 1.0])
    quartile = np.clip(np.searchsorted(bounds[1:-1], errors_cm, side="right"), 0, 3)
    mean_of = lambda x: float(x.mean()) if x.size else None  # noqa: E731
    return {"episodes": int(success.size), "success_rate": float(success.mean()),
            "error_cm_successes": mean_of(errors_cm[success]), "error_cm_failures": mean_of(errors_cm[~success]),
            "by_error_quartile": [{"error_cm": [float(bounds[q]), float(bounds[q + 1])],
                                   "episodes": int((quartile == q).sum()),
                                   "success_rate": mean_of(success[quartile == q].astype(float))}
                                  for q in range(4)]}


def along_episodes(env, act_fn, error_fn, params, head_params, key, task_ids: np.ndarray, chunk_size: int,
                   policy_rows) -> tuple[np.ndarray, np.ndarray]:
    """The evaluate stage's rollout of these episodes (evaluation.rollout: the same initial states,
    keys and actions), reading the grounding prediction on the frame each chunk starts from.

    act_fn: the env policy fn (params, obs, key) -> actions; error_fn(params, head_params, batch) ->
    xy errors in cm [B, len(TARGET_NAMES)]; policy_rows(obs, targets) -> the policy's batch with
    'targets'. Returns (success bool[B], the instructed object's error float[B, n_chunks], NaN once an
    episode has ended; column 0 is the first frame's, the instructed object int[B], an index into
    envs.scene.OBJECTS)."""
    def run(params, head_params, key):
        state, k_run = evaluation.reset_episodes(env, key, jnp.asarray(task_ids))
        objects = state.info["obj"]
        b = task_ids.shape[0]
        act = jax.vmap(act_fn, in_axes=(None, 0, 0))

        def body(s, k):
            batch = policy_rows(s.obs, jax.vmap(env.grounding_targets)(s) * grounding.POSITION_SCALE)
            err = jnp.where(s.done, jnp.nan, error_fn(params, head_params, batch)[:, 0])
            s, _, _ = jax.vmap(env.step_chunk)(s, act(params, s.obs, jax.random.split(k, b)))
            return s, err

        n_chunks = -(-env.max_horizon // chunk_size)
        state, errs = jax.lax.scan(body, state, jax.random.split(k_run, n_chunks))
        return state.success, errs.T, objects

    success, errs, objects = jax.device_get(jax.jit(run)(params, head_params, key))
    return np.asarray(success, bool), np.asarray(errs), np.asarray(objects)


def error_by_chunk(errors_cm: np.ndarray, success: np.ndarray) -> list[dict]:
    """Per chunk index: episodes still running and their mean object error (cm), successes and
    failures apart (None where none runs)."""
    rows = []
    for c in range(errors_cm.shape[1]):
        col = errors_cm[:, c]
        running = ~np.isnan(col)
        mean_of = lambda m: float(col[m].mean()) if m.any() else None  # noqa: E731
        rows.append({"chunk": c, "running": int(running.sum()),
                     "error_cm_successes": mean_of(running & success),
                     "error_cm_failures": mean_of(running & ~success)})
    return rows


def main(argv: list[str]) -> int:
    fv = cli.command_flags(argv, _define)
    config = cli.checked(fv.config)
    if float(config.sft.grounding_weight) <= 0:
        cli.fail("config.sft.grounding_weight is 0: the policy trained without a grounding head to read")
    checkpoint_dir = sft_checkpoint(config, fv.workdir)
    policy, _, tokenizer, assets = loading.load_policy(checkpoint_dir, config)
    train_state, _ = checkpoints.load_params(checkpoint_dir, item="train_state")
    head_params = train_state["head_params"]
    head = (None if policy.dims.perception_dim else   # the policy's own perception head (models/policy.py)
            grounding.GroundingHead(tuple(config.sft.grounding_hidden), int(head_params["out"]["bias"].shape[0])))
    layer = int(config.sft.grounding_layer)
    normalize_state = loading.policy_state_normalizer(policy, assets, config)
    policy_rows = lambda pool: sft.policy_pool(pool, normalize_state)  # noqa: E731

    seed = int(config.seed)
    training = policy_rows(sft.grounding_pool(config, tokenizer))
    pools = {"training_scenes": {k: v[:fv.scenes] for k, v in training.items()},
             "new_scenes": policy_rows(scene_pool.make_scene_pool(
                 config, tokenizer, fv.scenes, jax.random.key(seed + NEW_SCENES_SEED), grounding.POSITION_SCALE))}

    error_fn = jax.jit(lambda p, h, batch: grounding.xy_errors_cm(grounding.prediction_error(
        grounding.predict_targets(policy, head, p, h, batch, layer), batch["targets"])))
    mean_target = training["targets"].mean(axis=0, keepdims=True)
    out = {"checkpoint_dir": str(checkpoint_dir), "scenes": fv.scenes, "layer": layer}
    for scenes, pool in pools.items():
        baseline = np.asarray(grounding.xy_errors_cm(mean_target - pool["targets"]))
        out.setdefault("mean_position_cm", {})[scenes] = dict(zip(grounding.TARGET_NAMES, baseline.mean(0).tolist()))
        for name in ("params", "ema_params"):
            err = errors_cm(error_fn, train_state[name], head_params, pool, fv.batch_size)
            out.setdefault(name, {})[scenes] = dict(zip(grounding.TARGET_NAMES, err.mean(0).tolist()))
    if fv.episodes:
        env = tabletop.make_env(config, instruction_split=config.eval.instruction_split)
        per_task = -(-fv.episodes // env.num_tasks)
        task_ids = evaluation.episode_task_ids(env.num_tasks, per_task)
        fn = make_env_policy_fn(policy, tokenizer, env.instructions, config.data.max_text_len,
                                normalize_state=normalize_state)
        ids, mask = (jnp.asarray(a) for a in tokenizer.encode_batch(list(env.instructions),
                                                                    int(config.data.max_text_len)))

        def episode_rows(obs, targets):
            rows = {"images": obs["images"], "image_mask": jnp.ones(obs["images"].shape[:2], bool),
                    "tokens": ids[obs["instruction_id"]], "token_mask": mask[obs["instruction_id"]],
                    "targets": targets}
            if policy.dims.use_state:
                rows["state"] = normalize_state(obs["state"])
            return rows

        success, along, objects = along_episodes(env, fn, error_fn, train_state["ema_params"], head_params,
                                                 evaluate.evaluation_key(config), task_ids,
                                                 int(config.chunk_size), episode_rows)
        out["outcomes"] = outcome_table(along[:, 0], success)
        out["outcomes"]["error_by_chunk"] = error_by_chunk(along, success)
        out["outcomes"]["by_object"] = {
            f"{o.colour} {o.noun}": {"episodes": int((objects == i).sum()),
                                     "success_rate": float(success[objects == i].mean())}
            for i, o in enumerate(S.OBJECTS) if (objects == i).any()}
    cli.emit_json(json.dumps(out, indent=2), fv.out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
