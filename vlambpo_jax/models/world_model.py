"""UMM-World: the pixel-level world model (dynamics with interleaved view decoding + Yes/No reward).

Pieces (BAGEL layout, see sequence_layout.py for the masks):
- VAE (vae.py, frozen here): frames -> normalized latents [h, w, C]; 2x2 latent patches are the
  generation tokens: token = vae2llm(patch) + TimeEmb(t) + PosEmb(row, col).
- ViT (vit.py): frames -> understanding tokens.
- MoT backbone (umm.py): one sequence, two experts.
- Dynamics: from the instruction, both current views (ViT + clean VAE tokens) and the action chunk as
  text tokens (per-dim min-max bins, action_tokens.py) - or a continuous embedding - predict both views
  k steps ahead by rectified flow. `view_decoding` picks the layout (interleaved = IVD; with
  `ivd_vit_copy` the wrist reads the next head's clean VAE tokens and the ViT tokens of its image -
  the real one in training, the decoded prediction when sampling, as BAGEL re-reads generated images).
  CFG: 3 branches, optional BAGEL renorm (`cfg_renorm_type`, flow_sampling.cfg_velocity).
  Residual prediction (`predict_delta`): the flow generates the change of each view's latent,
  (next - current) / delta_scale[view], and the sampler adds the current latent back, so "nothing
  moves" is the zero target; `delta_pixels` also decodes the change onto the current frame's pixels.
- Reward: "Is the task '<instruction>' completed?" about the views of `reward_views` (the paper: the
  head view; at 32 px the wrist view shows far more of a finished grasp), answered by the Yes / No
  logits.

Public functions (pure in `params`; jit / vmap / scan friendly; shapes static):
  wm = WorldModel(config)
  params = wm.init(key, action_min, action_max)
  wm.predict(params, images uint8[B,V,H,W,3], tokens int32[B,L], token_mask bool[B,L],
             actions f32[B,k,7], key) -> next_images uint8[B,V,H,W,3]
  wm.reward(params, images uint8[B,V,H,W,3], tokens, token_mask) -> p_success f32[B]
  wm.loss(params, batch, key) -> (loss, metrics)
params = {'net': WMNet params, 'vae': VAE params, 'stats': {latent_shift, latent_scale [C],
action_min, action_max [7]}}; only 'net' is trained here ('vae' in its own phase, 'stats' are data).
"""
from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vlambpo_jax.data.tokenizer import load_wm_tokenizer
from vlambpo_jax.models import action_tokens as at
from vlambpo_jax.models import flow_sampling as fs
from vlambpo_jax.models import sequence_layout as sl
from vlambpo_jax.models.flux_vae import FluxVAE, FluxVAEConfig
from vlambpo_jax.models.umm import MoTBackbone, UMMConfig, concat_cache
from vlambpo_jax.models.vae import VAE, to_float, to_uint8
from vlambpo_jax.models.vit import ViT


@dataclasses.dataclass(frozen=True)
class WMSpec:
    """Static (hashable) shape and behaviour of the world model, read from config (see configs/)."""
    image_size: int
    chunk: int
    action_dim: int
    vae_widths: tuple
    latent_channels: int
    latent_patch: int
    umm: UMMConfig
    vit_patch: int
    vit_width: int
    vit_depth: int
    vit_heads: int
    vit_mlp: int
    action_encoding: str
    view_decoding: str
    num_sample_steps: int
    timestep_shift: float
    cfg_text_scale: float
    cfg_image_scale: float
    cfg_interval: tuple
    drop_text: float
    drop_vit: float
    drop_vae: float
    loss_image: float
    loss_text: float
    reward_balance: bool
    num_views: int = 2
    ivd_vit_copy: bool = False
    ivd_wrist_sees_head: bool = False
    cfg_renorm_type: str = "none"
    cfg_renorm_min: float = 0.0
    predict_delta: bool = False
    delta_scale: tuple = (1.0, 1.0)
    delta_pixels: bool = False
    motion_weight: tuple = (0.0, 0.0)   # per view (head, wrist)
    sample_temperature: float = 1.0
    zero_noise_fraction: float = 0.0
    reward_views: tuple = (0,)
    reward_on_predictions: float = 0.0
    reward_labels: str = "paper"
    bagel_embeddings: bool = False
    flux: FluxVAEConfig | None = None      # the FLUX VAE (BAGEL's) instead of the project's VAE
    vit_connector: str = "linear"

    @property
    def latent_hw(self) -> int:
        down = self.flux.downsample if self.flux else 2 ** len(self.vae_widths)
        return self.image_size // down

    @property
    def grid(self) -> int:
        return self.latent_hw // self.latent_patch

    @property
    def latent_tokens(self) -> int:
        return self.grid ** 2

    @property
    def patch_dim(self) -> int:
        return self.latent_patch ** 2 * self.latent_channels

    @property
    def vit_grid(self) -> int:
        return self.image_size // self.vit_patch

    @property
    def vit_tokens(self) -> int:
        return self.vit_grid ** 2

    @property
    def action_tokens(self) -> int:
        return self.chunk * (self.action_dim if self.action_encoding == "bins" else 1)

    @property
    def action_adaln(self) -> bool:
        return self.umm.gen_condition

    @property
    def cfg_enabled(self) -> bool:
        return self.cfg_text_scale != 1.0 or self.cfg_image_scale != 1.0


REWARD_VIEWS = {"head": (0,), "wrist": (1,), "both": (0, 1)}
REWARD_LABELS = ("paper", "outcome")   # WorldModel.reward_labels' modes


def spec_from_config(config) -> WMSpec:
    """config: the full ConfigDict (image_size, chunk_size, action_dim and the `wm` section), checked by
    vlambpo_jax.config_checks; keys missing from an older saved config take their defaults."""
    w = config.wm
    renorm = w.get("cfg_renorm_type", "none")
    reward_views = REWARD_VIEWS[w.get("reward_views", "head")]
    delta_scale = tuple(float(x) for x in w.get("delta_scale", (1.0, 1.0)))
    motion_weight = w.get("motion_weight", 0.0)   # one number for every view in configs saved before 2026-12-07
    motion_weight = ((float(motion_weight),) * 2 if isinstance(motion_weight, (int, float))
                     else tuple(float(x) for x in motion_weight))
    u = w.umm
    flux = None
    if w.vae.get("kind", "project") == "flux":
        f = w.vae.flux
        flux = FluxVAEConfig(ch=f.ch, ch_mult=tuple(f.ch_mult), num_res_blocks=f.num_res_blocks,
                             z_channels=f.z_channels, groups=f.groups, scale=f.scale, shift=f.shift)
    umm = UMMConfig(vocab_size=int(u.get("vocab_size", 0)) or at.VOCAB_SIZE, width=u.width, depth=u.depth,
                    heads=u.heads, kv_heads=u.kv_heads, head_dim=u.head_dim, mlp=u.mlp, rope_theta=u.rope_theta,
                    qk_norm=u.qk_norm, dtype=w.dtype, gen_condition=bool(w.get("action_adaln", False)),
                    remat=bool(u.get("remat", False)))
    return WMSpec(
        image_size=config.image_size, chunk=config.chunk_size, action_dim=config.action_dim,
        vae_widths=tuple(w.vae.widths), latent_channels=flux.z_channels if flux else w.vae.latent_channels,
        latent_patch=w.latent_patch, umm=umm, vit_patch=w.vit.patch, vit_width=w.vit.width,
        vit_depth=w.vit.depth, vit_heads=w.vit.heads, vit_mlp=w.vit.mlp,
        action_encoding=w.action_encoding, view_decoding=w.view_decoding,
        num_sample_steps=w.num_sample_steps, timestep_shift=w.timestep_shift,
        cfg_text_scale=w.cfg_text_scale, cfg_image_scale=w.cfg_image_scale,
        cfg_interval=tuple(w.cfg_interval), drop_text=w.dropout.text, drop_vit=w.dropout.vit,
        drop_vae=w.dropout.vae, loss_image=w.loss_image, loss_text=w.loss_text,
        reward_balance=w.reward_balance,
        # absent in configs saved before these options existed: their checkpoints were trained with
        # the VAE-only copy of the predicted head and sampled without renorm
        ivd_vit_copy=bool(w.get("ivd_vit_copy", False)),
        ivd_wrist_sees_head=bool(w.get("ivd_wrist_sees_head", False)), cfg_renorm_type=renorm,
        cfg_renorm_min=float(w.get("cfg_renorm_min", 0.0)),
        # absent in configs saved before residual prediction existed: those models predict the next
        # latent itself
        predict_delta=bool(w.get("predict_delta", False)), delta_scale=delta_scale,
        delta_pixels=bool(w.get("delta_pixels", False)), motion_weight=motion_weight,
        sample_temperature=float(w.get("sample_temperature", 1.0)), reward_views=reward_views,
        zero_noise_fraction=float(w.get("zero_noise_fraction", 0.0)),
        reward_on_predictions=float(w.get("reward_on_predictions", 0.0)),
        reward_labels=str(w.get("reward_labels", "paper")),
        bagel_embeddings=bool(w.get("bagel_embeddings", False)), flux=flux,
        vit_connector=str(w.vit.get("connector", "linear")))


def sincos_2d(grid: int, width: int, columns_first: bool = False) -> np.ndarray:
    """Fixed 2-D sin-cos position table float32[grid * grid, width] (row-major patches): one half of the
    channels encodes the row, the other the column (columns_first: the column half first, as MAE, DiT
    and BAGEL lay it out), each half [sin, cos] over geometric frequencies."""
    def one_d(pos, dim):
        omega = 1.0 / 10_000 ** (np.arange(dim // 2, dtype=np.float64) / (dim // 2))
        out = pos[:, None] * omega[None]
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)
    rows, cols = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
    first, second = (cols, rows) if columns_first else (rows, cols)
    half = width // 2
    emb = np.concatenate([one_d(first.reshape(-1).astype(np.float64), half),
                          one_d(second.reshape(-1).astype(np.float64), width - half)], axis=1)
    return emb.astype(np.float32)


def timestep_embedding(t, dim: int = 256, scale: float = 1000.0):
    """DiT sinusoid [cos, sin] of scale * t, t in [0, 1] (1000: DiT's integer steps; BAGEL: 1): [N] -> [N, dim]."""
    half = dim // 2
    freqs = jnp.exp(-np.log(10_000.0) * jnp.arange(half, dtype=jnp.float32) / half)
    args = (scale * t.astype(jnp.float32))[:, None] * freqs[None]
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def motion_weighted_mean(err, change, weight: float):
    """The flow loss per latent token err f32[B, n] averaged with token weights 1 + weight * c / mean(c),
    c = the token's mean square latent change f32[B, n, pd] (no gradient; the mean over the batch):
    weight 0 is the plain mean; larger puts the loss where the view moves (wm.motion_weight)."""
    if weight == 0:
        return jnp.mean(err)
    c = jax.lax.stop_gradient(jnp.mean(change ** 2, axis=-1))
    w = 1.0 + weight * c / jnp.maximum(jnp.mean(c), 1e-12)
    return jnp.sum(w * err) / jnp.sum(w)


def shift_timesteps(t, shift: float):
    """t' = s t / (1 + (s - 1) t): spends more of training / sampling near t = 1 (noise)."""
    return shift * t / (1.0 + (shift - 1.0) * t)


class WMNet(nn.Module):
    """All trainable world-model weights except the VAE: backbone, ViT, latent adapters, time MLP."""
    spec: WMSpec

    def setup(self):
        s = self.spec
        width = s.umm.width
        self.backbone = MoTBackbone(s.umm)
        self.vit = ViT(patch=s.vit_patch, width=s.vit_width, depth=s.vit_depth, heads=s.vit_heads,
                       mlp=s.vit_mlp, out_width=width, connector=s.vit_connector)
        self.vae2llm = nn.Dense(width)
        # llm2vae starts at zero (BAGEL): the first predicted velocity is zero.
        self.llm2vae = nn.Dense(s.patch_dim, kernel_init=nn.initializers.zeros)
        self.time_in = nn.Dense(width)
        self.time_out = nn.Dense(width)
        if s.action_encoding == "continuous":
            self.action_in = nn.Dense(width)
            self.action_pos = self.param("action_pos", nn.initializers.normal(0.02), (s.chunk, width))
        if s.umm.gen_condition:
            self.cond_in = nn.Dense(width)
            self.cond_out = nn.Dense(width)
        self.latent_pos = jnp.asarray(sincos_2d(s.grid, width, columns_first=s.bagel_embeddings))
        # BAGEL adds a fixed table to the connector's output too (its vit_pos_embed)
        self.vit_pos = jnp.asarray(sincos_2d(s.vit_grid, width, columns_first=True)) if s.bagel_embeddings else 0.0

    def embed_ids(self, ids):
        """int[N, T] -> [N, T, W]."""
        return self.backbone.embed(ids)

    def vit_tokens(self, images):
        """uint8[N, H, W, 3] -> [N, n_vit, W]."""
        return self.vit(to_float(images)) + self.vit_pos

    def latent_tokens(self, x, t):
        """x [N, n, patch_dim] latent patches, t [N] in [0, 1] -> [N, n, W]."""
        scale = 1.0 if self.spec.bagel_embeddings else 1000.0
        temb = self.time_out(nn.silu(self.time_in(timestep_embedding(t, scale=scale))))
        return self.vae2llm(x) + temb[:, None, :] + self.latent_pos[None]

    def continuous_actions(self, a):
        """a [N, k, D] normalized to [-1, 1] -> [N, k, W]."""
        return self.action_in(a) + self.action_pos[None]

    def action_condition(self, a):
        """a [N, k, D] normalized to [-1, 1] -> [N, W]: the vector a modulated generation expert reads
        (umm.gen_condition)."""
        return self.cond_out(nn.silu(self.cond_in(a.reshape(a.shape[0], -1))))

    def run(self, x, experts, positions, mask, cache=None, cond=None):
        return self.backbone(x, experts, positions, mask, cache, cond)

    def velocity(self, h):
        """[N, n, W] -> [N, n, patch_dim]."""
        return self.llm2vae(h).astype(jnp.float32)

    def logits(self, h):
        return self.backbone.logits(h)

    def init_all(self, images, ids):
        """Touches every parameter (for init). images uint8[N, H, W, 3], ids int[N, T]."""
        s = self.spec
        n = images.shape[0]
        tok = jnp.concatenate([self.embed_ids(ids), self.vit_tokens(images),
                               self.latent_tokens(jnp.zeros((n, s.latent_tokens, s.patch_dim)),
                                                  jnp.zeros((n,)))], axis=1)
        if s.action_encoding == "continuous":
            tok = jnp.concatenate([tok, self.continuous_actions(
                jnp.zeros((n, s.chunk, s.action_dim)))], axis=1)
        cond = self.action_condition(jnp.zeros((n, s.chunk, s.action_dim))) if s.umm.gen_condition else None
        t = tok.shape[1]
        experts = np.zeros(t, np.int32)
        experts[ids.shape[1] + s.vit_tokens:ids.shape[1] + s.vit_tokens + s.latent_tokens] = 1
        h, _ = self.run(tok, experts, jnp.arange(t)[None], jnp.ones((1, t, t), bool), cond=cond)
        return self.velocity(h), self.logits(h)


def _tile(x, n):
    return x if n == 1 else jnp.concatenate([x] * n, axis=0)


class WorldModel:
    """The world model's pure functions, closed over a static WMSpec (see module docstring)."""

    def __init__(self, config):
        self.spec = spec_from_config(config)
        self.net = WMNet(self.spec)
        s = self.spec
        self.vae = FluxVAE(s.flux) if s.flux else VAE(s.vae_widths, s.latent_channels)
        self.tokenizer = load_wm_tokenizer(config.wm)  # ByteTokenizer | HFTokenizer: the world model's text
        self.vocab = at.vocabulary(self.tokenizer)
        if self.vocab.size > s.umm.vocab_size:
            raise ValueError(f"config.wm.umm.vocab_size={s.umm.vocab_size} is smaller than the world model's "
                             f"vocabulary ({self.vocab.size} ids)")
        if s.action_encoding == "bins" and not self.vocab.action_bins:
            raise ValueError("config.wm.action_encoding='bins' needs the byte vocabulary (config.wm.tokenizer='')")
        self.prefix_ids, self.suffix_ids = self.vocab.prefix_ids, self.vocab.suffix_ids

    # ------------------------------------------------------------------ params
    def init(self, key, action_min=None, action_max=None):
        s = self.spec
        k_net, k_vae = jax.random.split(key)
        img = jnp.zeros((1, s.image_size, s.image_size, 3), jnp.uint8)
        net = self.net.init(k_net, img, jnp.zeros((1, 4), jnp.int32), method=WMNet.init_all)
        vae = self.vae.init(k_vae, to_float(img)) if s.flux else self.vae.init(k_vae, to_float(img), k_vae)
        d = s.action_dim
        # FLUX's latents are scale * (mean - shift), fixed with its weights; the project VAE's are measured
        shift, scale = (s.flux.shift, 1.0 / s.flux.scale) if s.flux else (0.0, 1.0)
        stats = {
            "latent_shift": jnp.full((s.latent_channels,), shift, jnp.float32),
            "latent_scale": jnp.full((s.latent_channels,), scale, jnp.float32),
            "action_min": jnp.asarray(-np.ones(d) if action_min is None else action_min, jnp.float32),
            "action_max": jnp.asarray(np.ones(d) if action_max is None else action_max, jnp.float32),
        }
        return {"net": net, "vae": vae, "stats": stats}

    # ------------------------------------------------------------------ latents
    def encode_latents(self, params, images):
        """uint8[N, H, W, 3] -> normalized latent patches float32[N, n, patch_dim] (VAE mean)."""
        s = self.spec
        mean, _ = self.vae.apply(params["vae"], to_float(images), method=type(self.vae).encode)
        z = (mean - params["stats"]["latent_shift"]) / params["stats"]["latent_scale"]
        n, g, p, c = z.shape[0], s.grid, s.latent_patch, s.latent_channels
        z = z.reshape(n, g, p, g, p, c).transpose(0, 1, 3, 2, 4, 5)
        return z.reshape(n, g * g, p * p * c)

    def decode_float(self, params, x):
        """float[N, n, patch_dim] -> float32[N, H, W, 3] (about [-1, 1])."""
        s = self.spec
        n, g, p, c = x.shape[0], s.grid, s.latent_patch, s.latent_channels
        z = x.reshape(n, g, g, p, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, g * p, g * p, c)
        z = z * params["stats"]["latent_scale"] + params["stats"]["latent_shift"]
        return self.vae.apply(params["vae"], z, method=type(self.vae).decode)

    def decode_latents(self, params, x):
        """float[N, n, patch_dim] -> uint8[N, H, W, 3]."""
        return to_uint8(self.decode_float(params, x))

    def decode_next(self, params, x, current, images):
        """Predicted next latents x float[N, n, pd] -> uint8[N, H, W, 3]. With predict_delta and
        delta_pixels the decoded latent change is added to the current frame (images uint8[N, H, W, 3],
        latents current [N, n, pd]): images + D(x) - D(current), so a zero change returns the current
        frame exactly instead of its VAE reconstruction; otherwise D(x)."""
        if not (self.spec.predict_delta and self.spec.delta_pixels):
            return self.decode_latents(params, x)
        both = self.decode_float(params, jnp.concatenate([x, current], axis=0))
        nxt, cur = jnp.split(both, 2, axis=0)
        return to_uint8(to_float(images) + nxt - cur)

    def exact_latent_next(self, params, images, next_images):
        """The views this model would show if its latent prediction were exact: next_images' VAE
        latents decoded as `predict` decodes its own (decode_next from images). images, next_images
        uint8[B, V, H, W, 3] -> uint8[B, V, H, W, 3]; the ceiling its VAE and decoding put on it."""
        flat = lambda x: x.reshape((-1,) + x.shape[2:])  # noqa: E731
        cur, nxt = flat(images), flat(next_images)
        out = self.decode_next(params, self.encode_latents(params, nxt), self.encode_latents(params, cur), cur)
        return out.reshape(images.shape)

    def delta_scales(self, nviews: int):
        """float32[V]: the per-view factor the latent change is divided by (1 where predict_delta is off)."""
        s = self.spec
        return jnp.asarray(s.delta_scale[:nviews] if s.predict_delta else (1.0,) * nviews, jnp.float32)

    # ------------------------------------------------------------------ sequences
    @functools.lru_cache(maxsize=None)
    def dynamics_layout(self, text_len: int) -> sl.Layout:
        s = self.spec
        return sl.dynamics_layout(s.view_decoding, text_len, s.vit_tokens, s.latent_tokens,
                                  s.action_tokens, vit_copy=s.ivd_vit_copy,
                                  wrist_sees_head=s.ivd_wrist_sees_head)

    @functools.lru_cache(maxsize=None)
    def reward_layout(self, text_len: int) -> sl.Layout:
        return sl.reward_layout(self.spec.vit_tokens, len(self.prefix_ids), text_len,
                                len(self.suffix_ids), self.spec.reward_views)

    @staticmethod
    def _key_valid(layout, token_mask):
        """bool[B, T]: padding text tokens are invisible as keys."""
        b = token_mask.shape[0]
        parts = [token_mask.astype(bool) if s.source == ("text",) else jnp.ones((b, s.length), bool)
                 for s in layout.segments]
        return jnp.concatenate(parts, axis=1)

    @staticmethod
    def _mask(layout, rows, cols, key_valid, drops):
        """Static layout mask restricted to rows x cols, with padding and per-sample dropped
        categories (drops: {category: bool[B]}) hidden from other segments -> bool[B, r, c]."""
        static = layout.attention_mask()[np.ix_(rows, cols)]
        seg = layout.segment_ids()
        same = jnp.asarray(seg[rows][:, None] == seg[cols][None, :])
        cats = layout.drop_categories()
        hidden = jnp.zeros((key_valid.shape[0], len(cols)), bool)
        for cat, flag in drops.items():
            hidden = hidden | (flag[:, None] & jnp.asarray(cats[cat][cols])[None])
        valid = key_valid[:, cols]
        return jnp.asarray(static)[None] & valid[:, None, :] & (~hidden[:, None, :] | same[None])

    def _segments(self, layout, names, src):
        return jnp.concatenate([src[layout.segment(n).source] for n in names], axis=1)

    def _action_embedding(self, params, actions=None, action_bins=None):
        """-> [B, n_action_tokens, W] from env-unit actions f32[B,k,D] or bins int[B,k,D]."""
        st = params["stats"]
        if self.spec.action_encoding == "bins":
            if action_bins is None:
                action_bins = at.actions_to_bins(actions, st["action_min"], st["action_max"])
            return self.net.apply(params["net"], at.bins_to_token_ids(action_bins),
                                  method=WMNet.embed_ids)
        return self.net.apply(params["net"], self._normalized_actions(params, actions, action_bins),
                              method=WMNet.continuous_actions)

    @staticmethod
    def _normalized_actions(params, actions=None, action_bins=None):
        """Env-unit actions f32[B,k,D] (or bins int[B,k,D]) -> min-max normalized to [-1, 1]."""
        st = params["stats"]
        if actions is None:
            actions = at.bins_to_actions(action_bins, st["action_min"], st["action_max"])
        return at.normalize_actions(actions, st["action_min"], st["action_max"])

    def _condition(self, params, actions=None, action_bins=None, dropped=None):
        """The generation expert's condition [B, W] from the actions (None without umm.gen_condition);
        rows where dropped bool[B] (the text/action CFG branch) read the zero action's condition."""
        if not self.spec.umm.gen_condition:
            return None
        a = self._normalized_actions(params, actions, action_bins)
        if dropped is not None:
            a = jnp.where(dropped[:, None, None], 0.0, a)
        return self.net.apply(params["net"], a, method=WMNet.action_condition)

    def _context(self, params, images, tokens, actions=None, action_bins=None):
        """Embeddings of the known inputs {source: [B, n, W]} and the current latents [B, V, n, pd]."""
        s, net = self.spec, params["net"]
        b, v = images.shape[:2]
        flat = images.reshape((b * v,) + images.shape[2:])
        vit = self.net.apply(net, flat, method=WMNet.vit_tokens).reshape(b, v, s.vit_tokens, -1)
        lat = jax.lax.stop_gradient(self.encode_latents(params, flat))
        vae = self.net.apply(net, lat, jnp.zeros((b * v,)), method=WMNet.latent_tokens)
        vae = vae.reshape(b, v, s.latent_tokens, -1)
        src = {("text",): self.net.apply(net, tokens, method=WMNet.embed_ids),
               ("action",): self._action_embedding(params, actions, action_bins)}
        for i in range(v):
            src[("vit", i)] = vit[:, i]
            src[("vae", i)] = vae[:, i]
        return src, lat.reshape(b, v, s.latent_tokens, s.patch_dim)

    # ------------------------------------------------------------------ dynamics sampling
    def predict(self, params, images, tokens, token_mask, actions, key, use_cache: bool = True,
                return_latents: bool = False, given_next=None):
        """One chunk transition: images uint8[B, V, H, W, 3], tokens int32[B, L], token_mask
        bool[B, L], actions f32[B, k, 7] (env units), key -> next images uint8[B, V, H, W, 3].

        With predict_delta the flow generates the scaled latent change (next - current) / delta_scale
        of each view and the current latent is added back (decode_next for the pixels).
        Follows the layout's generation plan: prefill the context into a KV cache once, generate the
        next head view by `num_sample_steps` Euler steps attending to the cache, append its clean copies
        to the cache (VAE tokens of the predicted latent and, with ivd_vit_copy, ViT tokens of its
        decoded image, as BAGEL re-reads a generated image), generate the next wrist view (IVD); CFG
        branches are extra batch rows with their own cache. use_cache=False recomputes the whole
        prefix at every step (reference for tests).
        given_next {view index: uint8[B, H, W, 3]}: teacher forcing - a generation step whose views
        are all given takes their real next frames instead of sampling (with IVD, {0: real next head}
        measures the wrist decoder apart from the head's prediction error; metrics: make_evaluator).
        """
        s = self.spec
        b = images.shape[0]
        layout = self.dynamics_layout(tokens.shape[1])
        experts, pos = layout.expert_ids(), layout.rope_ids()
        src, current = self._context(params, images, tokens, actions=actions)
        scales = self.delta_scales(images.shape[1])
        nb = 3 if s.cfg_enabled else 1
        key_valid = _tile(self._key_valid(layout, token_mask), nb)
        branch = np.repeat(np.arange(nb), b)
        drops = {"text": jnp.asarray(branch == 1), "vit": jnp.asarray(branch == 2),
                 "vae": jnp.asarray(branch == 2)}
        cond = self._condition(params, _tile(actions, nb), dropped=drops["text"])
        cache, known, cols = None, None, np.zeros((0,), np.int32)
        out, decoded = {}, {}
        vit_next = {sg.source[1] for sg in layout.segments if sg.source[:1] == ("vit_next",)}
        for i, (op, names) in enumerate(layout.generation_plan()):
            rows = layout.indices(names)
            if op == "prefill":
                emb = _tile(self._segments(layout, names, src), nb)
                if use_cache:
                    mask = self._mask(layout, rows, np.concatenate([cols, rows]), key_valid, drops)
                    _, kv = self.net.apply(params["net"], emb, experts[rows], pos[rows][None], mask,
                                           cache, cond, method=WMNet.run)
                    cache = concat_cache(cache, kv)
                else:
                    known = emb if known is None else jnp.concatenate([known, emb], axis=1)
                cols = np.concatenate([cols, rows])
                continue
            views = [layout.segment(n).source[1] for n in names]
            if given_next is not None and all(v in given_next for v in views):
                for v in views:
                    out[v], decoded[v] = self.encode_latents(params, given_next[v]), given_next[v]
            else:
                z = self._denoise(params, layout, rows, cols, len(views), cache, known, key_valid, drops,
                                  jax.random.fold_in(key, i), b, nb, use_cache, cond)
                for j, v in enumerate(views):
                    out[v] = z[:, j] * scales[v] + current[:, v] if s.predict_delta else z[:, j]
            for v in views:
                src[("clean_next", v)] = self.net.apply(params["net"], out[v], jnp.zeros((b,)),
                                                        method=WMNet.latent_tokens)
                if v in vit_next:
                    if v not in decoded:
                        decoded[v] = self.decode_next(params, out[v], current[:, v], images[:, v])
                    src[("vit_next", v)] = self.net.apply(params["net"], decoded[v],
                                                          method=WMNet.vit_tokens)
        lat = jnp.stack([out[v] for v in sorted(out)], axis=1)  # [B, V, n, pd]
        if return_latents:
            return lat
        todo = [v for v in sorted(out) if v not in decoded]
        if todo:
            flat = lambda x: x.reshape((-1,) + x.shape[2:])  # noqa: E731  [B, V', ...] -> [B V', ...]
            imgs = self.decode_next(params, flat(jnp.stack([out[v] for v in todo], 1)),
                                    flat(current[:, todo]), flat(images[:, todo]))
            imgs = imgs.reshape((b, len(todo)) + (s.image_size, s.image_size, 3))
            decoded.update({v: imgs[:, i] for i, v in enumerate(todo)})
        return jnp.stack([decoded[v] for v in sorted(out)], axis=1)

    def _denoise(self, params, layout, rows, cols, nviews, cache, known, key_valid, drops, key, b,
                 nb, use_cache, cond=None):
        """Euler rectified-flow sampling of `rows` (nviews noise segments) -> [B, nviews, n, pd];
        cond [nb B, W] or None: the generation expert's condition per row."""
        s = self.spec
        n, pd = s.latent_tokens, s.patch_dim
        experts, pos = layout.expert_ids(), layout.rope_ids()
        all_cols = np.concatenate([cols, rows])
        if use_cache:
            mask = self._mask(layout, rows, all_cols, key_valid, drops)
        else:
            mask = self._mask(layout, all_cols, all_cols, key_valid, drops)
        ts = shift_timesteps(jnp.linspace(1.0, 0.0, s.num_sample_steps + 1), s.timestep_shift)

        def velocity(x, t, nrows):
            xt = x.reshape(b * nviews, n, pd)
            emb = self.net.apply(params["net"], xt, jnp.full((b * nviews,), t), method=WMNet.latent_tokens)
            emb = _tile(emb.reshape(b, nviews, n, -1).reshape(b, nviews * n, -1), nrows // b)
            if use_cache:
                c = jax.tree_util.tree_map(lambda a: a[:nrows], cache)
                h, _ = self.net.apply(params["net"], emb, experts[rows], pos[rows][None], mask[:nrows],
                                      c, None if cond is None else cond[:nrows], method=WMNet.run)
            else:
                full = jnp.concatenate([known[:nrows], emb], axis=1)
                h, _ = self.net.apply(params["net"], full, experts[all_cols], pos[all_cols][None],
                                      mask[:nrows], None, None if cond is None else cond[:nrows],
                                      method=WMNet.run)
                h = h[:, -len(rows):]
            return self.net.apply(params["net"], h, method=WMNet.velocity).reshape(nrows, nviews, n, pd)

        lo, hi = s.cfg_interval

        def guided_velocity(x, t):
            if nb == 1:
                return velocity(x, t, b)

            def guided():
                v_full, v_no_text, v_no_img = jnp.split(velocity(x, t, 3 * b), 3, axis=0)
                return fs.cfg_velocity(v_full, v_no_text, v_no_img, s.cfg_text_scale,
                                       s.cfg_image_scale, s.cfg_renorm_type, s.cfg_renorm_min)
            return jax.lax.cond((t > lo) & (t <= hi), guided, lambda: velocity(x, t, b))

        noise = s.sample_temperature * jax.random.normal(key, (b, nviews, n, pd))
        return fs.euler_sample(guided_velocity, noise, ts)

    # ------------------------------------------------------------------ reward
    def reward_logits(self, params, images, tokens, token_mask):
        """images uint8[B, V, H, W, 3] (all views; the question reads those of config reward_views)
        or uint8[B, H, W, 3] (just the one view it reads) -> float32[B, vocab]: next-token logits
        after the question."""
        views = self.spec.reward_views
        if images.ndim == 4:
            if len(views) != 1:
                raise ValueError(f"the reward reads views {views}: pass images uint8[B, V, H, W, 3]")
            images = {views[0]: images}
        else:
            images = {v: images[:, v] for v in views}
        b = tokens.shape[0]
        layout = self.reward_layout(tokens.shape[1])
        net = params["net"]
        src = {("vit", v): self.net.apply(net, images[v], method=WMNet.vit_tokens) for v in views}
        src.update({("text",): self.net.apply(net, tokens, method=WMNet.embed_ids),
               ("question_prefix",): self.net.apply(
                   net, jnp.broadcast_to(self.prefix_ids, (b, len(self.prefix_ids))), method=WMNet.embed_ids),
               ("question_suffix",): self.net.apply(
                   net, jnp.broadcast_to(self.suffix_ids, (b, len(self.suffix_ids))), method=WMNet.embed_ids)})
        all_rows = np.arange(layout.length)
        emb = self._segments(layout, [s.name for s in layout.segments], src)
        mask = self._mask(layout, all_rows, all_rows, self._key_valid(layout, token_mask), {})
        h, _ = self.net.apply(net, emb, layout.expert_ids(), layout.rope_ids()[None], mask,
                              method=WMNet.run)
        return self.net.apply(net, h[:, -1:], method=WMNet.logits)[:, 0]

    def reward(self, params, images, tokens, token_mask):
        """images uint8[B, V, H, W, 3] (or the one view read, see reward_logits) -> p_success
        float32[B] = softmax([Yes, No] logits)[Yes]."""
        logits = self.reward_logits(params, images, tokens, token_mask)
        return jax.nn.sigmoid(logits[:, self.vocab.yes_id] - logits[:, self.vocab.no_id])

    # ------------------------------------------------------------------ training loss
    def loss(self, params, batch, key, train: bool = True):
        """Rectified-flow image MSE on the generated views + Yes/No CE on reward examples (+ with
        reward_on_predictions, the CE on the flow's estimate of the next views).

        batch: images, next_images uint8[B, V, H, W, 3] (next = frame t + k); actions f32[B, k, 7] in
        env units or action_bins int[B, k, 7]; tokens int32[B, L], token_mask bool[B, L]; the reward
        examples (see reward_examples): reward_images uint8[R, V, H, W, 3], reward_tokens int32[R, L],
        reward_token_mask bool[R, L], reward_yes / reward_valid bool[R] - or, without them, the
        current frames with labels from episode_success bool[B] and steps_to_end int32[B].
        The flow target is the next latent, or with predict_delta the latent change (next - current)
        / delta_scale per view. Yes / No are weighted to equal total weight when reward_balance.
        Returns (loss, metrics).
        """
        s = self.spec
        images, nxt = batch["images"], batch["next_images"]
        b, v = images.shape[:2]
        tokens, token_mask = batch["tokens"], batch["token_mask"]
        k_t, k_n, k_d = jax.random.split(key, 3)
        layout = self.dynamics_layout(tokens.shape[1])
        src, current = self._context(params, images, tokens, actions=batch.get("actions"),
                                     action_bins=batch.get("action_bins"))
        z1 = jax.lax.stop_gradient(self.encode_latents(params, nxt.reshape((b * v,) + nxt.shape[2:])))
        z1 = z1.reshape(b, v, s.latent_tokens, s.patch_dim)
        x0 = (z1 - current) / self.delta_scales(v)[None, :, None, None] if s.predict_delta else z1
        t = shift_timesteps(jax.nn.sigmoid(jax.random.normal(k_t, (b, v))), s.timestep_shift)
        eps = jax.random.normal(k_n, x0.shape)
        if train and s.zero_noise_fraction > 0:
            # some examples as a temperature-0 sampler's first step sees them: t = 1, input 0, so the
            # velocity there is a regression of -x0 on the context (docs/results.md section 59); the
            # held-out flow loss (train=False) stays the flow's own, comparable across fractions
            zero = jax.random.bernoulli(jax.random.fold_in(k_t, 1), s.zero_noise_fraction, (b, v))
            t = jnp.where(zero, 1.0, t)
            eps = jnp.where(zero[..., None, None], 0.0, eps)
        xt = (1.0 - t[..., None, None]) * x0 + t[..., None, None] * eps
        net = params["net"]
        for i in range(v):
            src[("noisy", i)] = self.net.apply(net, xt[:, i], t[:, i], method=WMNet.latent_tokens)
            src[("clean_next", i)] = self.net.apply(net, z1[:, i], jnp.zeros((b,)),
                                                    method=WMNet.latent_tokens)
        for sg in layout.segments:  # ViT copies of generated views: the real next frame (teacher forcing)
            if sg.source[:1] == ("vit_next",):
                src[sg.source] = self.net.apply(net, nxt[:, sg.source[1]], method=WMNet.vit_tokens)
        kd = jax.random.split(k_d, 3)
        if train:
            drops = {"text": jax.random.bernoulli(kd[0], s.drop_text, (b,)),
                     "vit": jax.random.bernoulli(kd[1], s.drop_vit, (b,)),
                     "vae": jax.random.bernoulli(kd[2], s.drop_vae, (b,))}
        else:
            drops = {}
        cond = self._condition(params, batch.get("actions"), batch.get("action_bins"), drops.get("text"))
        rows = np.arange(layout.length)
        emb = self._segments(layout, [sg.name for sg in layout.segments], src)
        mask = self._mask(layout, rows, rows, self._key_valid(layout, token_mask), drops)
        h, _ = self.net.apply(net, emb, layout.expert_ids(), layout.rope_ids()[None], mask, None, cond,
                              method=WMNet.run)
        metrics = {}
        mse = 0.0
        names = {0: "head", 1: "wrist"}
        x0_hat = []
        for i in range(v):
            seg = [sg.name for sg in layout.segments if sg.source == ("noisy", i)][0]
            pred = self.net.apply(net, h[:, slice(*layout.offsets()[seg])], method=WMNet.velocity)
            err = jnp.mean((pred - (eps[:, i] - x0[:, i])) ** 2, axis=-1)          # [B, n]
            metrics[f"mse_{names.get(i, i)}"] = jnp.mean(err)
            mse = mse + motion_weighted_mean(err, z1[:, i] - current[:, i], s.motion_weight[i]) / v
            if s.reward_on_predictions > 0:  # the flow's own estimate of x0
                x0_hat.append(xt[:, i] - t[:, i, None, None] * pred)
        ce, rmetrics = self._reward_ce(params, self.reward_examples(batch, s.reward_labels))
        metrics.update(rmetrics)
        loss = s.loss_image * mse + s.loss_text * ce
        if s.reward_on_predictions > 0:
            ex = self._predicted_reward_examples(params, batch, jnp.stack(x0_hat, 1), current)
            ce_pred, m_pred = self._reward_ce(params, ex)
            loss = loss + s.loss_text * s.reward_on_predictions * ce_pred
            metrics.update(reward_ce_pred=ce_pred, reward_acc_pred=m_pred["reward_acc"])
        metrics.update(loss=loss, image_mse=mse, reward_ce=ce)
        return loss, metrics

    def _predicted_reward_examples(self, params, batch, x0_hat, current):
        """Yes/No examples on the next views as the flow estimates them in this training step
        (x0_hat [B, V, n, pd] in target units, decoded like the sampler's output, no gradient into
        the dynamics), labelled as frame t + k: the reward learns to read predicted views too."""
        s = self.spec
        b, v = x0_hat.shape[:2]
        z = x0_hat * self.delta_scales(v)[None, :, None, None] + current if s.predict_delta else x0_hat
        z = jax.lax.stop_gradient(z)
        flat = lambda a: a.reshape((b * v,) + a.shape[2:])  # noqa: E731
        images = self.decode_next(params, flat(z), flat(current), flat(batch["images"]))
        steps_to_end = jnp.maximum(jnp.asarray(batch["steps_to_end"]) - s.chunk, 0)
        yes, valid = self.reward_labels(jnp.asarray(batch["episode_success"]), steps_to_end, s.reward_labels)
        return {"images": images.reshape(batch["images"].shape), "tokens": batch["tokens"],
                "token_mask": batch["token_mask"], "yes": yes, "valid": valid}

    @staticmethod
    def reward_labels(episode_success, steps_to_end, mode: str = "paper"):
        """Yes/No labels of frame t. 'paper': Yes on the last 5 frames of successful episodes, No on
        frames of failed episodes and on frames before the last 10, the window between dropped.
        'outcome': Yes on a successful episode's last frame only (where the simulator's episodes stop:
        the first frame the task holds), No on every other frame, the near-success ones included.
        episode_success bool[N], steps_to_end int[N] (0 = the last frame) -> (yes bool[N], valid bool[N])."""
        success = episode_success.astype(bool)
        if mode == "outcome":
            return success & (steps_to_end == 0), steps_to_end >= 0
        yes = success & (steps_to_end < 5)
        no = ~success | (steps_to_end >= 10)
        return yes, yes | no

    @classmethod
    def reward_examples(cls, batch, labels: str = "paper"):
        """The Yes/No examples of a batch: its reward_* entries when present (stages/wm_common.py draws them
        balanced from whole episodes), else the current frames of its transitions labelled by
        reward_labels(mode=labels).
        -> dict(images uint8[R, V, H, W, 3], tokens int32[R, L], token_mask bool[R, L], yes, valid bool[R])."""
        if "reward_images" in batch:
            return {k: batch[f"reward_{k}"] for k in ("images", "tokens", "token_mask", "yes", "valid")}
        yes, valid = cls.reward_labels(batch["episode_success"], batch["steps_to_end"], labels)
        return {"images": batch["images"], "tokens": batch["tokens"],
                "token_mask": batch["token_mask"], "yes": yes, "valid": valid}

    def _reward_ce(self, params, ex):
        """Balanced Yes/No cross-entropy on examples ex (see reward_examples) -> (ce, metrics)."""
        yes, valid = ex["yes"].astype(bool), ex["valid"].astype(bool)
        logits = self.reward_logits(params, ex["images"], ex["tokens"], ex["token_mask"])
        target = jnp.where(yes, self.vocab.yes_id, self.vocab.no_id)
        logp = jax.nn.log_softmax(logits, axis=-1)
        nll = -jnp.take_along_axis(logp, target[:, None], axis=-1)[:, 0]
        w = valid.astype(jnp.float32)
        if self.spec.reward_balance:  # equal total weight for the Yes and No samples present
            n_yes = jnp.sum(w * yes)
            n_no = jnp.sum(w * ~yes)
            w = w * jnp.where(yes, 0.5 / jnp.maximum(n_yes, 1.0), 0.5 / jnp.maximum(n_no, 1.0))
            w = w * jnp.where((n_yes > 0) & (n_no > 0), 1.0, 2.0)
        else:
            w = w / jnp.maximum(jnp.sum(w), 1.0)
        ce = jnp.sum(w * nll)
        pred_yes = logits[:, self.vocab.yes_id] > logits[:, self.vocab.no_id]
        acc = jnp.sum(valid * (pred_yes == yes)) / jnp.maximum(jnp.sum(valid), 1.0)
        return ce, {"reward_acc": acc, "reward_valid": jnp.mean(valid)}
