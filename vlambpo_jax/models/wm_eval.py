"""Held-out metrics of a finished run's world model, recomputed from its checkpoint.

The wm_pretrain / wm_finetune stages evaluate once, when they finish. This reruns that evaluation
(wm_train.evaluate_checkpoint: same held-out batches, sampling key and consistency probe, so the
numbers match the stage's summary) - for instance to read a metric added after the run, or a model
under other sampling settings (--set wm.num_sample_steps=16):

  python -m vlambpo_jax.models.wm_eval --config=configs/tabletop.py --workdir=DIR
      [--stage wm_finetune] [--set KEY=VALUE ...] [--out FILE]

Prints the metrics as JSON (PSNR / SSIM per view and for copying the current frame, reward accuracy,
consistency; with interleaved view decoding also the wrist sampled from the real next head).
"""
from __future__ import annotations

import json


def main(argv=None) -> int:
    import argparse

    from etils import epath

    from vlambpo_jax import pipeline
    from vlambpo_jax.config_checks import apply_overrides, load_config
    from vlambpo_jax.config_checks import validate as validate_config
    from vlambpo_jax.models import wm_train

    parser = argparse.ArgumentParser(description="Recompute a finished world-model stage's held-out "
                                     "metrics from its checkpoint; prints them as JSON.")
    parser.add_argument("--config", required=True, help="the run's config file[:arg]")
    parser.add_argument("--workdir", required=True, help="the run's workdir")
    parser.add_argument("--stage", default="wm_finetune", choices=("wm_pretrain", "wm_finetune"))
    parser.add_argument("--out", default="", help="also write the JSON here")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, repeatable (e.g. wm.view_decoding=interleaved for a run "
                        "trained with it)")
    args = parser.parse_args(argv)
    config = apply_overrides(load_config(args.config), args.set)
    validate_config(config)
    ctx = pipeline.StageContext(config, epath.Path(args.workdir).absolute(), args.stage, None, None)
    metrics = wm_train.evaluate_checkpoint(ctx, args.stage)
    text = json.dumps({"stage": args.stage, "view_decoding": config.wm.view_decoding, **metrics},
                      indent=2, default=float)
    if args.out:
        epath.Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    import sys
    sys.exit(main())
