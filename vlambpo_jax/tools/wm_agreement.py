"""Does the world model's reward rank action chunks as the simulator's outcomes do, do its views
move with the action, and does its gripper stay with the real one open-loop? On a finished run's
policy and fine-tuned world model, with more samples than the report stage draws
(vlambpo_jax/rl/wm_agreement.py explains the checks; the drift needs the wm_finetune stage's probe):

  python -m vlambpo_jax.tools.wm_agreement --config=configs/tabletop.py --workdir=DIR
      [--states=64 --samples=8 --chunks=4] [--policy=STAGE] [--value=classifier|critic] [--probe_steps=N]
      [--drift_only] [--config.KEY=VALUE ...] [--out=FILE]

--value adds the value check (each chunk's real next state played to the episode's end), of the
value classifier or of the acting policy's critic;
--probe_steps=N reads the drift with a fresh probe fitted on every collected real frame;
--drift_only skips the ranking checks (the drift from --states fresh episodes over --chunks chunks).
Prints the metrics as JSON.
"""
from __future__ import annotations

import sys

import jax
from absl import flags

from vlambpo_jax import cli, pipeline
from vlambpo_jax.errors import UserError
from vlambpo_jax.rl import wm_agreement
from vlambpo_jax.stages import common, wm_common


def _define(fv: flags.FlagValues) -> None:
    flags.DEFINE_integer("states", 64, "real states (fresh episodes)", flag_values=fv)
    flags.DEFINE_integer("samples", 8, "Flow-SDE chunks per state", flag_values=fv)
    flags.DEFINE_integer("chunks", 4, "chunk positions per episode", flag_values=fv)
    flags.DEFINE_string("policy", "", "the stage whose policy acts (e.g. sft, mbpo, wm_bc; default: "
                        "mbpo's, sft's before MBPO ran)", flag_values=fv)
    flags.DEFINE_enum("value", "", ["", "classifier", "critic"], "also the value check against each chunk's "
                      "eventual success: the reward stage's value classifier (config.reward.value) or the acting "
                      "policy's own critic", flag_values=fv)
    flags.DEFINE_integer("probe_steps", 0, "the drift check's probe: 0 = the wm_finetune stage's; N = a fresh "
                         "one fitted for N steps on every real frame of the collected rollouts", flag_values=fv)
    flags.DEFINE_bool("drift_only", False, "only the open-loop drift (needs a probe), not the reward's ranking",
                      flag_values=fv)
    flags.DEFINE_string("out", "", "also write the JSON here", flag_values=fv)


def main(argv: list[str]) -> int:
    fv = cli.command_flags(argv, _define)
    config = cli.checked(fv.config)
    ctx = pipeline.StageContext(config, cli.workdir_path(fv.workdir), "report", None, None)
    try:
        models = common.final_policy_and_world_model(ctx, fv.policy, reward=not fv.drift_only)
        value = common.load_value_classifier(ctx) if fv.value == "classifier" else (fv.value or None)
        probe, probe_info = ((wm_common.fit_probe_on_rollouts(ctx, fv.probe_steps)) if fv.probe_steps
                             else (common.load_state_probe(ctx), {"probe": "wm_finetune"}))
        if fv.drift_only and probe is None:
            raise UserError(f"--drift_only needs a probe: {fv.workdir} has no wm_finetune probe; pass --probe_steps=N")
    except UserError as e:
        cli.fail(str(e))
    metrics = wm_agreement.run_check(config, *models, jax.random.PRNGKey(int(config.seed) + 778),
                                     fv.states, fv.samples, fv.chunks, probe, value, ranking=not fv.drift_only)
    metrics["probe"] = probe_info
    text = wm_agreement.to_json(metrics)
    cli.emit_json(text, fv.out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
