"""The `wm_pretrain` stage: the world model trained on broad data (config.wm.pretrain_data, by default
config.data's dataset, plus the training episodes of config.wm.play_data).

Two phases (stages/wm_common.py): the VAE (checkpoint `vae/`): reconstruction + KL on both views'
frames, then per-channel latent statistics (skipped when config.wm.init_from names a BAGEL release,
whose FLUX VAE is kept); then dynamics + reward (checkpoint `world_model/`): AdamW
with warm-up + cosine decay, grad clip, EMA. The saved `params` item is the whole inference tree
{'net': EMA weights, 'vae', 'stats'} with the config and normalization statistics as assets. Held-out
transitions then give PSNR / SSIM per view (and for the copy-current-frame baseline), reward accuracy /
F1, a side-by-side PNG `samples.png`, and the multi-view consistency of the predicted views read by a
state probe (models/state_probe.py, saved as `state_probe.msgpack`). With config.wm.pretrain_enabled
False the stage does nothing and wm_finetune trains from scratch (the "w/o pretraining" ablation).
"""
from __future__ import annotations

from vlambpo_jax.models.world_model import WorldModel
from vlambpo_jax.stages import wm_common


def run(ctx) -> dict:
    config, w = ctx.config, ctx.config.wm
    log = lambda s: print(f"[{ctx.stage}] {s}")  # noqa: E731
    if not w.pretrain_enabled:
        log("config.wm.pretrain_enabled is False: skipping (wm_finetune trains from scratch)")
        return {"skipped": True}
    wm = WorldModel(config)
    batch_fn, heldout, stats = wm_common.open_data(ctx, w.pretrain_data, int(w.batch_size), int(config.seed),
                                                   extra_data=tuple(w.play_data))
    params, interrupted = wm_common.initial_params(ctx, wm, stats, batch_fn, log)
    if interrupted:
        return {"interrupted": True, "phase": "vae"}
    return wm_common.train_dynamics(ctx, wm, params, batch_fn, heldout, int(w.pretrain_steps), (),
                                    wm_common.checkpoint_assets(config, stats), log)
