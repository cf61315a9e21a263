"""The pi0.5-style VLA policy: a VLM prefix plus a flow-matching action expert, and its sampling API.

Model (Flax Linen, `VLAModel`), parameters split into three top-level subtrees so an optimizer can pick
them (optax.multi_transform):
  'vlm'           the prefix: ViT shared over views, text embedding, optional state token, and a
                  Gemma-style transformer (zero-centred RMSNorm, RoPE, grouped/multi-query attention,
                  gated GELU MLP), bidirectional over [head tokens, wrist tokens, (state), text tokens];
                  optionally a perception head (below);
  'action_expert' a narrower transformer with its own weights in every layer over the k action tokens,
                  time-conditioned by adaptive RMSNorm (pi0.5), plus the action in/out projections;
  'value_head'    an MLP on the mean-pooled, stop-gradient prefix outputs.
The two experts share depth, heads and head size, and each layer is one joint attention over the
concatenated [prefix, actions] sequence with openpi's block mask: prefix tokens see the (valid) prefix
only, action tokens see the valid prefix and every action token. Because the prefix never sees the
actions, the prefix keys/values can be computed once and cached; `VLAModel.denoise` runs the action
expert against that cache, and `VLAModel.joint` is the uncached reference that runs both experts
together (tests check they agree).

Perceived state (config.policy.perception_dim > 0, off by default): an MLP head in 'vlm' reads the
mean-pooled prefix stream entering block config.sft.grounding_layer and predicts where things are
(the simulator's grounding targets, trained by the SFT grounding loss on rendered scenes). Its
stop-gradient prediction joins the action expert's adaRMS condition, so the expert reads the estimated
positions the way a privileged-state policy reads the true ones. It is a diagnostic so far: no variant
of it beat the plain policy (docs/results.md, section 24).

Policy API (`Policy`, pure functions of an explicit params pytree, all jittable and scan-able):
  init, flow_matching_loss, sample_actions (deterministic Euler), sample_sde (Flow-SDE: actions, chain,
  log-prob, value in one pass), log_prob / log_prob_and_value (re-score a stored chain), value, and
  sample(params, obs, key, mode) returning actions in environment units.

Observation dict (batched): images uint8[B, V, H, W, 3] (view 0 head, 1 wrist), image_mask bool[B, V]
(optional), tokens int32[B, L], token_mask bool[B, L], state f32[B, S] (only if use_state).
Actions inside the model are normalized and padded to action_pad_dim; only the first action_dim dims
are real (and enter the log-probabilities).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from vlambpo_jax.models import flow_sampling as fs
from vlambpo_jax.models.layers import GatedMLP, GeluMLP, RMSNorm, apply_rope, dot_product_attention
from vlambpo_jax.models.vit import ViT

PARAM_GROUPS = ("vlm", "action_expert", "value_head")


@dataclasses.dataclass(frozen=True)
class ModelDims:
    """Static sizes of the model, read from the config (see configs/tabletop.py, section policy)."""
    image_size: int
    num_views: int
    chunk_size: int
    action_dim: int
    action_pad_dim: int
    vocab_size: int
    vit_patch: int
    vit_width: int
    vit_depth: int
    vit_heads: int
    vit_mlp: int
    width: int
    depth: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    mlp_dim: int
    expert_width: int
    expert_mlp_dim: int
    rope_theta: float
    use_state: bool
    state_dim: int
    value_hidden: tuple[int, ...]
    dtype: str = "float32"
    vit_stem: str = "patch"
    perception_dim: int = 0
    perception_layer: int = -1
    perception_hidden: tuple[int, ...] = ()

    @classmethod
    def from_config(cls, config, vocab_size: int) -> "ModelDims":
        """The sizes the config names (checked by vlambpo_jax.config_checks before any run)."""
        p = config.policy
        sft = config.get("sft") or {}
        return cls(
            image_size=config.image_size, num_views=len(config.views), chunk_size=config.chunk_size,
            action_dim=config.action_dim, action_pad_dim=p.action_pad_dim, vocab_size=vocab_size,
            vit_patch=p.vit_patch, vit_width=p.vit_width, vit_depth=p.vit_depth, vit_heads=p.vit_heads,
            vit_mlp=p.vit_mlp, width=p.width, depth=p.depth, num_heads=p.num_heads,
            num_kv_heads=p.num_kv_heads, head_dim=p.head_dim, mlp_dim=p.mlp_dim,
            expert_width=p.expert_width, expert_mlp_dim=p.expert_mlp_dim, rope_theta=float(p.rope_theta),
            use_state=bool(p.use_state), state_dim=p.state_dim, value_hidden=tuple(p.value_hidden),
            dtype=p.dtype, vit_stem=p.get("vit_stem", "patch"), perception_dim=int(p.get("perception_dim", 0)),
            perception_layer=int(sft.get("grounding_layer", -1)),
            perception_hidden=tuple(sft.get("grounding_hidden", ())))

    @property
    def compute_dtype(self):
        return jnp.bfloat16 if self.dtype == "bfloat16" else jnp.float32

    @property
    def prefix_len(self) -> int:
        """Image (+ state) tokens; text tokens come on top."""
        return self.num_views * (self.image_size // self.vit_patch) ** 2 + int(self.use_state)


def time_embedding(t: jax.Array, width: int, min_period: float = 4e-3, max_period: float = 4.0) -> jax.Array:
    """Sinusoidal embedding of flow time (openpi's periods). t float[B] -> float32[B, width]."""
    fraction = jnp.linspace(0.0, 1.0, width // 2)
    period = min_period * (max_period / min_period) ** fraction
    angle = t.astype(jnp.float32)[:, None] * (2.0 * jnp.pi / period)[None, :]
    return jnp.concatenate([jnp.sin(angle), jnp.cos(angle)], axis=-1)


class AdaRMSNorm(nn.Module):
    """pi0.5 adaptive RMSNorm: [scale, shift, gate] = zero-init Dense(cond); y = rms(x) (1 + scale) + shift.

    x [B, T, W], cond [B, C] -> (y [B, T, W], gate [B, 1, W]). At init scale = shift = gate = 0.
    """
    eps: float = 1e-6
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, cond: jax.Array) -> tuple[jax.Array, jax.Array]:
        mod = nn.Dense(3 * x.shape[-1], kernel_init=nn.initializers.zeros, dtype=self.dtype,
                       name="modulation")(cond)[:, None, :]
        scale, shift, gate = jnp.split(mod, 3, axis=-1)
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (y * (1.0 + scale) + shift).astype(x.dtype), gate.astype(x.dtype)


class Block(nn.Module):
    """One expert's weights for one layer. Attention is done by the caller (jointly over experts).

    project(x [B, T, W], positions int[B, T], cond [B, C] | None) -> (q [B,T,H,D] scaled, k, v [B,T,KV,D],
    gate); finish(x, attn [B, T, H, D], gate, cond) -> x [B, T, W] after both residual branches.
    With `adaptive`, the norms are AdaRMSNorm(cond) and residual branches are gated (x + gate * f).
    """
    dims: ModelDims
    width: int
    mlp_dim: int
    adaptive: bool

    def setup(self):
        d, dt = self.dims, self.dims.compute_dtype
        norm = (lambda: AdaRMSNorm(dtype=dt)) if self.adaptive else (lambda: RMSNorm(zero_centered=True))
        self.attn_norm = norm()
        self.mlp_norm = norm()
        self.q_proj = nn.DenseGeneral((d.num_heads, d.head_dim), use_bias=False, dtype=dt)
        self.kv_proj = nn.DenseGeneral((2, d.num_kv_heads, d.head_dim), use_bias=False, dtype=dt)
        self.o_proj = nn.DenseGeneral(self.width, axis=(-2, -1), use_bias=False, dtype=dt)
        self.mlp = GatedMLP(self.mlp_dim, dtype=dt)

    def _norm(self, norm, x, cond):
        return norm(x, cond) if self.adaptive else (norm(x), None)

    def project(self, x, positions, cond):
        h, gate = self._norm(self.attn_norm, x, cond)
        q = self.q_proj(h) * (self.dims.head_dim ** -0.5)
        kv = self.kv_proj(h)
        k, v = kv[:, :, 0], kv[:, :, 1]
        q = apply_rope(q, positions, self.dims.rope_theta)
        k = apply_rope(k, positions, self.dims.rope_theta)
        return q, k, v, gate

    def finish(self, x, attn, gate, cond):
        y = self.o_proj(attn)
        x = x + (y if gate is None else gate * y)
        h, gate2 = self._norm(self.mlp_norm, x, cond)
        y = self.mlp(h)
        return x + (y if gate2 is None else gate2 * y)


class PrefixEncoder(nn.Module):
    """The VLM: embeds the observation into prefix tokens and holds the prefix transformer's layers."""
    dims: ModelDims

    def setup(self):
        d, dt = self.dims, self.dims.compute_dtype
        self.vit = ViT(patch=d.vit_patch, width=d.vit_width, depth=d.vit_depth, heads=d.vit_heads,
                       mlp=d.vit_mlp, out_width=d.width, dtype=dt, stem=d.vit_stem)
        # Unit-scale rows after the sqrt(width) multiplier below, like the image tokens.
        self.embed = nn.Embed(d.vocab_size, d.width, embedding_init=nn.initializers.normal(d.width ** -0.5))
        if d.use_state:
            self.state_proj = nn.Dense(d.width, dtype=dt)
        self.blocks = [Block(d, d.width, d.mlp_dim, adaptive=False) for _ in range(d.depth)]
        self.final_norm = RMSNorm(zero_centered=True)
        if d.perception_dim:
            self.perception = GeluMLP(d.perception_hidden, d.perception_dim)

    def embed_prefix(self, obs: Mapping[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
        """obs -> (tokens [B, P, W], mask bool[B, P]) with P = V * patches (+1 state) + L."""
        d = self.dims
        images = obs["images"]
        b, v = images.shape[:2]
        x = images.reshape((b * v,) + images.shape[2:]).astype(jnp.float32) / 127.5 - 1.0
        img = self.vit(x)                                            # [B*V, N, W]
        n = img.shape[1]
        img = img.reshape(b, v * n, d.width)
        view_mask = obs.get("image_mask")
        view_mask = jnp.ones((b, v), bool) if view_mask is None else view_mask.astype(bool)
        img_mask = jnp.repeat(view_mask, n, axis=1)
        parts, masks = [img], [img_mask]
        if d.use_state:
            parts.append(self.state_proj(obs["state"].astype(jnp.float32))[:, None, :])
            masks.append(jnp.ones((b, 1), bool))
        txt = self.embed(obs["tokens"]) * jnp.sqrt(float(d.width))    # Gemma scales text embeddings
        parts.append(txt.astype(img.dtype))
        masks.append(obs["token_mask"].astype(bool))
        return jnp.concatenate(parts, axis=1), jnp.concatenate(masks, axis=1)


class ActionExpert(nn.Module):
    """The action expert: action/time embeddings, its own layers, adaptive final norm, output head."""
    dims: ModelDims

    def setup(self):
        d, dt = self.dims, self.dims.compute_dtype
        self.action_in = nn.Dense(d.expert_width, dtype=dt)
        self.time_in = nn.Dense(d.expert_width, dtype=dt)
        self.time_out = nn.Dense(d.expert_width, dtype=dt)
        self.blocks = [Block(d, d.expert_width, d.expert_mlp_dim, adaptive=True) for _ in range(d.depth)]
        self.final_norm = AdaRMSNorm(dtype=dt)
        self.action_out = nn.Dense(d.action_pad_dim, dtype=jnp.float32)
        if d.perception_dim:
            self.percept_in = nn.Dense(d.expert_width, dtype=dt)
            self.percept_out = nn.Dense(d.expert_width, dtype=dt)

    def embed_suffix(self, x_t: jax.Array, t: jax.Array, percept: jax.Array) -> tuple[jax.Array, jax.Array]:
        """x_t [B, k, Dp], t [B], percept [B, perception_dim] (stop-gradient here) -> (tokens [B, k, We],
        adaRMS condition [B, We])."""
        cond = time_embedding(t, self.dims.expert_width)
        cond = nn.swish(self.time_out(nn.swish(self.time_in(cond))))
        if self.dims.perception_dim:
            percept = jax.lax.stop_gradient(percept.astype(jnp.float32))
            cond = cond + self.percept_out(nn.swish(self.percept_in(percept)))
        return self.action_in(x_t), cond

    def output(self, x: jax.Array, cond: jax.Array) -> jax.Array:
        """Final tokens [B, k, We] -> velocity float32[B, k, Dp]."""
        h, _ = self.final_norm(x, cond)
        return self.action_out(h).astype(jnp.float32)


class ValueHead(nn.Module):
    """MLP (ReLU) on pooled prefix features [B, W] -> value [B]."""
    hidden: tuple[int, ...]

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i, h in enumerate(self.hidden):
            x = nn.relu(nn.Dense(h, name=f"dense_{i}")(x))
        return nn.Dense(1, name="out")(x)[:, 0]


@flax.struct.dataclass
class PrefixCache:
    """The prefix computed once per observation.

    k, v: [depth, B, P, KV, D] per-layer keys (after RoPE) and values; mask bool[B, P] valid tokens;
    out [B, P, W] final-normed prefix outputs (for the value head); percept float32[B, perception_dim]
    the perception head's prediction ([B, 0] without one).
    """
    k: jax.Array
    v: jax.Array
    mask: jax.Array
    out: jax.Array
    percept: jax.Array

    def repeat(self, n: int) -> "PrefixCache":
        """Every observation's cache n times in a row (batch b -> b n; `out` is left as it is)."""
        return PrefixCache(k=jnp.repeat(self.k, n, axis=1), v=jnp.repeat(self.v, n, axis=1),
                           mask=jnp.repeat(self.mask, n, axis=0), out=self.out,
                           percept=jnp.repeat(self.percept, n, axis=0))


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
    """x [B, P, W], mask bool[B, P] -> mean over the valid tokens float32[B, W]."""
    m = mask[..., None].astype(jnp.float32)
    return jnp.sum(x.astype(jnp.float32) * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)


def pooled_rms(hidden: jax.Array, mask: jax.Array) -> jax.Array:
    """hidden [B, P, W], mask bool[B, P] -> the mean over valid tokens, RMS-normalized, float32[B, W]
    (what the perception and grounding heads read)."""
    x = masked_mean(hidden, mask)
    return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + 1e-6)


def pooled_prefix(cache: PrefixCache) -> jax.Array:
    """Mean of the final prefix outputs over valid tokens -> float32[B, W]."""
    return masked_mean(cache.out, cache.mask)


class VLAModel(nn.Module):
    """Top module; parameters {'vlm', 'action_expert', 'value_head'}. Entry points are the methods."""
    dims: ModelDims

    def setup(self):
        self.vlm = PrefixEncoder(self.dims)
        self.action_expert = ActionExpert(self.dims)
        self.value_head = ValueHead(self.dims.value_hidden)

    def __call__(self, obs, x_t, t):
        """Used for init: touches every parameter. Returns (velocity [B, k, Dp], value [B])."""
        cache = self.encode_prefix(obs)
        return self.denoise(cache, x_t, t), self.value(cache)

    def encode_prefix(self, obs) -> PrefixCache:
        """Runs the prefix transformer alone (bidirectional over valid prefix tokens)."""
        return self._prefix(obs)[0]

    def prefix_hidden(self, obs, layer: int) -> tuple[jax.Array, jax.Array]:
        """(residual stream entering prefix block `layer` [B, P, W], mask bool[B, P]): what the action
        expert's attention at that layer reads (as keys and values); layer = depth gives the final output."""
        cache, hidden = self._prefix(obs)
        return hidden[layer], cache.mask

    def _prefix(self, obs) -> tuple[PrefixCache, list[jax.Array]]:
        x, mask = self.vlm.embed_prefix(obs)
        positions = jnp.cumsum(mask, axis=1) - 1
        attn_mask = jnp.broadcast_to(mask[:, None, :], (x.shape[0], x.shape[1], x.shape[1]))
        ks, vs, hidden = [], [], []
        for blk in self.vlm.blocks:
            hidden.append(x)
            q, k, v, _ = blk.project(x, positions, None)
            x = blk.finish(x, dot_product_attention(q, k, v, attn_mask), None, None)
            ks.append(k)
            vs.append(v)
        out = self.vlm.final_norm(x)
        hidden.append(out)
        if self.dims.perception_dim:
            percept = self.vlm.perception(pooled_rms(hidden[self.dims.perception_layer], mask))
        else:
            percept = jnp.zeros((x.shape[0], 0), jnp.float32)
        return PrefixCache(k=jnp.stack(ks), v=jnp.stack(vs), mask=mask, out=out, percept=percept), hidden

    def denoise(self, cache: PrefixCache, x_t: jax.Array, t: jax.Array) -> jax.Array:
        """Velocity of the action expert attending to the cached prefix.

        x_t [B, k, Dp] noisy actions, t float[B] -> v float32[B, k, Dp].
        """
        s, cond = self.action_expert.embed_suffix(x_t, t, cache.percept)
        b, k = s.shape[:2]
        positions = jnp.sum(cache.mask, axis=1, keepdims=True) + jnp.arange(k)[None, :]
        attn_mask = jnp.concatenate([jnp.broadcast_to(cache.mask[:, None, :], (b, k, cache.mask.shape[1])),
                                     jnp.ones((b, k, k), bool)], axis=2)
        for layer, blk in enumerate(self.action_expert.blocks):
            q, ks, vs, gate = blk.project(s, positions, cond)
            kk = jnp.concatenate([cache.k[layer].astype(ks.dtype), ks], axis=1)
            vv = jnp.concatenate([cache.v[layer].astype(vs.dtype), vs], axis=1)
            s = blk.finish(s, dot_product_attention(q, kk, vv, attn_mask), gate, cond)
        return self.action_expert.output(s, cond)

    def value(self, cache: PrefixCache) -> jax.Array:
        """Value [B] from the mean over valid prefix outputs, stop-gradient (the paper's code)."""
        return self.value_head(jax.lax.stop_gradient(pooled_prefix(cache)))

    def joint(self, obs, x_t, t) -> tuple[PrefixCache, jax.Array]:
        """Uncached reference: both experts in one transformer over [prefix, actions] with openpi's mask.

        ar = [0] * P + [1] + [0] * (k - 1), c = cumsum(ar); token i sees token j iff c_j <= c_i and j is
        valid. Positions are cumsum(valid) - 1. The perception head's prediction, which the expert reads
        from its first layer, comes from a separate prefix pass. Returns (cache with k = v = empty, v
        [B, k, Dp]).
        """
        percept = self._prefix(obs)[0].percept
        px, pmask = self.vlm.embed_prefix(obs)
        sx, cond = self.action_expert.embed_suffix(x_t, t, percept)
        b, p = pmask.shape
        k = sx.shape[1]
        valid = jnp.concatenate([pmask, jnp.ones((b, k), bool)], axis=1)
        ar = jnp.concatenate([jnp.zeros(p, jnp.int32), jnp.ones(1, jnp.int32), jnp.zeros(k - 1, jnp.int32)])
        c = jnp.cumsum(ar)
        attn_mask = (c[None, :] <= c[:, None])[None] & valid[:, None, :]
        positions = jnp.cumsum(valid, axis=1) - 1
        for pb, eb in zip(self.vlm.blocks, self.action_expert.blocks):
            qp, kp, vp, _ = pb.project(px, positions[:, :p], None)
            qe, ke, ve, gate = eb.project(sx, positions[:, p:], cond)
            attn = dot_product_attention(jnp.concatenate([qp, qe.astype(qp.dtype)], 1),
                                         jnp.concatenate([kp, ke.astype(kp.dtype)], 1),
                                         jnp.concatenate([vp, ve.astype(vp.dtype)], 1), attn_mask)
            px = pb.finish(px, attn[:, :p], None, None)
            sx = eb.finish(sx, attn[:, p:].astype(sx.dtype), gate, cond)
        empty = jnp.zeros((0,), jnp.float32)
        cache = PrefixCache(k=empty, v=empty, mask=pmask, out=self.vlm.final_norm(px), percept=percept)
        return cache, self.action_expert.output(sx, cond)


@flax.struct.dataclass
class SDESample:
    """What the Flow-SDE sampler returns (a pytree; fits lax.scan outputs).

    actions float32[B, k, action_dim] normalized actions (the chain's last point, valid dims);
    chain {'x': float32[B, K + 1, k, Dp] every point from the initial noise to the actions,
           'step': int32[B] the index of the stochastic transition x[step] -> x[step + 1], or -1 when
           every transition is stochastic (config.policy.stochastic_step='all')};
    log_prob float32[B] the stochastic transitions' Gaussian log-density over k x action_dim (summed, or
      averaged with config.policy.log_prob='mean'), summed over the stochastic transitions;
    value float32[B].
    """
    actions: jax.Array
    chain: dict
    log_prob: jax.Array
    value: jax.Array


class Policy:
    """Stateless wrapper around VLAModel: every method takes `params` ({'vlm', 'action_expert',
    'value_head'}) explicitly, so it composes with jit, grad, vmap and lax.scan.

    config: the full ConfigDict (uses chunk_size, action_dim, image_size, views and section policy).
    unnormalize: maps normalized actions [B, k, action_dim] to environment units; None = identity.
      Build it with `make_unnormalizer`, or from a checkpoint with vlambpo_jax.loading.
    vocab_size: the tokenizer's vocabulary size.
    """

    def __init__(self, config, vocab_size: int, unnormalize: Callable[[jax.Array], jax.Array] | None = None):
        self.config = config
        self.dims = ModelDims.from_config(config, vocab_size)
        self.model = VLAModel(self.dims)
        self.num_steps = int(config.policy.num_denoise_steps)
        self.noise_level = float(config.policy.noise_level)
        self.per_sample = config.policy.stochastic_step == "per_sample"
        self.all_steps = config.policy.stochastic_step == "all"
        self.mean_log_prob = config.policy.get("log_prob", "sum") == "mean"
        self.unnormalize = unnormalize or (lambda a: a)

    # ---------------------------------------------------------------- plumbing
    def _apply(self, params, *args, method):
        return self.model.apply({"params": params}, *args, method=method)

    def check_obs(self, obs: Mapping[str, Any]) -> None:
        """Raises a clear error for a malformed observation (shapes are static, so this is trace-time)."""
        d = self.dims
        for key in ("images", "tokens", "token_mask") + (("state",) if d.use_state else ()):
            if key not in obs:
                raise KeyError(f"observation is missing {key!r} (has {sorted(obs)})")
        shape = tuple(obs["images"].shape)
        if len(shape) != 5 or shape[1] != d.num_views or shape[2:] != (d.image_size, d.image_size, 3):
            raise ValueError(f"observation 'images' has shape {shape}; expected [B, {d.num_views}, "
                             f"{d.image_size}, {d.image_size}, 3] (config.views, config.image_size)")
        if obs["tokens"].shape != obs["token_mask"].shape:
            raise ValueError(f"observation 'tokens' {obs['tokens'].shape} and 'token_mask' "
                             f"{obs['token_mask'].shape} differ in shape")
        if d.use_state and obs["state"].shape[-1] != d.state_dim:
            raise ValueError(f"observation 'state' has {obs['state'].shape[-1]} dims; config.policy.state_dim "
                             f"is {d.state_dim}")

    def _pad(self, actions: jax.Array) -> jax.Array:
        extra = self.dims.action_pad_dim - actions.shape[-1]
        return jnp.pad(actions, [(0, 0)] * (actions.ndim - 1) + [(0, extra)]) if extra else actions

    def init(self, key: jax.Array, example_obs: Mapping[str, Any]) -> dict:
        """Returns params {'vlm': ..., 'action_expert': ..., 'value_head': ...} (float32)."""
        self.check_obs(example_obs)
        b = example_obs["images"].shape[0]
        x = jnp.zeros((b, self.dims.chunk_size, self.dims.action_pad_dim), jnp.float32)
        variables = jax.jit(self.model.init)(key, example_obs, x, jnp.ones((b,), jnp.float32))
        return dict(variables["params"])

    def encode_prefix(self, params, obs) -> PrefixCache:
        self.check_obs(obs)
        return self._apply(params, obs, method=VLAModel.encode_prefix)

    def denoise(self, params, cache: PrefixCache, x_t, t) -> jax.Array:
        return self._apply(params, cache, x_t, t, method=VLAModel.denoise)

    def prefix_hidden(self, params, obs, layer: int) -> tuple[jax.Array, jax.Array]:
        """VLAModel.prefix_hidden: (hidden [B, P, W] entering prefix block `layer`, mask bool[B, P])."""
        self.check_obs(obs)
        return self._apply(params, obs, layer, method=VLAModel.prefix_hidden)

    def perceive(self, params, obs) -> jax.Array:
        """The perception head's prediction float32[B, perception_dim] (with gradients; see the module
        docstring)."""
        if not self.dims.perception_dim:
            raise ValueError("Policy.perceive: this policy has no perception head (config.policy.perception_dim=0)")
        return self.encode_prefix(params, obs).percept

    # ---------------------------------------------------------------- training
    def flow_matching_loss(self, params, batch: Mapping[str, Any], key: jax.Array,
                           noise_samples: int = 1) -> tuple[jax.Array, dict]:
        """Flow-matching MSE on a batch (observation keys + actions f32[B, k, action_dim] normalized,
        action_mask bool[B, k] optional). Returns (scalar loss, metrics dict).

        x_t = t noise + (1 - t) a, target u = noise - a, t ~ Beta(1.5, 1); the squared error is averaged
        over all (padded) action dims and over the valid chunk steps. `noise_samples` (t, noise) draws per
        observation share one prefix pass: the action expert is cheap next to the prefix, and more draws
        lower the variance of the gradient that teaches the expert to read the observation. A batch
        'percept' float32[B, perception_dim] is what the expert reads in place of the perception head's
        prediction (teacher forcing with the true positions; config.sft.perception_teacher).
        """
        n = int(noise_samples)
        actions = jnp.repeat(self._pad(batch["actions"].astype(jnp.float32)), n, axis=0)   # [B n, k, Dp]
        b = actions.shape[0]
        noise_key, time_key = jax.random.split(key)
        noise = jax.random.normal(noise_key, actions.shape)
        t = fs.sample_flow_time(time_key, b)
        x_t = t[:, None, None] * noise + (1.0 - t[:, None, None]) * actions
        cache = self.encode_prefix(params, batch)
        if "percept" in batch:
            cache = cache.replace(percept=jnp.asarray(batch["percept"], jnp.float32))
        if n > 1:
            cache = cache.repeat(n)
        v = self.denoise(params, cache, x_t, t)
        err = jnp.mean((v - (noise - actions)) ** 2, axis=-1)                         # [B n, k]
        mask = batch.get("action_mask")
        mask = jnp.ones(err.shape, jnp.float32) if mask is None else jnp.repeat(
            mask.astype(jnp.float32), n, axis=0)
        loss = jnp.sum(err * mask) / jnp.maximum(jnp.sum(mask), 1.0)
        return loss, {"flow_loss": loss, "valid_action_frac": jnp.mean(mask)}

    # ---------------------------------------------------------------- sampling
    def sample_actions(self, params, obs, key: jax.Array, num_steps: int | None = None,
                       use_cache: bool = True, percept_fn: Callable | None = None,
                       noise: jax.Array | None = None) -> jax.Array:
        """Deterministic Euler ODE from t = 1 to 0 in `num_steps` steps (default config), from the
        initial noise f32[B, k, Dp] `noise` (default: drawn from `key`).

        The prefix KV cache is computed once; `use_cache=False` recomputes everything at every step
        through the joint (uncached) path, as a reference. percept_fn: replaces the perception head's
        prediction [B, perception_dim] with percept_fn(prediction) (a diagnostic: e.g. the true
        positions). Returns normalized float32[B, k, action_dim].
        """
        num_steps = num_steps or self.num_steps
        d = self.dims
        b = obs["images"].shape[0]
        x = jax.random.normal(key, (b, d.chunk_size, d.action_pad_dim)) if noise is None else noise
        dt = -1.0 / num_steps
        if use_cache:
            cache = self.encode_prefix(params, obs)
            if percept_fn is not None:
                cache = cache.replace(percept=percept_fn(cache.percept))
            velocity = lambda x, t: self.denoise(params, cache, x, t)
        else:
            if percept_fn is not None:
                raise ValueError("sample_actions: percept_fn needs the cached path (use_cache=True)")
            self.check_obs(obs)
            velocity = lambda x, t: self._apply(params, obs, x, t, method=VLAModel.joint)[1]

        def step(x, i):
            t = jnp.full((b,), 1.0 + i * dt, jnp.float32)
            return x + dt * velocity(x, t), None

        x, _ = jax.lax.scan(step, x, jnp.arange(num_steps, dtype=jnp.float32))
        return x[..., : d.action_dim]

    def sample_sde(self, params, obs, key: jax.Array, per_sample: bool | None = None) -> SDESample:
        """Flow-SDE sampling for RL: one randomly chosen stochastic step, all others Euler; or, with
        config.policy.stochastic_step='all' (DPPO's chain), every step stochastic, so the actions are
        the last Gaussian draw and the log-prob covers everything the parameters change.

        per_sample: draw the one stochastic step per sample (True) or once per call (False, the
        authors' code); default config.policy.stochastic_step. Returns SDESample (actions, chain,
        log_prob, value), all from one prefix pass.
        """
        per_sample = self.per_sample if per_sample is None else per_sample
        d, k_steps = self.dims, self.num_steps
        b = obs["images"].shape[0]
        init_key, step_key, noise_key = jax.random.split(key, 3)
        cache = self.encode_prefix(params, obs)
        value = self._apply(params, cache, method=VLAModel.value)
        ts = jnp.asarray(fs.sde_timesteps(k_steps))
        sigmas = jnp.asarray(fs.sde_sigmas(k_steps, self.noise_level))
        if self.all_steps:
            chosen = jnp.full((b,), -1, jnp.int32)
        else:
            chosen = fs.choose_stochastic_step(step_key, b, k_steps, per_sample)
        x0 = jax.random.normal(init_key, (b, d.chunk_size, d.action_pad_dim))

        def step(carry, i):
            x, logp = carry
            t = jnp.full((b,), ts[i])
            delta = jnp.full((b,), ts[i] - ts[i + 1])
            sigma = jnp.where((chosen == i) | self.all_steps, sigmas[i], 0.0)
            v = self.denoise(params, cache, x, t)
            mean, std = fs.flow_sde_moments(x, v, t, delta, sigma)
            eps = jax.random.normal(jax.random.fold_in(noise_key, i), x.shape)
            x_next = mean + std * eps
            return (x_next, logp + self._chain_log_prob(fs.gaussian_log_prob(x_next, mean, std))), x_next

        (x, logp), xs = jax.lax.scan(step, (x0, jnp.zeros((b,), jnp.float32)), jnp.arange(k_steps))
        chain = {"x": jnp.concatenate([x0[:, None], jnp.moveaxis(xs, 0, 1)], axis=1), "step": chosen}
        return SDESample(actions=x[..., : d.action_dim], chain=chain, log_prob=logp, value=value)

    def _chain_log_prob(self, elementwise: jax.Array) -> jax.Array:
        """Per-element log-densities [B, k, Dp] of a transition -> [B] over the real action dims: their
        sum (config.policy.log_prob 'sum') or mean ('mean')."""
        lp = elementwise[:, :, : self.dims.action_dim]
        return lp.mean(axis=(1, 2)) if self.mean_log_prob else lp.sum(axis=(1, 2))

    # ---------------------------------------------------------------- RL scoring
    def log_prob_and_value(self, params, obs, chain: Mapping[str, jax.Array],
                           train_vlm: bool = False) -> tuple[jax.Array, jax.Array]:
        """Re-scores a stored chain: (log_prob [B], value [B]).

        One prefix pass and one action-expert pass at each sample's stochastic step (at every step,
        batched, with stochastic_step='all'). With
        train_vlm=False (default, as the authors) the prefix cache is stop-gradient, so gradients reach
        only 'action_expert' and 'value_head'.
        """
        cache = self.encode_prefix(params, obs)
        if not train_vlm:
            cache = jax.lax.stop_gradient(cache)
        xs, step = chain["x"], chain["step"]
        b = xs.shape[0]
        ts = jnp.asarray(fs.sde_timesteps(self.num_steps))
        sigmas = jnp.asarray(fs.sde_sigmas(self.num_steps, self.noise_level))
        if xs.shape[1] != self.num_steps + 1:
            raise ValueError(f"chain has {xs.shape[1] - 1} denoising steps; config.policy.num_denoise_steps "
                             f"is {self.num_steps}")
        value = self._apply(params, cache, method=VLAModel.value)
        if self.all_steps:
            k_steps = self.num_steps
            steps = jnp.tile(jnp.arange(k_steps), b)                                  # [B K], b-major
            x_t = xs[:, :-1].reshape((b * k_steps,) + xs.shape[2:])
            x_next = xs[:, 1:].reshape((b * k_steps,) + xs.shape[2:])
            cache = cache.repeat(k_steps)
        else:
            steps = step
            rows = jnp.arange(b)
            x_t, x_next = xs[rows, step], xs[rows, step + 1]
        t, delta = ts[steps], ts[steps] - ts[steps + 1]
        v = self.denoise(params, cache, x_t, t)
        mean, std = fs.flow_sde_moments(x_t, v, t, delta, sigmas[steps])
        logp = self._chain_log_prob(fs.gaussian_log_prob(x_next, mean, std))
        return logp.reshape(b, -1).sum(axis=1), value

    def log_prob(self, params, obs, chain, train_vlm: bool = False) -> jax.Array:
        """log_prob [B] of a stored chain under `params` (see log_prob_and_value)."""
        return self.log_prob_and_value(params, obs, chain, train_vlm)[0]

    def value(self, params, obs) -> jax.Array:
        """Value estimate [B] of each observation."""
        return self._apply(params, self.encode_prefix(params, obs), method=VLAModel.value)

    # ---------------------------------------------------------------- the API used by everything else
    def sample(self, params, obs, key: jax.Array, mode: str = "eval", return_info: bool = False,
               percept_fn: Callable | None = None):
        """Actions in environment units, float32[B, k, action_dim].

        mode 'eval': deterministic Euler sampling; 'train': Flow-SDE. With return_info, also returns a
        dict with 'actions_normalized' and, in train mode, 'chain', 'log_prob', 'value'. percept_fn:
        sample_actions' (eval mode only).
        """
        if percept_fn is not None and mode != "eval":
            raise ValueError("Policy.sample: percept_fn is for mode 'eval' only")
        if mode == "eval":
            norm = self.sample_actions(params, obs, key, percept_fn=percept_fn)
            info = {"actions_normalized": norm}
        elif mode == "train":
            out = self.sample_sde(params, obs, key)
            norm = out.actions
            info = {"actions_normalized": norm, "chain": out.chain, "log_prob": out.log_prob, "value": out.value}
        else:
            raise ValueError(f"Policy.sample: mode must be 'eval' or 'train', got {mode!r}")
        actions = self.unnormalize(norm)
        return (actions, info) if return_info else actions


def make_unnormalizer(stats, mode: str = "zscore") -> Callable[[jax.Array], jax.Array]:
    """Inverse of the action normalization, from per-dim statistics (arrays of shape [action_dim]).

    stats: a mapping of arrays: mode 'zscore': a * std + mean; 'percentile': (a + 1) / 2 * (q99 - q01)
      + q01. An optional bool 'mask' entry marks the normalized dims; the others pass through (e.g.
      gripper). (Checkpoints' saved statistics: vlambpo_jax.loading.action_unnormalizer.)
    """
    get = lambda name: jnp.asarray(np.asarray(stats[name], np.float32))
    if mode == "zscore":
        lo, scale = get("mean"), get("std")
        fn = lambda a: a * scale + lo
    elif mode == "percentile":
        lo, hi = get("q01"), get("q99")
        fn = lambda a: (a + 1.0) * 0.5 * (hi - lo) + lo
    else:
        raise ValueError(f"unknown action normalization mode {mode!r}; expected 'zscore' or 'percentile'")
    if "mask" in stats:
        mask = jnp.asarray(np.asarray(stats["mask"], bool))
        return lambda a: jnp.where(mask, fn(a), a)
    return fn


def make_env_policy_fn(policy: Policy, tokenizer, instructions, max_text_len: int, mode: str = "eval",
                       normalize_state: Callable[[jax.Array], jax.Array] | None = None,
                       percept_fn: Callable[[jax.Array, jax.Array], jax.Array] | None = None):
    """Adapter to the simulator's per-episode interface: (params, obs, key) -> actions f32[k, action_dim].

    obs is one unbatched env observation {images uint8[V, H, W, 3], instruction_id int32[], state f32[S]}
    (vmapped by the caller). Every instruction string is tokenized once here into a constant table.
    normalize_state: raw state -> normalized (needed only when config.policy.use_state).
    percept_fn(prediction [1, perception_dim], raw state [1, S]) -> what the expert reads instead of the
    perception head's prediction (Policy.sample_actions; a diagnostic, e.g. the true positions).
    """
    ids, mask = tokenizer.encode_batch(list(instructions), max_text_len)
    ids, mask = jnp.asarray(ids), jnp.asarray(mask)

    def policy_fn(params, obs, key):
        images = obs["images"][None]
        batch = dict(images=images, image_mask=jnp.ones(images.shape[:2], bool),
                     tokens=ids[obs["instruction_id"]][None], token_mask=mask[obs["instruction_id"]][None])
        if policy.dims.use_state:
            state = obs["state"][None]
            batch["state"] = normalize_state(state) if normalize_state is not None else state
        replace = None if percept_fn is None else (lambda p: percept_fn(p, obs["state"][None]))
        return policy.sample(params, batch, key, mode=mode, percept_fn=replace)[0]

    return policy_fn


def param_labels(params: Mapping[str, Any]) -> dict:
    """optax.multi_transform labels: every leaf labelled by its top-level group ('vlm', ...)."""
    return {group: jax.tree.map(lambda _: group, sub) for group, sub in params.items()}


def count_params(tree) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))
