"""Flow-matching schedules, the Flow-SDE transition of the VLA-MBPO / piRL code, and its log-density.

Convention (openpi): x_t = t * noise + (1 - t) * actions, t = 1 is pure noise, the network predicts
v = noise - actions, and sampling integrates from t = 1 down to t = 0.

Flow-SDE (the authors' RL code): timesteps t_0..t_K = linspace(1, 1/K, K) followed by 0. At step i,
with d = t_i - t_{i+1}, x0_hat = x - v t, x1_hat = x + v (1 - t) and
sigma_i = noise_level * sqrt(t_i / (1 - t_i)) (at t_i = 1 the denominator uses t_1 instead, as in the
authors' code, so sigma stays finite), the next point is Gaussian with
    mean = x0_hat (1 - (t - d)) + x1_hat (t - d - sigma^2 d / (2 t)),   std = sqrt(d) sigma.
With sigma = 0 the mean is exactly the Euler step x - v d. Only one step per chain is stochastic; the
chain's log-probability is the Gaussian log-density of that one transition (zero where sigma = 0).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_LOG_SQRT_2PI = 0.5 * float(np.log(2.0 * np.pi))


def sde_timesteps(num_steps: int) -> np.ndarray:
    """float32[K + 1]: linspace(1, 1/K, K) then 0."""
    return np.concatenate([np.linspace(1.0, 1.0 / num_steps, num_steps), [0.0]]).astype(np.float32)


def sde_sigmas(num_steps: int, noise_level: float) -> np.ndarray:
    """float32[K]: the noise scale of each step if it is the stochastic one."""
    t = sde_timesteps(num_steps).astype(np.float64)
    denom_t = np.where(t == 1.0, t[1], t)
    return (noise_level * np.sqrt(t / (1.0 - denom_t)))[:-1].astype(np.float32)


def flow_sde_moments(x: jax.Array, v: jax.Array, t: jax.Array, d: jax.Array,
                     sigma: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean and std of x_{t-d} given x_t.

    x, v [B, k, D]; t, d, sigma [B] (per-sample time, step size and noise scale) ->
    (mean [B, k, D], std [B, 1, 1]).
    """
    t, d, sigma = (a[:, None, None] for a in (t, d, sigma))
    x0_hat = x - v * t
    x1_hat = x + v * (1.0 - t)
    mean = x0_hat * (1.0 - (t - d)) + x1_hat * (t - d - sigma ** 2 * d / (2.0 * t))
    return mean, jnp.sqrt(d) * sigma


def gaussian_log_prob(x: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
    """Elementwise log N(x; mean, std^2), broadcasting; exactly 0 where std == 0 (deterministic step)."""
    stochastic = std > 0
    safe = jnp.where(stochastic, std, 1.0)
    logp = -0.5 * ((x - mean) / safe) ** 2 - jnp.log(safe) - _LOG_SQRT_2PI
    return jnp.where(stochastic, logp, 0.0)


def choose_stochastic_step(key: jax.Array, batch: int, num_steps: int, per_sample: bool) -> jax.Array:
    """int32[B]: the index of the one stochastic denoising step, per sample or one shared per call."""
    if per_sample:
        return jax.random.randint(key, (batch,), 0, num_steps, dtype=jnp.int32)
    return jnp.full((batch,), jax.random.randint(key, (), 0, num_steps, dtype=jnp.int32))


def sample_flow_time(key: jax.Array, batch: int) -> jax.Array:
    """Training times t ~ Beta(1.5, 1) * 0.999 + 0.001 (openpi), float32[B]; t = 1 is pure noise."""
    return jax.random.beta(key, 1.5, 1.0, (batch,)) * 0.999 + 0.001


def euler_sample(velocity, x: jax.Array, ts: jax.Array) -> jax.Array:
    """Deterministic Euler integration of a rectified flow (the world model's sampler):
    x <- x - velocity(x, t) (t - t_next) over the decreasing times ts float[K + 1] (ts[0] = 1 is
    noise, ts[-1] = 0 the sample), as one lax.scan. velocity: (x [...], t scalar) -> [...];
    x [...] the noise -> the sample [...]. The exact velocity towards a fixed x0, (x - x0) / t, lands
    on x0 whatever the schedule."""
    def step(x, tt):
        t, t_next = tt
        return x - velocity(x, t) * (t - t_next), None
    return jax.lax.scan(step, x, (ts[:-1], ts[1:]))[0]


# ---------------------------------------------------------------------------------------------------
# Classifier-free guidance of the world model's image sampler (BAGEL's 3-branch rule + renorm)

CFG_RENORM_TYPES = ("none", "global", "channel", "text_channel")


def _norm(x: jax.Array, axes) -> jax.Array:
    return jnp.sqrt(jnp.sum(jnp.square(x), axis=axes, keepdims=True))


def cfg_velocity(v_full: jax.Array, v_no_text: jax.Array, v_no_image: jax.Array, text_scale: float,
                 image_scale: float, renorm_type: str = "none", renorm_min: float = 0.0) -> jax.Array:
    """Guided velocity from the three CFG branches (BAGEL), arrays [B, ..., C] (C = token channels).

        v_t = v_no_text + s_text (v_full - v_no_text)
        v   = v_no_image + s_image (v_t - v_no_image)

    renorm_type rescales so the guided velocity's norm does not exceed the conditional (v_full) one's,
    by scale = clamp(|v_full| / (|guided| + 1e-8), renorm_min, 1):
      'none': no rescaling;
      'global': one scale per sample, norms over all non-batch axes (BAGEL takes the norm over the
        whole packed tensor, i.e. its one generated image);
      'channel': one scale per token, norms over the last (channel) axis, applied to v;
      'text_channel': per token as 'channel' but applied to v_t, before the image guidance.
    """
    if renorm_type not in CFG_RENORM_TYPES:
        raise ValueError(f"config.wm.cfg_renorm_type={renorm_type!r}; expected one of {CFG_RENORM_TYPES}")

    def scale(ref, guided, axes):
        return jnp.clip(_norm(ref, axes) / (_norm(guided, axes) + 1e-8), renorm_min, 1.0)

    v_t = v_no_text + text_scale * (v_full - v_no_text)
    if renorm_type == "text_channel":
        v_t = v_t * scale(v_full, v_t, -1)
    v = v_no_image + image_scale * (v_t - v_no_image)
    if renorm_type == "global":
        v = v * scale(v_full, v, tuple(range(1, v.ndim)))
    elif renorm_type == "channel":
        v = v * scale(v_full, v, -1)
    return v
