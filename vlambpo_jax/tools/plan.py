"""Memory plan of the policy and the world model at their config's sizes: per-device bytes on a (data,
fsdp) mesh, without weights or an accelerator. For the policy, SFT of the whole model and PPO of the
action expert + value head; for the world model, full fine-tuning of its net and batched imagination:

  python -m vlambpo_jax.tools.plan --config=configs/bridge.py:pi05 --devices=8 --hbm_gb=80   # 8 x H100
  python -m vlambpo_jax.tools.plan --config=configs/bridge.py:pi05 --devices=16 --hbm_gb=95  # v5p-32
  python -m vlambpo_jax.tools.plan --config=configs/bridge.py:pi05 --devices=16 --hbm_gb=32  # v4-32
  python -m vlambpo_jax.tools.plan --config=configs/bridge.py:bagel --devices=8 --hbm_gb=80  # BAGEL-size WM
      [--fsdp=N (default: every device)] [--sft_batch=B (global; default config.sft.batch_size)]
      [--ppo_batch=B (global PPO minibatch; default config.rl.minibatch_size)]
      [--wm_batch=B (global world-model batch; default config.wm.batch_size)]
      [--imagine_batch=B (global imagined branches per predict call; default config.rl.num_branches)]
      [--wm_param_dtype=D (default config.wm.dtype)] [--wm_remat] [--noworld_model] [--out=FILE]

State (parameters, gradients, AdamW moments, the EMA copy) is counted per leaf from jax.eval_shape
and split the way train/sharding.param_specs splits it over the fsdp axis. Temporaries are what
XLA's compiler reserves (memory_analysis of the CPU compile, in float32) for the step's two phases,
measured on the model cut to 1-2 ViT and 2-3 transformer layers and extrapolated linearly to the full
depth (fit_temps): the loss and its gradient at the per-device batch (the activations), and the
optimizer update (parameter-sized, split over fsdp like the state). Their sum and FSDP's gathered copy
of one layer's weights are added on top of the state, an upper bound since the two phases do not
overlap. No remat is used by the
policy, so every layer's activations are kept for the backward pass. Prints a table and one JSON object.

World model (WorldModel, params {'net', 'vae', 'stats'}), the same way on the same mesh, its cut
models with 1-2 ViT and 4 or 8 backbone layers (WM_FIT_DEPTHS):
- fine-tuning (the wm stages' step, stages/wm_common.train_dynamics): the whole net trained, its
  parameters and gradients in --wm_param_dtype (bfloat16 for configs/bridge.py:bagel, as issue 21
  asks), the AdamW moments and the EMA copy in float32 (an EMA of decay 0.9999 moves by 1e-4 of the
  gap a step, below bfloat16's resolution); the VAE and latent statistics frozen, split or replicated
  as param_specs says. Activations: the loss and its gradient on --wm_batch transitions plus
  config.wm.reward_batch_size Yes/No examples, both split over every device. The training step has
  no remat unless config.wm.umm.remat (on in configs/bridge.py:bagel) or --wm_remat: the backbone
  rematerialised per layer (umm.UMMConfig.remat; the ViT is not); otherwise every layer's activations
  are kept.
- imagination (WorldModel.predict on --imagine_batch branches split over every device, the CFG
  branches as extra rows with their own KV cache): parameters + the temporaries of one predict call
  (the prefill's attention logits, the KV cache, the Euler steps, the VAE encode and decode).
FSDP's gathered copy is one backbone layer (both experts) or the largest single array (embedding,
lm_head) if larger, in the parameter dtype.
"""
from __future__ import annotations

import dataclasses
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import flags
from jax.sharding import AbstractMesh
from jax.sharding import PartitionSpec as P

from vlambpo_jax import cli, loading
from vlambpo_jax.models import pi05_import, wm_training
from vlambpo_jax.models.policy import Policy
from vlambpo_jax.models.policy_train import make_optimizer
from vlambpo_jax.models.world_model import WMNet, WorldModel
from vlambpo_jax.rl import ppo
from vlambpo_jax.train import sharding

GB = 1e9


def _define(fv: flags.FlagValues) -> None:
    flags.DEFINE_integer("devices", 8, "accelerators in the mesh", flag_values=fv)
    flags.DEFINE_integer("fsdp", 0, "devices that split parameters and optimizer state (0 = all)", flag_values=fv)
    flags.DEFINE_float("hbm_gb", 80.0, "memory per device, GB", flag_values=fv)
    flags.DEFINE_integer("sft_batch", 0, "global SFT batch (0 = config.sft.batch_size)", flag_values=fv)
    flags.DEFINE_integer("ppo_batch", 0, "global PPO minibatch (0 = config.rl.minibatch_size)", flag_values=fv)
    flags.DEFINE_integer("vocab_size", 0, "text vocabulary (0 = the config's tokenizer's; PaliGemma's "
                         "when config.policy.tokenizer is empty)", flag_values=fv)
    flags.DEFINE_bool("world_model", True, "also plan the world model (config.wm)", flag_values=fv)
    flags.DEFINE_integer("wm_batch", 0, "global world-model fine-tuning batch (0 = config.wm.batch_size)",
                         flag_values=fv)
    flags.DEFINE_integer("imagine_batch", 0, "global imagined branches per predict call (0 = config.rl.num_branches)",
                         flag_values=fv)
    flags.DEFINE_string("wm_param_dtype", "", "dtype of the world model's parameters and gradients "
                        "('' = config.wm.dtype)", flag_values=fv)
    flags.DEFINE_bool("wm_remat", False, "rematerialise the world model's backbone layers in the backward pass",
                      flag_values=fv)
    flags.DEFINE_string("out", "", "also write the JSON here", flag_values=fv)


def _obs(config, batch: int) -> dict:
    s, v, length = config.image_size, len(config.views), int(config.data.max_text_len)
    return {"images": jax.ShapeDtypeStruct((batch, v, s, s, 3), jnp.uint8),
            "tokens": jax.ShapeDtypeStruct((batch, length), jnp.int32),
            "token_mask": jax.ShapeDtypeStruct((batch, length), jnp.bool_)}


def _init_shapes(policy: Policy, config) -> dict:
    obs = {k: jnp.zeros(x.shape, x.dtype) for k, x in _obs(config, 1).items()}
    return jax.eval_shape(lambda: policy.init(jax.random.PRNGKey(0), obs))


def per_device_bytes(tree, mesh, min_size: int, rules=()) -> float:
    """Bytes one device holds of `tree` (abstract arrays) split by train/sharding.param_specs."""
    specs = sharding.param_specs(tree, mesh, min_size, rules)
    total = 0.0
    for leaf, spec in zip(jax.tree.leaves(tree), jax.tree.leaves(specs, is_leaf=lambda s: isinstance(s, P))):
        split = np.prod([mesh.shape[a] for a in jax.tree.leaves(tuple(spec)) if a is not None], dtype=np.float64)
        total += np.prod(leaf.shape, dtype=np.float64) * np.dtype(leaf.dtype).itemsize / split
    return total


# XLA:CPU compile options of the plan. The first two only skip LLVM's optimisation of the generated
# machine code: buffer assignment, and so memory_analysis, is the same (checked on the policy's and the
# world model's phases), and a compile takes about half the time. The third keeps jax.checkpoint's
# optimization barriers, which XLA:CPU otherwise expands early, so that CSE merges the recomputed
# forward pass back into the saved one and remat saves nothing (a chain of 8 checkpointed MLPs: 289 MB
# of temporaries with or without remat; with the barriers kept, 59 MB). Without remat there is no
# barrier to keep.
COMPILE_OPTIONS = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True,
                   "xla_disable_hlo_passes": "cse_barrier_expander"}


def _temps(fn, *args) -> float:
    """XLA's temporaries (bytes) of jit(fn) compiled for the abstract args."""
    compiled = jax.jit(fn).lower(*args).compile(COMPILE_OPTIONS)
    return float(compiled.memory_analysis().temp_size_in_bytes)


def _sft_phases(policy: Policy, config, batch: int) -> tuple[float, float]:
    """XLA's temporaries of SFT's two phases: the flow-matching loss and its gradient at a per-device
    batch (activations), and the clipped AdamW + EMA update of the whole model."""
    tx, _ = make_optimizer(config.sft, max(int(config.sft.steps), 1))
    params = _init_shapes(policy, config)
    data = dict(_obs(config, batch), actions=jax.ShapeDtypeStruct((batch, config.chunk_size, config.action_dim),
                                                                  jnp.float32),
                action_mask=jax.ShapeDtypeStruct((batch, config.chunk_size), jnp.bool_))
    loss = lambda p, d: policy.flow_matching_loss(p, d, jax.random.PRNGKey(0))[0]  # noqa: E731
    ema = float(config.sft.ema)

    def update(params, ema_params, opt_state, grads):
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, jax.tree.map(lambda e, p: ema * e + (1 - ema) * p, ema_params, params), opt_state

    opt_state = jax.eval_shape(tx.init, params)
    return _temps(jax.value_and_grad(loss), params, data), _temps(update, params, params, opt_state, params)


def _ppo_phases(policy: Policy, config, batch: int) -> tuple[float, float]:
    """The same for PPO: the loss and gradient of the trained groups on a minibatch of `batch` chunks,
    and their AdamW update."""
    rl = config.rl
    params = _init_shapes(policy, config)
    optimizer = ppo.make_optimizer(rl, params)
    d = policy.dims
    f32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.float32)  # noqa: E731
    mask = jax.ShapeDtypeStruct((batch,), jnp.bool_)
    buffer = ppo.Buffer(obs=_obs(config, batch),
                        chain={"x": f32(batch, policy.num_steps + 1, d.chunk_size, d.action_pad_dim),
                               "step": jax.ShapeDtypeStruct((batch,), jnp.int32)},
                        old_log_prob=f32(batch), old_value=f32(batch), advantages=f32(batch), returns=f32(batch),
                        mask=mask, policy_mask=mask)
    losses = ppo.make_loss_fn(policy, rl)
    train = ppo.trainable(params, rl.train_vlm)
    frozen = {name: sub for name, sub in params.items() if name not in train}
    grad = jax.value_and_grad(lambda t, f, mb: losses({**f, **t}, mb, False)[0])

    def update(train, opt_state, grads):
        updates, opt_state = optimizer.update(grads, opt_state, train)
        return optax.apply_updates(train, updates), opt_state

    opt_state = jax.eval_shape(optimizer.init, train)
    return _temps(grad, train, frozen, buffer), _temps(update, train, opt_state, train)


def _cut(config, vit_depth: int, depth: int):
    c = config.copy_and_resolve_references()
    c.policy.update(dict(vit_depth=vit_depth, depth=depth, expert_depth=depth, dtype="float32"))
    return c


# Cut models the temporaries are fitted on: (ViT layers, transformer layers). One transformer layer is
# left out: from 1 to 2 layers XLA:CPU's buffer assignment changes regime (measured on pi0.5's PPO
# step: +4.8 GB from 1 to 2 layers, +0.17 GB per layer from 2 to 4), from 2 on it grows linearly.
FIT_DEPTHS = ((1, 2), (2, 2), (1, 3))


def fit_temps(measure, depths: tuple[int, int], names: tuple[str, ...], fit_depths=FIT_DEPTHS) -> dict:
    """Temporaries of a model's phases at its full depths from cut models: measure(vit_depth, depth) ->
    bytes per phase (a tuple in `names` order) of the model cut to those depths, run at the three
    fit_depths ((v0, d0), (v1, d0), (v0, d1)); each phase fitted as base + a vit_depth + b depth and
    extrapolated to depths = (ViT layers, layers).
    -> {'measured': {'vit{v}_layers{d}': {name: bytes}}, name: extrapolated bytes for each name}."""
    t = {(dv, d): measure(dv, d) for dv, d in fit_depths}
    (v0, d0), (v1, _), (_, d1) = fit_depths
    vit_depth, depth = depths

    def extrapolate(i):
        at = {k: v[i] for k, v in t.items()}
        a, b = at[(v1, d0)] - at[(v0, d0)], (at[(v0, d1)] - at[(v0, d0)]) / (d1 - d0)
        return at[(v0, d0)] + a * (vit_depth - v0) + b * (depth - d0)

    return {"measured": {f"vit{dv}_layers{d}": dict(zip(names, v)) for (dv, d), v in t.items()},
            **{name: extrapolate(i) for i, name in enumerate(names)}}


def temp_bytes(phases_fn, config, vocab_size: int, batch: int) -> dict:
    """XLA's temporaries of a policy train step's two phases at the config's depths (bytes on one
    device, the update's before FSDP splits it), from cut models compiled in float32 (XLA:CPU upcasts
    bfloat16, so its bf16 buffer sizes are not a GPU's or TPU's; float32 bounds a bf16 run's from
    above), fitted and extrapolated by fit_temps.
    -> {'activations': the loss-and-gradient phase at `batch`, 'update': the optimizer update, 'measured'}."""
    def measure(vit_depth: int, depth: int):
        c = _cut(config, vit_depth, depth)
        return phases_fn(Policy(c, vocab_size), c, batch)

    return fit_temps(measure, (config.policy.vit_depth, config.policy.depth), ("activations", "update"))


def _layer_bytes(params, fsdp: int) -> float:
    """One prefix + expert layer's full weights: what FSDP gathers on every device while it runs."""
    blocks = [v for k, v in params["vlm"].items() if k.startswith("blocks_")]
    expert = [v for k, v in params["action_expert"].items() if k.startswith("blocks_")]
    size = lambda tree: sum(np.prod(x.shape, dtype=np.float64) * 4 for x in jax.tree.leaves(tree))  # noqa: E731
    return (size(blocks[0]) + size(expert[0])) if fsdp > 1 else 0.0


def _mesh(devices: int, fsdp: int, batches: dict) -> AbstractMesh:
    """The (data, fsdp) mesh, once fsdp divides the devices and every global batch {flag: size} splits
    over all of them."""
    if devices % fsdp:
        raise ValueError(f"--fsdp={fsdp} does not divide --devices={devices}")
    for name, b in batches.items():
        if b % devices:
            raise ValueError(f"{name}={b} is not a multiple of --devices={devices}")
    return AbstractMesh((devices // fsdp, fsdp), ("data", "fsdp"))


def plan(config, devices: int, fsdp: int, hbm_gb: float, sft_batch: int, ppo_batch: int, vocab_size: int) -> dict:
    """The policy's per-device bytes for SFT and PPO (module docstring)."""
    mesh = _mesh(devices, fsdp, {"--sft_batch": sft_batch, "--ppo_batch": ppo_batch})
    split = dict(mesh=mesh, min_size=int(config.mesh.fsdp_min_size), rules=tuple(config.mesh.rules))
    policy = Policy(config, vocab_size)
    params = _init_shapes(policy, config)
    count = lambda tree: int(sum(np.prod(x.shape, dtype=np.int64) for x in jax.tree.leaves(tree)))  # noqa: E731
    p_bytes = per_device_bytes(params, **split)
    ppo_state = per_device_bytes(ppo.trainable(params, config.rl.train_vlm), **split)
    layer = _layer_bytes(params, fsdp)
    print(f"compiling cut models for the activation estimate ({config.policy.depth} layers, "
          f"{config.policy.vit_depth} ViT layers)...", file=sys.stderr)
    sft_temp = temp_bytes(_sft_phases, config, vocab_size, sft_batch // devices)
    ppo_temp = temp_bytes(_ppo_phases, config, vocab_size, ppo_batch // devices)
    ema = float(config.sft.ema) > 0
    sft = {"params": p_bytes, "ema_params": p_bytes if ema else 0.0, "grads": p_bytes, "adam_moments": 2 * p_bytes,
           "gathered_layer": layer, "update_temps": sft_temp["update"] / fsdp, "activations": sft_temp["activations"]}
    ppo_row = {"params": p_bytes, "grads": ppo_state, "adam_moments": 2 * ppo_state, "gathered_layer": layer,
               "update_temps": ppo_temp["update"] / fsdp, "activations": ppo_temp["activations"]}
    out = {"mesh": {"devices": devices, "data": devices // fsdp, "fsdp": fsdp, "hbm_gb": hbm_gb},
           "params": {group: count(tree) for group, tree in params.items()} | {"total": count(params)},
           "sft": {"global_batch": sft_batch, "per_device_batch": sft_batch // devices, "bytes": sft,
                   "total_gb": sum(sft.values()) / GB, "temps": sft_temp},
           "ppo": {"global_minibatch": ppo_batch, "per_device_minibatch": ppo_batch // devices, "bytes": ppo_row,
                   "total_gb": sum(ppo_row.values()) / GB, "temps": ppo_temp}}
    for run in ("sft", "ppo"):
        out[run]["fits"] = bool(out[run]["total_gb"] <= hbm_gb)
    return out


# ------------------------------------------------------------------------------------- world model

def world_model(config, remat: bool = False) -> WorldModel:
    """WorldModel(config); remat: its backbone recomputes each layer in the backward pass whatever
    config.wm.umm.remat says (umm.UMMConfig.remat)."""
    wm = WorldModel(config)
    if remat and not wm.spec.umm.remat:
        wm.spec = dataclasses.replace(wm.spec, umm=dataclasses.replace(wm.spec.umm, remat=True))
        wm.net = WMNet(wm.spec)
    return wm


def _wm_shapes(wm: WorldModel) -> dict:
    """Abstract {'net', 'vae', 'stats'} parameters, as wm.init makes them (float32)."""
    return jax.eval_shape(wm.init, jax.random.PRNGKey(0))


def _as_dtype(tree, dtype):
    """Abstract arrays of `tree`, the floating ones in `dtype`."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(
        x.shape, dtype if jnp.issubdtype(x.dtype, jnp.floating) else x.dtype), tree)


def _wm_batch(config, batch: int, reward_batch: int) -> dict:
    """An abstract batch of the world-model stages (stages/wm_common.open_data): images and next_images
    uint8[B, V, H, W, 3], actions f32[B, k, action_dim], tokens int32[B, L], token_mask bool[B, L],
    episode_success bool[B], steps_to_end int32[B]; with reward_batch R > 0 the Yes/No examples
    reward_images uint8[R, V, H, W, 3], reward_tokens, reward_token_mask [R, L], reward_yes, reward_valid [R]."""
    s, v, length = config.image_size, len(config.views), int(config.wm.max_text_len)
    sds = jax.ShapeDtypeStruct
    out = {"images": sds((batch, v, s, s, 3), jnp.uint8), "next_images": sds((batch, v, s, s, 3), jnp.uint8),
           "actions": sds((batch, int(config.chunk_size), int(config.action_dim)), jnp.float32),
           "tokens": sds((batch, length), jnp.int32), "token_mask": sds((batch, length), jnp.bool_),
           "episode_success": sds((batch,), jnp.bool_), "steps_to_end": sds((batch,), jnp.int32)}
    if reward_batch:
        out |= {"reward_images": sds((reward_batch, v, s, s, 3), jnp.uint8),
                "reward_tokens": sds((reward_batch, length), jnp.int32),
                "reward_token_mask": sds((reward_batch, length), jnp.bool_),
                "reward_yes": sds((reward_batch,), jnp.bool_), "reward_valid": sds((reward_batch,), jnp.bool_)}
    return out


def _wm_finetune_phases(wm: WorldModel, config, batch: int, reward_batch: int) -> tuple[float, float]:
    """XLA's temporaries of the world model's train step (stages/wm_common.train_dynamics) in its two
    phases: the loss and its gradient with respect to the net on `batch` transitions and `reward_batch`
    Yes/No examples (the activations), and the clipped AdamW + warmed-up EMA update of the net."""
    w = config.wm
    params = _wm_shapes(wm)
    net, fixed = params["net"], {k: v for k, v in params.items() if k != "net"}
    loss = lambda n, f, data: wm.loss({**f, "net": n}, data, jax.random.PRNGKey(0))[0]  # noqa: E731
    tx = wm_training.make_optimizer(w, max(int(w.finetune_steps), 1))
    ema = float(w.ema)

    def update(net, ema_net, opt_state, grads, step):
        updates, opt_state = tx.update(grads, opt_state, net)
        net = optax.apply_updates(net, updates)
        d = jnp.minimum(ema, (1.0 + step) / (10.0 + step))
        return net, jax.tree.map(lambda e, p: e + (1 - d) * (p - e), ema_net, net), opt_state

    opt_state = jax.eval_shape(tx.init, net)
    step = jax.ShapeDtypeStruct((), jnp.int32)
    return (_temps(jax.value_and_grad(loss), net, fixed, _wm_batch(config, batch, reward_batch)),
            _temps(update, net, net, opt_state, net, step))


def _wm_imagine_phase(wm: WorldModel, config, batch: int) -> tuple[float]:
    """XLA's temporaries of one WorldModel.predict call on `batch` branches: the KV-cached prefill, the
    Euler steps with the CFG branches as extra rows, the VAE encode and decode."""
    params = _wm_shapes(wm)
    data = _wm_batch(config, batch, 0)
    key = jax.ShapeDtypeStruct((2,), jnp.uint32)
    return (_temps(wm.predict, params, data["images"], data["tokens"], data["token_mask"], data["actions"], key),)


def _wm_cut(config, vit_depth: int, depth: int):
    c = config.copy_and_resolve_references()
    c.wm.vit.depth, c.wm.umm.depth, c.wm.dtype = vit_depth, depth, "float32"
    return c


# The world model's cut models: (ViT layers, backbone layers). Measured at BAGEL's size (ViT 1, per-device
# batch 4 + 4 Yes/No examples; 32 branches x 3 CFG rows), against direct compiles of all 28 layers:
# - a predict call's peak barely grows from 2 to 3 layers (+25 MB), then by exactly one layer's KV cache
#   (+385 MB) per layer from 4 to 28: the peak moves from an early layer to the last one, where the
#   cache of all the others is live, so a fit on 2-3 layers would miss the cache;
# - the loss and gradient grow by 5.22 GB a layer from 2 to 3 layers, 5.39 from 4 to 28 (fitted on 4
#   and 8 layers: within 1% of the direct compile);
# - with remat the growth per layer wobbles (0.12 GB from 4 to 5, 0.26 from 5 to 8, 0.14 from 12 to 16,
#   0.18 on average from 4 to 28): fitted on 4 and 8 layers 8% over the direct compile (on 4 and 5, 13%
#   under), and at batch 2 + 2, 8% under.
WM_FIT_DEPTHS = ((1, 4), (2, 4), (1, 8))


def wm_temp_bytes(phases_fn, config, names: tuple[str, ...], remat: bool = False, **batches) -> dict:
    """XLA's temporaries of world-model phases at the config's depths (bytes on one device):
    phases_fn(world_model, config, **batches) -> bytes per phase in `names` order, measured on the
    model cut to WM_FIT_DEPTHS (ViT layers, backbone layers) and compiled in float32 (see temp_bytes),
    extrapolated by fit_temps. -> {'measured': ..., name: bytes for each name}."""
    def measure(vit_depth: int, depth: int):
        c = _wm_cut(config, vit_depth, depth)
        return phases_fn(world_model(c, remat), c, **batches)

    return fit_temps(measure, (int(config.wm.vit.depth), int(config.wm.umm.depth)), names, WM_FIT_DEPTHS)


def _wm_gathered_bytes(net, itemsize: int, fsdp: int) -> float:
    """What FSDP gathers on every device at once: one backbone layer's two experts, or the largest
    single array (the embedding or the lm_head) where that is larger; nothing without fsdp."""
    if fsdp == 1:
        return 0.0
    size = lambda tree: sum(np.prod(x.shape, dtype=np.float64) for x in jax.tree.leaves(tree))  # noqa: E731
    p = net["params"]
    biggest = max(np.prod(x.shape, dtype=np.float64) for x in jax.tree.leaves(p))
    return float(max(size(p["backbone"]["layers_0"]), biggest) * itemsize)


def plan_world_model(config, devices: int, fsdp: int, hbm_gb: float, wm_batch: int, imagine_batch: int,
                     param_dtype: str, remat: bool = False) -> dict:
    """The world model's per-device bytes for fine-tuning its net on `wm_batch` transitions (plus
    config.wm.reward_batch_size Yes/No examples) and for imagining `imagine_batch` branches in one
    predict call, parameters and gradients in `param_dtype` (module docstring)."""
    w = config.wm
    reward_batch = int(w.get("reward_batch_size", 0))
    mesh = _mesh(devices, fsdp, {"--wm_batch": wm_batch, "--imagine_batch": imagine_batch,
                                 "config.wm.reward_batch_size": reward_batch})
    split = dict(mesh=mesh, min_size=int(config.mesh.fsdp_min_size), rules=tuple(config.mesh.rules))
    dtype = jnp.dtype(param_dtype)
    wm = WorldModel(config)
    params = _wm_shapes(wm)
    count = lambda tree: int(sum(np.prod(x.shape, dtype=np.int64) for x in jax.tree.leaves(tree)))  # noqa: E731
    net = per_device_bytes(_as_dtype(params["net"], dtype), **split)
    net_f32 = per_device_bytes(_as_dtype(params["net"], jnp.float32), **split)
    frozen = per_device_bytes({k: v for k, v in params.items() if k != "net"}, **split)
    gathered = _wm_gathered_bytes(params["net"], dtype.itemsize, fsdp)
    print(f"compiling cut world models for the activation estimate ({w.umm.depth} backbone layers, "
          f"{w.vit.depth} ViT layers{', remat' if remat else ''})...", file=sys.stderr)
    tune_temp = wm_temp_bytes(_wm_finetune_phases, config, ("activations", "update"), remat,
                              batch=wm_batch // devices, reward_batch=reward_batch // devices)
    imagine_temp = wm_temp_bytes(_wm_imagine_phase, config, ("predict",), batch=imagine_batch // devices)
    tune = {"params": net, "ema_params": net_f32 if float(w.ema) > 0 else 0.0, "grads": net,
            "adam_moments": 2 * net_f32, "frozen": frozen, "gathered_layer": gathered,
            "update_temps": tune_temp["update"] / fsdp, "activations": tune_temp["activations"]}
    imagine = {"params": net, "frozen": frozen, "gathered_layer": gathered, "predict_temps": imagine_temp["predict"]}
    groups = {g: count(t) for g, t in params["net"]["params"].items()} | {"total": count(params["net"])}
    out = {"param_dtype": dtype.name, "remat": bool(remat),
           "params": {"net": groups, "vae": count(params["vae"]), "stats": count(params["stats"]),
                      "total": count(params)},
           "finetune": {"global_batch": wm_batch, "per_device_batch": wm_batch // devices,
                        "global_reward_examples": reward_batch, "per_device_reward_examples": reward_batch // devices,
                        "bytes": tune, "total_gb": sum(tune.values()) / GB, "temps": tune_temp},
           "imagine": {"global_branches": imagine_batch, "per_device_branches": imagine_batch // devices,
                       "rows_per_branch": 3 if wm.spec.cfg_enabled else 1, "sample_steps": wm.spec.num_sample_steps,
                       "bytes": imagine, "total_gb": sum(imagine.values()) / GB, "temps": imagine_temp}}
    for run in ("finetune", "imagine"):
        out[run]["fits"] = bool(out[run]["total_gb"] <= hbm_gb)
    return out


def _table(out: dict) -> str:
    m, sft, ppo_row = out["mesh"], out["sft"], out["ppo"]
    row = lambda name, a, b: f"{name:<24}{a:>20}{b:>22}"  # noqa: E731
    lines = [f"mesh: {m['devices']} devices = data {m['data']} x fsdp {m['fsdp']}, {m['hbm_gb']:g} GB each; "
             f"params {out['params']['total'] / 1e9:.2f}B", row("per device (GB)", "SFT (whole model)",
                                                               "PPO (expert + value)")]
    for key in ("params", "ema_params", "grads", "adam_moments", "gathered_layer", "update_temps", "activations"):
        lines.append(row(key, f"{sft['bytes'].get(key, 0) / GB:.2f}", f"{ppo_row['bytes'].get(key, 0) / GB:.2f}"))
    lines.append(row("total", f"{sft['total_gb']:.2f}", f"{ppo_row['total_gb']:.2f}"))
    lines.append(row("batch per device", sft["per_device_batch"], ppo_row["per_device_minibatch"]))
    lines.append(row("fits", str(sft["fits"]), str(ppo_row["fits"])))
    return "\n".join(lines)


def _wm_table(wm: dict) -> str:
    tune, imagine, p = wm["finetune"], wm["imagine"], wm["params"]
    row = lambda name, a, b: f"{name:<24}{a:>20}{b:>22}"  # noqa: E731
    gb = lambda run, key: f"{run['bytes'][key] / GB:.2f}" if key in run["bytes"] else "-"  # noqa: E731
    lines = [f"world model: params {p['total'] / 1e9:.2f}B (net {p['net']['total'] / 1e9:.2f}B in "
             f"{wm['param_dtype']}, VAE {p['vae'] / 1e9:.2f}B frozen); {'remat' if wm['remat'] else 'no remat'}",
             row("per device (GB)", "WM fine-tune (net)", "WM imagination")]
    for key in ("params", "ema_params", "grads", "adam_moments", "frozen", "gathered_layer", "update_temps",
                "activations", "predict_temps"):
        lines.append(row(key, gb(tune, key), gb(imagine, key)))
    lines.append(row("total", f"{tune['total_gb']:.2f}", f"{imagine['total_gb']:.2f}"))
    lines.append(row("batch per device", f"{tune['per_device_batch']} (+{tune['per_device_reward_examples']} Yes/No)",
                     f"{imagine['per_device_branches']} x {imagine['rows_per_branch']} rows"))
    lines.append(row("fits", str(tune["fits"]), str(imagine["fits"])))
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    fv = cli.command_flags(argv, _define, workdir=False)
    config = fv.config
    vocab = fv.vocab_size or (loading.make_tokenizer(config.policy.tokenizer).vocab_size if config.policy.tokenizer
                              else pi05_import.PALIGEMMA_VOCAB)
    if not config.policy.tokenizer:
        config.policy.tokenizer = "byte"      # only the vocabulary size matters here
    config = cli.checked(config)
    fsdp = fv.fsdp or fv.devices
    sft_batch, ppo_batch = fv.sft_batch or int(config.sft.batch_size), fv.ppo_batch or int(config.rl.minibatch_size)
    wm_batch, imagine_batch = fv.wm_batch or int(config.wm.batch_size), fv.imagine_batch or int(config.rl.num_branches)
    try:
        param_dtype = jnp.dtype(fv.wm_param_dtype or config.wm.dtype).name
    except TypeError:
        cli.fail(f"--wm_param_dtype={fv.wm_param_dtype}: not a dtype (e.g. bfloat16, float32)")
    try:
        _mesh(fv.devices, fsdp, {"--sft_batch": sft_batch, "--ppo_batch": ppo_batch} | (
            {"--wm_batch": wm_batch, "--imagine_batch": imagine_batch,
             "config.wm.reward_batch_size": int(config.wm.get("reward_batch_size", 0))} if fv.world_model else {}))
        out = plan(config, fv.devices, fsdp, fv.hbm_gb, sft_batch, ppo_batch, vocab)
        if fv.world_model:
            out["world_model"] = plan_world_model(config, fv.devices, fsdp, fv.hbm_gb, wm_batch, imagine_batch,
                                                  param_dtype, fv.wm_remat or bool(config.wm.umm.get("remat", False)))
    except ValueError as e:
        cli.fail(str(e))
    out["config"] = cli.config_spec(["", *argv])
    print(_table(out), file=sys.stderr)
    if "world_model" in out:
        print(_wm_table(out["world_model"]), file=sys.stderr)
    cli.emit_json(json.dumps(out, indent=1), fv.out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
