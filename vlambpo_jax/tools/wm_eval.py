"""Held-out metrics of a finished run's world model, recomputed from its checkpoint.

The wm_pretrain / wm_finetune stages evaluate once, when they finish. This reruns that evaluation
(stages/wm_common.evaluate_checkpoint: same held-out batches, sampling key and consistency probe, so
the numbers match the stage's summary) - for instance to read a metric added after the run, or a model
under other sampling settings (--config.wm.num_sample_steps=16):

  python -m vlambpo_jax.tools.wm_eval --config=configs/tabletop.py --workdir=DIR
      [--stage=wm_finetune] [--config.KEY=VALUE ...] [--out=FILE]

Prints the metrics as JSON (PSNR / SSIM per view and for copying the current frame, reward accuracy,
consistency; with interleaved view decoding also the wrist sampled from the real next head). A config
whose world-model layout settings differ from the checkpoint's is refused in one line.
"""
from __future__ import annotations

import json
import sys

from absl import flags

from vlambpo_jax import cli, pipeline
from vlambpo_jax.errors import UserError
from vlambpo_jax.stages import wm_common


def _define(fv: flags.FlagValues) -> None:
    flags.DEFINE_enum("stage", "wm_finetune", ["wm_pretrain", "wm_finetune"], "the world-model stage",
                      flag_values=fv)
    flags.DEFINE_string("out", "", "also write the JSON here", flag_values=fv)


def main(argv: list[str]) -> int:
    fv = cli.command_flags(argv, _define)
    config = cli.checked(fv.config)
    ctx = pipeline.StageContext(config, cli.workdir_path(fv.workdir), fv.stage, None, None)
    try:
        metrics = wm_common.evaluate_checkpoint(ctx, fv.stage)
    except UserError as e:
        cli.fail(str(e))
    text = json.dumps({"stage": fv.stage, "view_decoding": config.wm.view_decoding, **metrics},
                      indent=2, default=float)
    cli.emit_json(text, fv.out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
