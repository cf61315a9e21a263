"""A separate success classifier: the reward read by an ensemble of small conv nets instead of the
world model's Yes/No answer (beyond the paper; WMPO and RLinf's world-model RL use a separate one).

Each member reads every view (its own conv tower per view) and the instruction (a bag of hashed token
embeddings, so the target object is known), and outputs the logit of "the task holds in this frame".
Members differ by initialisation and by the shifts their training batches are augmented with; the
ensemble's probability is their minimum by default (`aggregate='min'`: a success only where every
member agrees, the pessimism that keeps an optimizing policy from steering into one member's false
positives) or their mean.

Params: {'members': ({'tower0': ..., 'tower1': ..., 'head': ...}, ...), 'threshold': f32[]} (the
threshold is chosen on held-out frames by the `reward` stage and saved with the weights).
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

from vlambpo_jax.data.augment import random_shift

TEXT_BUCKETS = 4096   # token ids are hashed into this many embeddings (any tokenizer's ids fit)


class ViewTower(nn.Module):
    """float[B, H, W, 3] in [-1, 1] -> [B, F]."""
    widths: tuple[int, ...]
    features: int

    @nn.compact
    def __call__(self, x):
        for width in self.widths:
            x = nn.relu(nn.Conv(width, (3, 3), strides=(2, 2))(x))
        return nn.relu(nn.Dense(self.features)(x.reshape(x.shape[0], -1)))


class SuccessHead(nn.Module):
    """View features [B, V * F] and token ids int32[B, L] with mask bool[B, L] -> logits [B]."""
    text_dim: int
    hidden: int

    @nn.compact
    def __call__(self, features, tokens, token_mask):
        emb = nn.Embed(TEXT_BUCKETS, self.text_dim)(tokens % TEXT_BUCKETS)
        mask = token_mask.astype(jnp.float32)[..., None]
        text = (emb * mask).sum(1) / jnp.maximum(mask.sum(1), 1.0)
        h = nn.relu(nn.Dense(self.hidden)(jnp.concatenate([features, text], axis=-1)))
        # the text also gates the features, so "which object" can switch which evidence counts
        h = h * nn.sigmoid(nn.Dense(self.hidden)(text))
        return nn.Dense(1)(h)[:, 0]


@dataclasses.dataclass(frozen=True)
class SuccessClassifier:
    """The ensemble's shapes and how it votes. views: number of camera views it reads."""
    views: int = 2
    members: int = 4
    widths: tuple[int, ...] = (16, 32, 64)
    features: int = 64
    text_dim: int = 32
    hidden: int = 128
    aggregate: str = "min"

    def __post_init__(self):
        if self.aggregate not in ("min", "mean"):
            raise ValueError(f"aggregate must be 'min' or 'mean', got {self.aggregate!r}")

    @property
    def tower(self):
        return ViewTower(tuple(self.widths), self.features)

    @property
    def head(self):
        return SuccessHead(self.text_dim, self.hidden)

    def init(self, key, image_hw: tuple[int, int], text_len: int) -> dict:
        x = jnp.zeros((1,) + tuple(image_hw) + (3,))
        tokens, mask = jnp.zeros((1, text_len), jnp.int32), jnp.ones((1, text_len), bool)
        members = []
        for k in jax.random.split(key, self.members):
            keys = jax.random.split(k, self.views + 1)
            member = {f"tower{v}": self.tower.init(keys[v], x) for v in range(self.views)}
            member["head"] = self.head.init(keys[-1], jnp.zeros((1, self.views * self.features)), tokens, mask)
            members.append(member)
        return {"members": tuple(members), "threshold": jnp.asarray(0.5, jnp.float32)}

    def _member_logits(self, member, images, tokens, token_mask):
        # a python loop over views and members, not a vmap over params: a vmapped conv becomes a
        # grouped conv, ~10x slower on CPU (models/state_probe.py)
        x = images.astype(jnp.float32) / 127.5 - 1.0
        feats = jnp.concatenate([self.tower.apply(member[f"tower{v}"], x[:, v]) for v in range(self.views)], -1)
        return self.head.apply(member["head"], feats, tokens, token_mask)

    def logits(self, params, images, tokens, token_mask) -> jax.Array:
        """images uint8[B, V, H, W, 3], tokens int32[B, L], token_mask bool[B, L] -> f32[E, B]."""
        if images.shape[1] != self.views:
            raise ValueError(f"the classifier reads {self.views} views, got images of shape {images.shape}")
        return jnp.stack([self._member_logits(m, images, tokens, token_mask) for m in params["members"]])

    def probability(self, params, images, tokens, token_mask) -> jax.Array:
        """-> P(success) f32[B]: the members' minimum or mean (self.aggregate)."""
        p = jax.nn.sigmoid(self.logits(params, images, tokens, token_mask))
        return p.min(0) if self.aggregate == "min" else p.mean(0)

    def train(self, params, frames: dict, key, steps: int, batch_size: int, lr: float, shift: int,
              progress=None) -> tuple[dict, dict]:
        """Fits every member on class-balanced batches (half success frames) of `frames`:
        images uint8[N, V, H, W, 3], tokens int32[N, L], token_mask bool[N, L], yes bool[N]. Each
        member draws its own batches and shifts (+-shift px). -> (params, {'loss': final mean BCE,
        'seconds'}). progress(i, n): called every 100 of the n steps and after the last."""
        t0 = time.time()
        yes = np.asarray(frames["yes"], bool)
        pos, neg = np.flatnonzero(yes), np.flatnonzero(~yes)
        if not len(pos) or not len(neg):
            raise ValueError(f"the classifier needs frames of both classes, got {len(pos)} Yes / {len(neg)} No")
        tx = optax.adamw(lr, weight_decay=1e-4)
        members = params["members"]
        opt = tx.init(members)
        half = batch_size // 2
        data = {k: jnp.asarray(frames[k]) for k in ("images", "tokens", "token_mask")}   # stays on device
        target = jnp.concatenate([jnp.ones(half), jnp.zeros(batch_size - half)])

        def member_loss(member, data, idx, k):
            images = random_shift(k, data["images"][idx], shift)
            z = self._member_logits(member, images, data["tokens"][idx], data["token_mask"][idx])
            return optax.sigmoid_binary_cross_entropy(z, target).mean()

        def step(members, opt, data, idx, keys):
            losses, grads = zip(*[jax.value_and_grad(member_loss)(m, data, idx[e], keys[e])
                                  for e, m in enumerate(members)])
            upd, opt = tx.update(tuple(grads), opt, members)
            return optax.apply_updates(members, upd), opt, jnp.mean(jnp.stack(losses))

        # one jitted step per python iteration: XLA:CPU runs these convs ~30x slower inside a scan
        step = jax.jit(step, donate_argnums=(0, 1))
        rng = np.random.default_rng(int(jax.random.randint(key, (), 0, 2 ** 31 - 1)))
        loss = float("nan")
        for i in range(int(steps)):
            idx = np.concatenate([pos[rng.integers(0, len(pos), (self.members, half))],
                                  neg[rng.integers(0, len(neg), (self.members, batch_size - half))]], -1)
            keys = jax.random.split(jax.random.fold_in(key, i), self.members)
            members, opt, loss = step(members, opt, data, jnp.asarray(idx, jnp.int32), keys)
            if progress is not None and ((i + 1) % 100 == 0 or i + 1 == steps):
                progress(i + 1, int(steps))
        loss = float(loss)
        return dict(params, members=members), {"loss": loss, "seconds": time.time() - t0}

    def predict_frames(self, params, frames: dict, batch_size: int = 512) -> np.ndarray:
        """P(success) of every frame of `frames` (the train() layout) -> f32[N]."""
        prob = jax.jit(self.probability)
        n = len(frames["images"])
        return np.concatenate([np.asarray(prob(params, *(jnp.asarray(frames[k][i:i + batch_size])
                                                          for k in ("images", "tokens", "token_mask"))))
                               for i in range(0, n, batch_size)]) if n else np.zeros(0, np.float32)


class ClassifiedWorldModel:
    """A world model's dynamics with a success classifier's reward, for rl/rollout.ModelWorld.
    params: {'wm': the world model's params (None without one: reward only), 'classifier': ...}."""

    def __init__(self, world_model, classifier: SuccessClassifier):
        self.wm, self.classifier = world_model, classifier

    @property
    def tokenizer(self):
        """The world model's tokenizer (the classifier reads the same instruction tokens)."""
        return self.wm.tokenizer

    def predict(self, params, images, tokens, token_mask, actions, key):
        if self.wm is None:
            raise ValueError("no world model loaded: this reward-only model cannot predict views")
        return self.wm.predict(params["wm"], images, tokens, token_mask, actions, key)

    def exact_latent_next(self, params, images, next_images):
        return self.wm.exact_latent_next(params["wm"], images, next_images)

    def reward(self, params, images, tokens, token_mask):
        return self.classifier.probability(params["classifier"], images, tokens, token_mask)


def save(path, classifier: SuccessClassifier, params: dict) -> None:
    config = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(classifier).items()}
    members = {str(i): m for i, m in enumerate(params["members"])}   # msgpack keeps dicts, not tuples
    blob = {"config": config, "members": jax.device_get(members), "threshold": np.float32(params["threshold"])}
    Path(path).write_bytes(flax.serialization.msgpack_serialize(blob))


def load(path) -> tuple[SuccessClassifier, dict]:
    """-> (classifier, params) as save() wrote them."""
    blob = flax.serialization.msgpack_restore(Path(path).read_bytes())
    config = {k: tuple(v) if isinstance(v, list) else v for k, v in blob["config"].items()}
    members = tuple(jax.tree.map(jnp.asarray, blob["members"][str(i)]) for i in range(len(blob["members"])))
    return SuccessClassifier(**config), {"members": members, "threshold": jnp.asarray(blob["threshold"], jnp.float32)}
