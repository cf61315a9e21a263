"""The policy's supervised training step: flow matching (plus the optional grounding loss) under AdamW
with linear warm-up, cosine decay, global grad-norm clipping and an EMA of the parameters.

The `sft` stage (vlambpo_jax/stages/sft.py) and the BC baseline (`wm_bc`) train with it.
"""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import optax

from vlambpo_jax.data import augment
from vlambpo_jax.models import grounding
from vlambpo_jax.models import policy as policy_lib


@flax.struct.dataclass
class SFTState:
    """step int32[]; params / ema_params {'vlm', 'action_expert', 'value_head'}; head_params: the
    grounding head's ({} without grounding co-training); opt_state of optax over (params, head_params)."""
    step: jax.Array
    params: Any
    ema_params: Any
    head_params: Any
    opt_state: Any


def make_optimizer(sft, num_steps: int):
    """AdamW (decay on matrices only) after global-norm clipping; lr warmup + cosine. -> (tx, schedule)."""
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=float(sft.lr), warmup_steps=int(sft.warmup),
        decay_steps=max(int(num_steps), int(sft.warmup) + 1), end_value=float(sft.lr) * float(sft.min_lr_ratio))
    decay_mask = lambda params: jax.tree.map(lambda x: x.ndim >= 2, params)
    tx = optax.chain(optax.clip_by_global_norm(float(sft.grad_clip)),
                     optax.adamw(schedule, b1=float(sft.b1), b2=float(sft.b2),
                                 weight_decay=float(sft.weight_decay), mask=decay_mask))
    return tx, schedule


def make_train_step(policy: policy_lib.Policy, tx, schedule, ema: float, seed: int, noise_samples: int = 1,
                    head: grounding.GroundingHead | None = None, grounding_weight: float = 0.0,
                    grounding_layer: int = -1, shift_pad: int = 0):
    """Returns step(state, batch) -> (state, metrics) (jit it on a mesh with
    sharding.DataParallel.jit_step); the flow noise of step s is fold_in(key, s). shift_pad > 0 shifts
    each demo view by up to +-shift_pad pixels (data/augment.random_shift; not the grounding rows,
    whose targets are positions in the fixed head camera). With grounding_weight
    > 0, the batch also holds grounding rows (grounding.pool_batch) and the loss is flow loss +
    grounding_weight x grounding loss, of the separate `head` or, with head None, of the policy's own
    perception head."""
    base_key = jax.random.key(seed)

    def loss_fn(trainable, batch, key):
        params, head_params = trainable
        demo, ground = grounding.split_batch(batch)
        if shift_pad > 0:
            demo = dict(demo, images=augment.random_shift(jax.random.fold_in(key, 1), demo["images"], shift_pad))
        loss, metrics = policy.flow_matching_loss(params, demo, key, noise_samples)
        if grounding_weight > 0:
            g_loss, g_metrics = grounding.grounding_loss(policy, head, params, head_params, ground,
                                                         grounding_layer)
            loss = loss + grounding_weight * g_loss
            metrics = dict(metrics, **g_metrics)
        return loss, metrics

    def step(state: SFTState, batch):
        key = jax.random.fold_in(base_key, state.step)
        trainable = (state.params, state.head_params)
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable, batch, key)
        updates, opt_state = tx.update(grads, state.opt_state, trainable)
        params, head_params = optax.apply_updates(trainable, updates)
        ema_params = (jax.tree.map(lambda e, p: ema * e + (1.0 - ema) * p, state.ema_params, params)
                      if ema > 0 else params)
        metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads), lr=schedule(state.step),
                       param_norm=optax.tree.norm(params))
        return SFTState(step=state.step + 1, params=params, ema_params=ema_params, head_params=head_params,
                        opt_state=opt_state), metrics

    return step
