"""The `wm_finetune` stage: the world model fine-tuned on the target rollouts (the collect stage's
RLDS output, or config.wm.finetune_data), starting from wm_pretrain's checkpoint with the ViT and the
VAE frozen and the pretraining normalization statistics kept (they give the action bins their meaning).
Without pretraining (config.wm.pretrain_enabled False) it trains the VAE and the dynamics from scratch,
or the dynamics from a BAGEL release (config.wm.init_from).
Same phases, checkpoints and held-out metrics as wm_pretrain (stages/wm_common.py).

Other stages load the result with `loading.load_world_model(ctx.stage_output('wm_finetune') /
wm_common.CKPT_WM, config)`.
"""
from __future__ import annotations

from pathlib import Path

from vlambpo_jax import loading
from vlambpo_jax.models.world_model import WorldModel
from vlambpo_jax.stages import wm_common


def run(ctx) -> dict:
    config, w = ctx.config, ctx.config.wm
    log = lambda s: print(f"[{ctx.stage}] {s}")  # noqa: E731
    wm = WorldModel(config)
    if w.pretrain_enabled:
        src = Path(ctx.stage_output("wm_pretrain")) / wm_common.CKPT_WM
        _, params, assets = loading.load_world_model(src, config)
        stats = loading.norm_stats(assets)
        batch_fn, heldout, _ = wm_common.finetune_data(ctx, stats)
        log(f"initialised from {src}; fine-tuning with the ViT and VAE frozen")
        frozen = ("vit",)
    else:
        batch_fn, heldout, stats = wm_common.finetune_data(ctx, None)
        params, interrupted = wm_common.initial_params(ctx, wm, stats, batch_fn, log)
        if interrupted:
            return {"interrupted": True, "phase": "vae"}
        frozen = ()
    return wm_common.train_dynamics(ctx, wm, params, batch_fn, heldout, int(w.finetune_steps), frozen,
                                    wm_common.checkpoint_assets(config, stats), log)
