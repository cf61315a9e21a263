"""Memory plan of the policy at its config's sizes: per-device bytes for SFT of the whole model and for
PPO of the action expert + value head, on a (data, fsdp) mesh, without weights or an accelerator:

  python -m vlambpo_jax.tools.plan --config=configs/bridge.py:pi05 --devices=8 --hbm_gb=80   # 8 x H100
  python -m vlambpo_jax.tools.plan --config=configs/bridge.py:pi05 --devices=16 --hbm_gb=95  # v5p-32
  python -m vlambpo_jax.tools.plan --config=configs/bridge.py:pi05 --devices=16 --hbm_gb=32  # v4-32
      [--fsdp=N (default: every device)] [--sft_batch=B (global; default config.sft.batch_size)]
      [--ppo_batch=B (global PPO minibatch; default config.rl.minibatch_size)] [--out=FILE]

State (parameters, gradients, AdamW moments, the EMA copy) is counted per leaf from jax.eval_shape
and split the way train/sharding.param_specs splits it over the fsdp axis. Temporaries are what
XLA's compiler reserves (memory_analysis of the CPU compile, in float32) for the step's two phases,
measured on the model cut to 1-2 ViT and 2-3 transformer layers and extrapolated linearly to the full
depth (temp_bytes): the loss and its gradient at the per-device batch (the activations), and the
optimizer update (parameter-sized, split over fsdp like the state). Their sum and FSDP's gathered copy
of one layer's weights are added on top of the state, an upper bound since the two phases do not
overlap. No remat is used by the
policy, so every layer's activations are kept for the backward pass. Prints a table and one JSON object.
"""
from __future__ import annotations

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
from vlambpo_jax.models import pi05_import
from vlambpo_jax.models.policy import Policy
from vlambpo_jax.models.policy_train import make_optimizer
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


def _temps(fn, *args) -> float:
    return float(jax.jit(fn).lower(*args).compile().memory_analysis().temp_size_in_bytes)


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


def temp_bytes(phases_fn, config, vocab_size: int, batch: int) -> dict:
    """XLA's temporaries of a train step's two phases at the config's depths (bytes on one device, the
    update's before FSDP splits it), from cut models compiled in float32 (XLA:CPU upcasts bfloat16, so
    its bf16 buffer sizes are not a GPU's or TPU's; float32 bounds a bf16 run's from above), each fitted
    as base + a vit_depth + b depth on FIT_DEPTHS and extrapolated.
    -> {'activations': the loss-and-gradient phase at `batch`, 'update': the optimizer update, 'measured'}."""
    t = {}
    for dv, d in FIT_DEPTHS:
        c = _cut(config, dv, d)
        t[(dv, d)] = phases_fn(Policy(c, vocab_size), c, batch)
    (v0, d0), (v1, _), (_, d1) = FIT_DEPTHS
    p = config.policy

    def extrapolate(i):
        at = {k: v[i] for k, v in t.items()}
        a, b = at[(v1, d0)] - at[(v0, d0)], (at[(v0, d1)] - at[(v0, d0)]) / (d1 - d0)
        return at[(v0, d0)] + a * (p.vit_depth - v0) + b * (p.depth - d0)

    return {"measured": {f"vit{dv}_layers{d}": {"activations": v[0], "update": v[1]} for (dv, d), v in t.items()},
            "activations": extrapolate(0), "update": extrapolate(1)}


def _layer_bytes(params, fsdp: int) -> float:
    """One prefix + expert layer's full weights: what FSDP gathers on every device while it runs."""
    blocks = [v for k, v in params["vlm"].items() if k.startswith("blocks_")]
    expert = [v for k, v in params["action_expert"].items() if k.startswith("blocks_")]
    size = lambda tree: sum(np.prod(x.shape, dtype=np.float64) * 4 for x in jax.tree.leaves(tree))  # noqa: E731
    return (size(blocks[0]) + size(expert[0])) if fsdp > 1 else 0.0


def plan(config, devices: int, fsdp: int, hbm_gb: float, sft_batch: int, ppo_batch: int, vocab_size: int) -> dict:
    if devices % fsdp:
        raise ValueError(f"--fsdp={fsdp} does not divide --devices={devices}")
    for name, b in (("sft_batch", sft_batch), ("ppo_batch", ppo_batch)):
        if b % devices:
            raise ValueError(f"--{name}={b} is not a multiple of --devices={devices}")
    mesh = AbstractMesh((devices // fsdp, fsdp), ("data", "fsdp"))
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


def main(argv: list[str]) -> int:
    fv = cli.command_flags(argv, _define, workdir=False)
    config = fv.config
    vocab = fv.vocab_size or (loading.make_tokenizer(config.policy.tokenizer).vocab_size if config.policy.tokenizer
                              else pi05_import.PALIGEMMA_VOCAB)
    if not config.policy.tokenizer:
        config.policy.tokenizer = "byte"      # only the vocabulary size matters here
    config = cli.checked(config)
    try:
        out = plan(config, fv.devices, fv.fsdp or fv.devices, fv.hbm_gb, fv.sft_batch or int(config.sft.batch_size),
                   fv.ppo_batch or int(config.rl.minibatch_size), vocab)
    except ValueError as e:
        cli.fail(str(e))
    out["config"] = cli.config_spec(["", *argv])
    print(_table(out), file=sys.stderr)
    cli.emit_json(json.dumps(out, indent=1), fv.out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
