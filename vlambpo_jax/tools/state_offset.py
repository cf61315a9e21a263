"""How precisely must a policy know where the object is? A `truth` policy (configs/tabletop.py:truth,
which reads the instructed object's and the goal's true xy as state) is evaluated with those positions
shifted by a fixed distance, as a perception error of that size would shift them:

  python -m vlambpo_jax.tools.state_offset --config=configs/tabletop.py:truth --workdir=DIR
      [--offsets_cm=0,0.75,1.5,2.5] [--episodes=200] [--config.KEY=VALUE ...] [--out=FILE]

A perceived-state policy (config.policy.perception_dim > 0) works too, run with
`--config.env.privileged_state=True`: its expert then reads the true (shifted) object and goal xy and
the commanded tool position in place of its perception head's estimates of them (the head's other
dims, the other objects' xy, stay its own). That tells whether the expert acts on the position it is
given, whatever the head's error along the episode (tools/grounding_eval).

Each shift has the given length and a direction that is a fixed pseudo-random function of the true
position, so it stays put while the object rests, as a biased detector's would. The episodes are the
evaluate stage's (the same initial states). Prints JSON: success with its Wilson 95% interval per
offset. Compare with the error of an image policy's grounding head (tools/grounding_eval): if the truth
policy still succeeds with its positions off by that much, the image policy's failures are not for want
of that precision.
"""
from __future__ import annotations

import json
import sys

import jax.numpy as jnp
from absl import flags

from vlambpo_jax import cli, loading
from vlambpo_jax.envs import evaluation, tabletop
from vlambpo_jax.models import grounding
from vlambpo_jax.models.policy import make_env_policy_fn
from vlambpo_jax.stages import evaluate
from vlambpo_jax.tools import sft_checkpoint

POSITIONS = tabletop.PRIVILEGED_POSITIONS   # the privileged state's object xy and goal xy
TOOL = slice(0, 3)         # its commanded tool position, also grounding targets 10:13


def true_percept(predicted: jnp.ndarray, state: jnp.ndarray) -> jnp.ndarray:
    """A perception head's prediction [B, P] (the first P grounding targets x POSITION_SCALE) with the
    object and goal xy (targets 0:4) and, when P covers them, the tool position (10:13) taken from the
    raw privileged state [B, 11] instead."""
    scale = grounding.POSITION_SCALE
    state = jnp.asarray(state)
    out = jnp.asarray(predicted).at[:, 0:4].set(state[:, POSITIONS] * scale)
    return out.at[:, 10:13].set(state[:, TOOL] * scale) if out.shape[1] >= 13 else out


def _define(fv: flags.FlagValues) -> None:
    flags.DEFINE_list("offsets_cm", ["0", "0.75", "1.5", "2.5"], "shift lengths in cm", flag_values=fv)
    flags.DEFINE_integer("episodes", 200, "evaluation episodes per task", lower_bound=1, flag_values=fv)
    flags.DEFINE_string("out", "", "also write the JSON here", flag_values=fv)


def offset_positions(state: jnp.ndarray, distance_m: float) -> jnp.ndarray:
    """Raw privileged state f32[..., 11] with object xy and goal xy both moved by `distance_m` in a
    direction set by the object's true xy (the same shift for both, as one misplaced detection)."""
    angle = jnp.mod(1e4 * (1.37 * state[..., 7] + 2.11 * state[..., 8]), 2 * jnp.pi)
    shift = distance_m * jnp.stack([jnp.cos(angle), jnp.sin(angle)], axis=-1)
    return jnp.asarray(state).at[..., POSITIONS].add(jnp.concatenate([shift, shift], axis=-1))


def main(argv: list[str]) -> int:
    fv = cli.command_flags(argv, _define)
    config = cli.checked(fv.config)
    if not config.env.get("privileged_state", False):
        cli.fail("state_offset needs a policy that reads the true positions: --config=configs/tabletop.py:truth, "
                 "or a perceived-state policy with --config.env.privileged_state=True")
    try:
        offsets = [float(x) for x in fv.offsets_cm]
    except ValueError:
        cli.fail(f"--offsets_cm: numbers in cm, comma separated, got {','.join(fv.offsets_cm)!r}")
    checkpoint_dir = sft_checkpoint(config, fv.workdir)
    policy, params, tokenizer, assets = loading.load_policy(checkpoint_dir, config)
    perceiving = bool(policy.dims.perception_dim)
    if not (policy.dims.use_state or perceiving):
        cli.fail("state_offset: this policy reads no positions (neither config.policy.use_state nor "
                 "config.policy.perception_dim)")
    normalize = loading.policy_state_normalizer(policy, assets, config)
    env = tabletop.make_env(config, instruction_split=config.eval.instruction_split)
    out = {"checkpoint_dir": str(checkpoint_dir), "episodes_per_task": fv.episodes, "success": {},
           "reads": "perception head, true positions in place" if perceiving else "state"}
    for cm in offsets:
        shifted = lambda x, d=cm / 100.0: offset_positions(x, d)  # noqa: E731
        if perceiving:
            kw = dict(normalize_state=normalize, percept_fn=lambda p, x, f=shifted: true_percept(p, f(x)))
        else:
            kw = dict(normalize_state=lambda x, f=shifted: normalize(f(x)))
        fn = make_env_policy_fn(policy, tokenizer, env.instructions, config.data.max_text_len, **kw)
        res = evaluation.evaluate(env, fn, params, evaluate.evaluation_key(config), fv.episodes)
        out["success"][str(cm)] = {"rate": res["success_rate"], "ci95": list(res["ci95"])}
        print(f"[state_offset] {cm} cm: success {res['success_rate']:.3f} [{res['ci95'][0]:.3f}, "
              f"{res['ci95'][1]:.3f}]", file=sys.stderr)
    cli.emit_json(json.dumps(out, indent=2), fv.out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
