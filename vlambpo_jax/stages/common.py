"""What several stages (and the tools that read a finished run) share: where a run's policies, world
model and branch roots are, and how a stage writes a data file once in a multi-process run."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import jax

from vlambpo_jax import loading
from vlambpo_jax.envs import horizon_chunks
from vlambpo_jax.errors import UserError
from vlambpo_jax.models import state_probe, success_classifier
from vlambpo_jax.models.success_classifier import ClassifiedWorldModel
from vlambpo_jax.stages.wm_common import CKPT_WM, PROBE_FILE
from vlambpo_jax.train import sharding

CLASSIFIER_FILE = "success_classifier.msgpack"
VALUE_CLASSIFIER_FILE = "value_classifier.msgpack"


def write_once(name: str, write: Callable[[], object]) -> None:
    """Runs `write` (files every process computed identically) on process 0 only; every process returns
    once they are written. Two processes writing one path race: an RLDS overwrite deletes the other's."""
    if jax.process_index() == 0:
        write()
    sharding.barrier(f"written_{name}")


def policy_checkpoints(ctx, stages) -> dict[str, str]:
    """{stage: its policy checkpoint directory} of finished policy stages (config.eval.policies); one
    error naming every stage that has not finished, before any work is spent on the others."""
    missing = [s for s in stages if not ctx.is_done(s)]
    if missing:
        finished = tuple(s for s in stages if s not in missing)
        raise UserError(f"config.eval.policies names {missing}, not finished in {ctx.workdir}: run "
                        f"{'it' if len(missing) == 1 else 'them'} first, or evaluate only the finished ones "
                        f"(--config.eval.policies=\"{finished!r}\")")
    return {s: checkpoint_of(ctx, s) for s in stages}


def checkpoint_of(ctx, stage: str) -> str:
    """The policy checkpoint directory a finished stage (sft, mbpo, wm_bc) wrote."""
    summary = ctx.stage_summary(stage)
    if "checkpoint_dir" not in summary:
        raise UserError(f"stage '{stage}' has no policy checkpoint to evaluate")
    return summary["checkpoint_dir"]


def load_world_model(ctx):
    """The fine-tuned world model of the run -> (WorldModel, params, assets), under ctx.config (whose
    layout settings must match the checkpoint's)."""
    return loading.load_world_model(Path(ctx.stage_output("wm_finetune")) / CKPT_WM, ctx.config)


def load_success_classifier(ctx):
    """The `reward` stage's success classifier -> (SuccessClassifier, params)."""
    return success_classifier.load(Path(ctx.stage_output("reward")) / CLASSIFIER_FILE)


def load_value_classifier(ctx):
    """The `reward` stage's value classifier (config.reward.value) -> (SuccessClassifier, params)."""
    path = Path(ctx.stage_output("reward")) / VALUE_CLASSIFIER_FILE
    if not path.exists():
        raise UserError(f"no value classifier at {path} (rl.bootstrap_model='classifier' and wm_agreement --value "
                        "read it): run the reward stage with --config.reward.value=True")
    return success_classifier.load(path)


def load_state_probe(ctx) -> dict | None:
    """The consistency probe the wm_finetune stage fitted (models/state_probe.py), None without one."""
    path = Path(ctx.stage_output("wm_finetune")) / PROBE_FILE
    return state_probe.load(path) if path.exists() else None


def roots_stage(ctx) -> str:
    """The stage whose roots.npz branches start from: 'collect' (simulator rollouts) or 'logged_roots'
    (logged real-robot episodes), whichever config.stages runs (else whichever has finished)."""
    for name in ("collect", "logged_roots"):
        if name in ctx.config.stages:
            return name
    for name in ("collect", "logged_roots"):
        if ctx.is_done(name):
            return name
    raise UserError(f"stage '{ctx.stage}' needs branch roots: add 'collect' (simulator) or "
                    "'logged_roots' (logged episodes) to config.stages before it")


def rl_world_model(ctx, dynamics: bool = True, loaded: tuple | None = None):
    """The world model imagined branches read -> (model, params, success threshold): wm_finetune's,
    its Yes/No replaced by the `reward` stage's classifier with rl.reward_model='classifier' (then
    without the world model itself where only the reward is read: dynamics False). loaded: the
    (WorldModel, params) already loaded by the caller."""
    rl = ctx.config.rl
    if rl.reward_model != "classifier":
        wm, wm_params = loaded or load_world_model(ctx)[:2]
        return wm, wm_params, float(rl.reward_threshold)
    wm, wm_params = (loaded or load_world_model(ctx)[:2]) if dynamics else (None, None)
    classifier, classifier_params = load_success_classifier(ctx)
    return (ClassifiedWorldModel(wm, classifier), {"wm": wm_params, "classifier": classifier_params},
            float(classifier_params["threshold"]))


def final_policy_and_world_model(ctx, stage: str = "", reward: bool = True):
    """-> (policy, params, tokenizer, world model, its params, success threshold): the policy of
    `stage` (default MBPO's, SFT's before MBPO ran) and the world model the branches read
    (rl_world_model); reward False: wm_finetune's world model as it is, for checks that read no
    reward (no `reward` stage needed)."""
    name = stage or ("mbpo" if ctx.is_done("mbpo") else "sft")
    policy, params, tokenizer, _ = loading.load_policy(checkpoint_of(ctx, name), ctx.config)
    if not reward:
        return (policy, params, tokenizer, *load_world_model(ctx)[:2], float(ctx.config.rl.reward_threshold))
    return (policy, params, tokenizer, *rl_world_model(ctx))


def episode_chunks(config, roots: dict) -> int:
    """Chunks that cover a whole episode (envs.horizon_chunks); without a simulator, of the longest
    logged episode the roots come from."""
    return horizon_chunks(config, roots.get("episode_length"))


def branch_chunks(config, roots: dict) -> int:
    """config.rl.branch_chunks when > 0, else (0) a whole episode."""
    n = int(config.rl.branch_chunks)
    return n if n > 0 else episode_chunks(config, roots)
