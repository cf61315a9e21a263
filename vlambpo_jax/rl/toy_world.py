"""A world with a known answer, to check that PPO learns at all: a chunk succeeds when its mean action
in one dimension (env units) is positive.

The observation never changes (fixed random images and one instruction per branch), every branch is
one chunk long, and the reward is 1 at the chunk's last step on success. A policy that starts near 50%
success must approach 100% if the policy gradient has the right sign and the sampler explores;
`run_ppo` runs the MBPO iteration (rl/mbpo.py) on it, `python -m vlambpo_jax.tools.ppo_toy` from the
command line.
"""
from __future__ import annotations

import flax
import jax
import jax.numpy as jnp
import numpy as np

from vlambpo_jax.rl import mbpo, ppo


@flax.struct.dataclass
class ToyState:
    images: jax.Array       # uint8[B, V, H, W, 3]
    tokens: jax.Array       # int32[B, L]
    token_mask: jax.Array   # bool[B, L]


class ToyWorld:
    """World (rl/rollout.py) whose success is actions[..., dim].mean over the chunk > 0."""

    def __init__(self, dim: int = 0):
        self.dim = dim

    def observe(self, state: ToyState) -> dict:
        return {"images": state.images, "tokens": state.tokens, "token_mask": state.token_mask}

    def step(self, params, state: ToyState, actions, key):
        success = actions[..., self.dim].mean(axis=-1) > 0
        rewards = jnp.zeros(actions.shape[:2]).at[:, -1].set(success.astype(jnp.float32))
        return state, rewards, success

    def ended(self, state: ToyState):
        return jnp.zeros(state.images.shape[:1], bool)


def toy_states(batch: int, num_views: int, image_size: int, text_len: int, vocab_size: int,
               seed: int = 0) -> ToyState:
    """`batch` fixed start states: random images, one 3-token instruction (ids in [3, vocab_size))."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (batch, num_views, image_size, image_size, 3), dtype=np.uint8)
    tokens = np.zeros((batch, text_len), np.int32)
    tokens[:, :3] = rng.integers(3, vocab_size, (1, 3))
    return ToyState(images=jnp.asarray(images), tokens=jnp.asarray(tokens),
                    token_mask=jnp.asarray(tokens > 0))


def run_ppo(policy, rl_config, iterations: int, seed: int = 0, dim: int = 0, num_chunks: int = 1) -> list[dict]:
    """PPO (config.rl's settings, rl_config.num_branches branches of num_chunks chunks, ending at the
    first success) on the toy world from freshly initialised policy parameters -> per-iteration metrics
    (branch_success, clip_frac, ...)."""
    world = ToyWorld(dim)
    d = policy.dims
    start = toy_states(int(rl_config.num_branches), d.num_views, d.image_size,
                       int(policy.config.data.max_text_len), d.vocab_size, seed)
    params = policy.init(jax.random.PRNGKey(seed), jax.tree.map(lambda x: x[:1], world.observe(start)))
    optimizer = ppo.make_optimizer(rl_config, params)
    iteration = mbpo.make_iteration(policy, rl_config, world, None, lambda i: start, num_chunks, seed + 1,
                                    optimizer)
    state = ppo.init_state(rl_config, optimizer, params)
    history = []
    for i in range(iterations):
        state, metrics = iteration(state, i)
        history.append({"iteration": i, **{k: float(v) for k, v in metrics.items()}})
    return history
