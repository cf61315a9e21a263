"""Multi-view consistency of predicted frames, read by a small state probe (beyond the paper).

A probe is one tiny conv net per view (head, wrist), trained on REAL frames to regress the same
world-frame target from either view: the episode's proprio state at that frame (tabletop and Bridge
layout: end-effector xyz in metres, roll / pitch / yaw, gripper opening last). The head camera sees the
gripper; the wrist camera rides on it and sees the table and objects from its pose, so both views carry
the gripper's pose. Object positions are not in the RLDS episodes (standardize() keeps state, action,
images, text), so the probe reads the gripper only.

Consistency of a pair of views = how much the two probe readings disagree:
    pos  = || head_probe(head)[xyz] - wrist_probe(wrist)[xyz] ||_2      (metres)
    grip = | head_probe(head)[grip] - wrist_probe(wrist)[grip] |         (opening units, 0..1)
On real next frames this is the probe's own floor (`real_consistency_*`); on the world model's
predicted next frames (`consistency_*`) it rises when the predicted wrist view shows the gripper
elsewhere than the predicted head view does. Against the true next state the readings also give
`probe_err_pos_{head,wrist}` (predicted frames), `real_probe_err_pos_*` (the probe's accuracy) and
`copy_probe_err_pos_*` (the copy-current-frame baseline).

To compare decoding layouts (interleaved vs independent), evaluate both models with the same probe
(train once, or `load` the one a stage saved) on the same held-out batches (wm_training.make_evaluator).
"""
from __future__ import annotations

import time
from pathlib import Path

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

POS_DIMS = (0, 1, 2)   # end-effector xyz (metres) in the state vector
GRIP_DIM = -1          # gripper opening


class ProbeNet(nn.Module):
    """uint8-range images float[N, H, W, 3] in [-1, 1] -> [N, out_dim] (standardized units)."""
    out_dim: int

    @nn.compact
    def __call__(self, x):
        for width in (16, 32, 32):
            x = nn.relu(nn.Conv(width, (3, 3), strides=(2, 2))(x))
        x = x.reshape(x.shape[0], -1)
        return nn.Dense(self.out_dim)(nn.relu(nn.Dense(64)(x)))


def _to_float(images):
    return images.astype(jnp.float32) / 127.5 - 1.0


def _apply(net, nets, x):
    """Per-view nets {'view<i>': params} on x float[B, V, H, W, 3] -> [B, V, D]. (A python loop, not
    a vmap over the params: a vmapped conv becomes a grouped conv, ~10x slower on CPU.)"""
    return jnp.stack([net.apply(nets[f"view{v}"], x[:, v]) for v in range(x.shape[1])], axis=1)


def read(probe: dict, images) -> jax.Array:
    """probe params, images uint8[B, V, H, W, 3] -> readings float32[B, V, D] in state units."""
    net = ProbeNet(probe["mean"].shape[-1])
    return _apply(net, probe["nets"], _to_float(jnp.asarray(images))) * probe["std"] + probe["mean"]


def train(images: np.ndarray, targets: np.ndarray, key, steps: int = 400, batch_size: int = 64,
          lr: float = 2e-3) -> tuple[dict, dict]:
    """Fits one ProbeNet per view. images uint8[N, V, H, W, 3], targets float[N, D] (the state shared
    by the N frames' views) -> (probe params {'nets': {'view<i>': params}, 'mean', 'std' [D]},
    {'train_err_pos_<v>': mean xyz error on the training frames per view index v, 'seconds'})."""
    t0 = time.time()
    images = np.asarray(images)
    targets = np.asarray(targets, np.float32)
    n, v = images.shape[:2]
    mean, std = targets.mean(0), np.maximum(targets.std(0), 1e-3)
    y = (targets - mean) / std
    net = ProbeNet(targets.shape[1])
    k_init, k_data = jax.random.split(key)
    nets = {f"view{i}": net.init(k, jnp.zeros((1,) + images.shape[2:]))
            for i, k in enumerate(jax.random.split(k_init, v))}
    tx = optax.adam(lr)
    opt = tx.init(nets)
    bs = min(batch_size, n)

    def step(nets, opt, images, y, i):
        x = _to_float(images[i])
        g = jax.grad(lambda p: jnp.mean((_apply(net, p, x) - y[i][:, None]) ** 2))(nets)
        upd, opt = tx.update(g, opt, nets)
        return optax.apply_updates(nets, upd), opt

    # The frames stay on the device; one jitted step per python iteration (XLA:CPU runs these convs
    # ~30x slower inside a scan).
    step = jax.jit(step, donate_argnums=(0, 1))
    rng = np.random.default_rng(int(jax.random.randint(k_data, (), 0, 2 ** 31 - 1)))
    images_d, y_d = jnp.asarray(images), jnp.asarray(y)
    for _ in range(int(steps)):
        nets, opt = step(nets, opt, images_d, y_d, jnp.asarray(rng.choice(n, bs, replace=False), jnp.int32))
    probe = {"nets": nets, "mean": jnp.asarray(mean), "std": jnp.asarray(std)}
    fit = np.concatenate([np.asarray(read_jit(probe, images[i:i + 256])) for i in range(0, n, 256)])
    info = {f"train_err_pos_{i}": float(np.mean(np.linalg.norm(
        fit[:, i][:, list(POS_DIMS)] - targets[:, list(POS_DIMS)], axis=-1))) for i in range(v)}
    info["seconds"] = time.time() - t0
    return probe, info


read_jit = jax.jit(read)


def metrics(readings, state=None, prefix: str = "") -> dict:
    """Per-sample consistency / error terms (numpy, [B]) from readings [B, 2, D] (head, wrist) and
    optionally the true state [B, D] of those frames. Keys: {prefix}consistency_pos,
    {prefix}consistency_grip, and with state {prefix}probe_err_pos_head / _wrist."""
    r = np.asarray(readings)
    pos = list(POS_DIMS)
    out = {f"{prefix}consistency_pos": np.linalg.norm(r[:, 0, pos] - r[:, 1, pos], axis=-1),
           f"{prefix}consistency_grip": np.abs(r[:, 0, GRIP_DIM] - r[:, 1, GRIP_DIM])}
    if state is not None:
        s = np.asarray(state)
        for v, name in enumerate(("head", "wrist")):
            out[f"{prefix}probe_err_pos_{name}"] = np.linalg.norm(r[:, v, pos] - s[:, pos], axis=-1)
    return out


def save(path, probe: dict) -> None:
    Path(path).write_bytes(flax.serialization.msgpack_serialize(jax.device_get(probe)))


def load(path) -> dict:
    raw = flax.serialization.msgpack_restore(Path(path).read_bytes())
    return jax.tree.map(jnp.asarray, raw)
