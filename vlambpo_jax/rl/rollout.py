"""Chunk-level rollouts as one lax.scan over chunks, batched over branches.

The same scan body runs inside the world model (imagined branches for MBPO) and inside the MJX
simulator (real rollouts for collection, online PPO and evaluation): only the `World` differs.
Per chunk the policy samples an action chunk with the Flow-SDE sampler (chain, log-prob, value), the
world advances k steps and reports per-step rewards and success; termination is latched at the first
success, later chunks are masked, and the value of the final observation is the bootstrap.
"""
from __future__ import annotations

from typing import Any, Protocol

import flax
import jax
import jax.numpy as jnp
import numpy as np

from vlambpo_jax.models.policy import SDESample


class World(Protocol):
    """What a rollout needs from a simulator or a world model (all batched over branches)."""

    def observe(self, state) -> dict:
        """Policy observation: images uint8[B, V, H, W, 3], tokens int32[B, L], token_mask bool[B, L]."""

    def step(self, params, state, actions: jax.Array, key: jax.Array) -> tuple[Any, jax.Array, jax.Array]:
        """actions f32[B, k, 7] in env units -> (state, step_rewards f32[B, k], success bool[B])."""

    def ended(self, state) -> jax.Array:
        """bool[B]: the episode is over without success (a simulator's time limit): nothing follows,
        so the bootstrap value there is zero."""


@flax.struct.dataclass
class Transitions:
    """One rollout, time-major: every leaf [T, B, ...] (T chunks, B branches)."""
    obs: dict               # the observation the chunk was sampled from
    chain: dict             # Flow-SDE chain: x f32[T, B, K+1, k, D], step int32[T, B]
    actions: jax.Array      # f32[T, B, k, 7] env units
    log_prob: jax.Array     # f32[T, B] at sampling time
    value: jax.Array        # f32[T, B] at sampling time
    step_rewards: jax.Array  # f32[T, B, k] (zero after termination)
    terminal: jax.Array     # bool[T, B] success inside this chunk (the branch ends here)
    mask: jax.Array         # bool[T, B] the chunk was taken (False after termination)
    sampled: jax.Array      # bool[T, B] the chunk came from the Flow-SDE sampler (False: vine's Euler chunks)


def _where(cond: jax.Array, a, b):
    """Per-branch select over a pytree whose leaves have a leading batch axis."""
    def pick(x, y):
        c = cond.reshape(cond.shape + (1,) * (x.ndim - cond.ndim))
        return jnp.where(c, x, y)
    return jax.tree.map(pick, a, b)


def rollout(policy, policy_params, world: World, world_params, state, key: jax.Array,
            num_chunks: int, vine_window: int = 0, group_size: int = 1,
            vine_horizon: int = 0) -> tuple[Transitions, jax.Array, Any]:
    """Rolls `num_chunks` chunks from `state` (B branches).

    vine_window > 0 (the vine estimator, config.rl.advantage='vine'): each group of `group_size`
    consecutive branches (which share a start state) explores one chunk, its index drawn uniformly
    from [0, min(vine_window, num_chunks)) per group: that chunk comes from the Flow-SDE sampler.
    Every other chunk comes from the deterministic Euler sampler, from initial noise shared by the
    group (common random numbers), so a group follows one path up to its explored chunk and its
    branches differ only by that chunk. The unexplored chunks store log_prob 0, value 0, a zero chain
    and sampled False. vine_horizon > 0 stops each branch after its explored chunk and the next
    vine_horizon - 1 chunks (alive False from there), so its return is those chunks' rewards plus the
    critic's bootstrap of the state they reach: the 2-chunk branches of the roots runs, from states
    along a fresh episode.

    Returns (transitions [T, B, ...], bootstrap value f32[B] of the final observation (zero for
    terminated and ended branches), final world state). Pure: jit it with the policy and world closed over.
    """
    b = jax.tree.leaves(world.observe(state))[0].shape[0]

    def follow(obs, key):
        """The deterministic continuation, shaped like a Flow-SDE sample."""
        d = policy.dims
        noise = jax.random.normal(key, (b // group_size, d.chunk_size, d.action_pad_dim))
        actions = policy.sample_actions(policy_params, obs, key, noise=jnp.repeat(noise, group_size, axis=0))
        chain = {"x": jnp.zeros((b, policy.num_steps + 1, d.chunk_size, d.action_pad_dim)),
                 "step": jnp.zeros((b,), jnp.int32)}
        return SDESample(actions=actions, chain=chain, log_prob=jnp.zeros((b,)), value=jnp.zeros((b,)))

    if vine_window:
        # own key, so the chunk keys (and a first-chunk vine's numbers) do not depend on the draw
        explore_at = jnp.repeat(jax.random.randint(jax.random.fold_in(key, 0x7E), (b // group_size,), 0,
                                                   min(vine_window, num_chunks)), group_size)

    def body(carry, xs):
        state, alive = carry
        chunk_key, index = xs
        obs = world.observe(state)
        policy_key, world_key = jax.random.split(chunk_key)
        if vine_window:
            sampled = index == explore_at
            sample = jax.lax.cond(sampled.any(),
                                  lambda: _where(sampled, policy.sample_sde(policy_params, obs, policy_key),
                                                 follow(obs, policy_key)),
                                  lambda: follow(obs, policy_key))
        else:
            sampled = jnp.ones((b,), bool)
            sample = policy.sample_sde(policy_params, obs, policy_key)
        actions = policy.unnormalize(sample.actions)
        next_state, step_rewards, success = world.step(world_params, state, actions, world_key)
        success = success & alive
        out = Transitions(obs=obs, chain=sample.chain, actions=actions, log_prob=sample.log_prob,
                          value=sample.value, step_rewards=step_rewards * alive[:, None],
                          terminal=success, mask=alive, sampled=sampled)
        go_on = alive & ~success
        if vine_window and vine_horizon:
            go_on = go_on & (index + 1 < explore_at + vine_horizon)
        return (_where(alive, next_state, state), go_on), out

    keys = jax.random.split(key, num_chunks)
    (state, alive), traj = jax.lax.scan(body, (state, jnp.ones((b,), bool)), (keys, jnp.arange(num_chunks)))
    bootstrap = policy.value(policy_params, world.observe(state)) * has_future(world, traj, state)
    return traj, bootstrap, state


def has_future(world: World, traj: Transitions, final) -> jax.Array:
    """bool[B]: the branches whose final state has a future to bootstrap: neither terminated by
    success nor past the episode's end (World.ended)."""
    return ~traj.terminal.any(axis=0) & ~world.ended(final)


class SimWorld:
    """The MJX tabletop as a World: state = a batch of env States.

    tokens: int32[num_instructions, L] and token_mask bool[num_instructions, L], the tokenized
    env.instructions, looked up by each state's instruction_id. normalize_state: raw env state ->
    the policy's normalized state token input (None: the policy reads no state).
    """

    def __init__(self, env, tokens: np.ndarray, token_mask: np.ndarray, normalize_state=None):
        self.env = env
        self.tokens = jnp.asarray(tokens)
        self.token_mask = jnp.asarray(token_mask)
        self.normalize_state = normalize_state

    def observe(self, state) -> dict:
        ids = state.obs["instruction_id"]
        obs = {"images": state.obs["images"], "tokens": self.tokens[ids], "token_mask": self.token_mask[ids]}
        if self.normalize_state is not None:
            obs["state"] = self.normalize_state(state.obs["state"])
        return obs

    def step(self, params, state, actions, key):
        del params, key  # the simulator is deterministic given the state
        state, rewards, success = jax.vmap(self.env.step_chunk)(state, actions)
        return state, rewards, success[:, -1]

    def ended(self, state):
        return state.done & ~state.success


@flax.struct.dataclass
class ImaginedState:
    """World-model branch state: the current views and the instruction, tokenized twice: for the
    policy (its own tokenizer) and for the world model (its own, config.wm.tokenizer)."""
    images: jax.Array         # uint8[B, V, H, W, 3]
    tokens: jax.Array         # int32[B, L] policy tokens
    token_mask: jax.Array     # bool[B, L]
    wm_tokens: jax.Array      # int32[B, Lw] world-model tokens
    wm_token_mask: jax.Array  # bool[B, Lw]


class ModelWorld:
    """The world model as a World: predicts both views k steps ahead, then answers Yes/No.

    The model's reward is one success probability per chunk, placed on the chunk's last step
    (binary with `threshold`), so both GAE variants apply.
    """

    def __init__(self, world_model, threshold: float = 0.5):
        self.wm = world_model
        self.threshold = threshold

    def observe(self, state: ImaginedState) -> dict:
        return {"images": state.images, "tokens": state.tokens, "token_mask": state.token_mask}

    def step(self, params, state: ImaginedState, actions, key):
        state = self.advance(params, state, actions, key)
        step_rewards, success = self.outcome(params, state, actions.shape[1])
        return state, step_rewards, success

    def advance(self, params, state: ImaginedState, actions, key) -> ImaginedState:
        """Both views predicted k steps ahead under actions f32[B, k, 7]."""
        return state.replace(images=self.wm.predict(params, state.images, state.wm_tokens,
                                                    state.wm_token_mask, actions, key))

    def outcome(self, params, state: ImaginedState, k: int) -> tuple[jax.Array, jax.Array]:
        """The Yes/No reward read on state's views -> (step_rewards f32[B, k], success bool[B])."""
        p_success = self.wm.reward(params, state.images, state.wm_tokens, state.wm_token_mask)
        success = p_success > self.threshold
        step_rewards = jnp.zeros((state.images.shape[0], k), jnp.float32).at[:, -1].set(
            success.astype(jnp.float32))
        return step_rewards, success

    def ended(self, state: ImaginedState):
        return jnp.zeros(state.images.shape[:1], bool)   # imagined branches have no time limit


class HybridWorld:
    """The truth in place of one half of the world model (rl.reward_from), from restored roots: the
    simulator and the world model step side by side on the same actions; the policy sees one's views
    and the reward is the other's.

    views='model', reward 'sim': the world model's predicted views, the simulator's success (is the
    dynamics' drift what breaks imagined branches?). views='sim', reward 'model': the simulator's real
    views, the world model's Yes/No read on them (is the learned reward what breaks them?).
    State: (env States, ImaginedState), both [B, ...]; the episode ends at the simulator's time limit.
    """

    def __init__(self, sim: SimWorld, model: ModelWorld, views: str):
        if views not in ("model", "sim"):
            raise ValueError(f"views must be 'model' or 'sim', got {views!r}")
        self.sim, self.model, self.views = sim, model, views

    def observe(self, state) -> dict:
        sim_state, imagined = state
        return self.model.observe(imagined) if self.views == "model" else self.sim.observe(sim_state)

    def step(self, params, state, actions, key):
        sim_state, imagined = state
        sim_state, sim_rewards, sim_success = self.sim.step(None, sim_state, actions, key)
        if self.views == "model":
            imagined = self.model.advance(params, imagined, actions, key)
            return (sim_state, imagined), sim_rewards, sim_success
        imagined = imagined.replace(images=self.sim.observe(sim_state)["images"])
        step_rewards, success = self.model.outcome(params, imagined, actions.shape[1])
        return (sim_state, imagined), step_rewards, success

    def ended(self, state):
        return self.sim.ended(state[0])
