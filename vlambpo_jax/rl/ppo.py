"""PPO for flow-matching VLA policies over a buffer of chunk transitions (imagined or real).

The buffer is flattened over (chunk, branch); one epoch is a lax.scan over shuffled minibatches. The
optimizer is optax.multi_transform with an actor group (the action expert), a VLM group (when
`rl.train_vlm`, at rl.vlm_lr) and a critic group (the value head), each AdamW with its own learning
rate; the VLM is frozen by default, and then neither differentiated nor given optimizer state. A
critic-only step updates the critic group and leaves the actor's parameters and optimizer state
untouched (used for the warm-up after each buffer refill).
"""
from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from vlambpo_jax.rl import gae, ppo_loss
from vlambpo_jax.rl.rollout import Transitions


def trainable(params: dict, train_vlm: bool) -> dict:
    """The parameter groups PPO differentiates and updates: the action expert and the value head, and
    the VLM with rl.train_vlm. The frozen VLM gets no gradient, optimizer state or update at all."""
    return {name: sub for name, sub in params.items() if name != "vlm" or train_vlm}


def param_groups(params: dict) -> dict:
    """multi_transform labels of trainable(params): 'actor' | 'vlm' | 'critic' per leaf."""
    group = {"vlm": "vlm", "action_expert": "actor", "value_head": "critic"}
    return {name: jax.tree.map(lambda _, g=group[name]: g, sub) for name, sub in params.items()}


def make_optimizer(rl_config, params: dict) -> optax.GradientTransformation:
    """The optimizer over trainable(params, rl_config.train_vlm) (init it with init_state)."""
    c = rl_config
    adamw = lambda lr: optax.adamw(lr, b1=c.b1, b2=c.b2, weight_decay=c.weight_decay)  # noqa: E731
    groups = {"actor": adamw(c.actor_lr), "critic": adamw(c.critic_lr)}
    if c.train_vlm:
        groups["vlm"] = adamw(c.vlm_lr or c.actor_lr)
    return optax.chain(optax.clip_by_global_norm(c.grad_clip),
                       optax.multi_transform(groups, param_groups(trainable(params, c.train_vlm))))


@flax.struct.dataclass
class PPOState:
    params: Any
    opt_state: Any
    step: jax.Array      # gradient steps taken


def init_state(rl_config, optimizer: optax.GradientTransformation, params: dict) -> "PPOState":
    return PPOState(params, optimizer.init(trainable(params, rl_config.train_vlm)), jnp.zeros((), jnp.int32))


@flax.struct.dataclass
class Buffer:
    """Flattened training samples [N, ...] (N = chunks x branches)."""
    obs: dict
    chain: dict
    old_log_prob: jax.Array
    old_value: jax.Array
    advantages: jax.Array
    returns: jax.Array
    mask: jax.Array          # the chunk was taken (value loss)
    policy_mask: jax.Array   # ... and carries a learning signal (policy loss; drops degenerate groups)
    # int32[M]: the only rows the policy loss can see (vine: each branch's explored chunk), so the
    # chain is re-scored on those alone; None: every row
    actor_rows: jax.Array | None = None


def with_value_rows(buffer: Buffer, obs: dict, returns: jax.Array, values: jax.Array) -> Buffer:
    """buffer plus K rows that train the critic alone: value targets returns f32[K] at observations obs
    [K, ...] (values f32[K]: the critic's current values there, the centre of the clipped value loss).
    The policy loss never sees them: their policy_mask is False and the surrogate runs on actor_rows,
    which keep to the original rows."""
    n, k = buffer.mask.shape[0], returns.shape[0]
    zeros = lambda x: jnp.concatenate([x, jnp.zeros((k,) + x.shape[1:], x.dtype)])  # noqa: E731
    return Buffer(obs=jax.tree.map(lambda a, b: jnp.concatenate([a, b.astype(a.dtype)]), buffer.obs, obs),
                  chain=jax.tree.map(zeros, buffer.chain), old_log_prob=zeros(buffer.old_log_prob),
                  old_value=jnp.concatenate([buffer.old_value, values]), advantages=zeros(buffer.advantages),
                  returns=jnp.concatenate([buffer.returns, returns]),
                  mask=jnp.concatenate([buffer.mask, jnp.ones((k,), bool)]), policy_mask=zeros(buffer.policy_mask),
                  actor_rows=jnp.arange(n) if buffer.actor_rows is None else buffer.actor_rows)


def group_relative_advantages(transitions: Transitions, group_size: int,
                              bootstrap: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """GRPO-style advantages: branches come in consecutive groups of `group_size` from the same start
    state; every chunk of a branch gets its branch's return (the sum of its step rewards, plus the
    bootstrap f32[B], the critic's value where a short branch stops before its episode ends) minus
    its group's mean return. Not divided by the group's std, so a group whose outcomes barely differ
    is not blown up. -> (advantages f32[T, B], mixed bool[B]: the branch's group has differing
    returns; the others carry no signal)."""
    t, b = transitions.mask.shape
    returns = transitions.step_rewards.sum(axis=(0, 2))
    if bootstrap is not None:
        returns = returns + bootstrap
    returns = returns.reshape(b // group_size, group_size)
    adv = (returns - returns.mean(axis=1, keepdims=True)).reshape(b)
    mixed = jnp.repeat(returns.max(axis=1) > returns.min(axis=1), group_size)
    return adv[None, :] * transitions.mask, mixed


def compute_targets(transitions: Transitions, values: jax.Array, bootstrap: jax.Array,
                    rl_config) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Advantages per rl_config.advantage and the critic's returns (chunk-level GAE returns), all
    [T, B]: (advantages, returns, policy_mask). 'gae': the configured GAE variant, normalized when
    rl_config.normalize_advantages; 'group': group_relative_advantages, degenerate groups masked;
    'vine': the same on each group's one explored chunk only (rollout(vine_window=...): every other
    chunk is the group's shared deterministic path, so the group's returns differ by that chunk alone).
    rl_config.advantage_bootstrap False scores group / vine branches by their rewards alone (the
    critic's returns keep the bootstrap)."""
    rewards, discount = gae.chunk_rewards_and_discount(transitions.step_rewards, rl_config.gamma,
                                                       rl_config.gae_variant)
    adv, ret = gae.chunk_gae(rewards, values, bootstrap, transitions.terminal, transitions.mask,
                             discount, rl_config.gae_lambda)
    if rl_config.advantage in ("group", "vine"):
        adv, mixed = group_relative_advantages(transitions, int(rl_config.group_size),
                                               bootstrap if rl_config.advantage_bootstrap else None)
        policy_mask = transitions.mask & mixed[None, :]
        if rl_config.advantage == "vine":
            adv, policy_mask = adv * transitions.sampled, policy_mask & transitions.sampled
        return adv, ret, policy_mask
    if rl_config.normalize_advantages:
        adv = gae.normalize_advantages(adv, transitions.mask)
    return adv, ret, transitions.mask


def make_buffer(transitions: Transitions, values: jax.Array, bootstrap: jax.Array, rl_config) -> Buffer:
    adv, ret, policy_mask = compute_targets(transitions, values, bootstrap, rl_config)
    flat = lambda x: x.reshape((-1,) + x.shape[2:])
    actor_rows = None
    if rl_config.advantage == "vine":   # one sampled chunk per branch; rows are flattened time-major
        b = transitions.mask.shape[1]
        actor_rows = jnp.argmax(transitions.sampled, axis=0) * b + jnp.arange(b)
    return Buffer(obs=jax.tree.map(flat, transitions.obs), chain=jax.tree.map(flat, transitions.chain),
                  old_log_prob=flat(transitions.log_prob), old_value=flat(values),
                  advantages=flat(adv), returns=flat(ret), mask=flat(transitions.mask),
                  policy_mask=flat(policy_mask), actor_rows=actor_rows)


def explained_variance(values: jax.Array, returns: jax.Array, mask: jax.Array) -> jax.Array:
    """1 - Var(returns - values) / Var(returns) over the valid entries (1 = perfect critic, 0 = a
    constant, < 0 = worse than a constant)."""
    m = mask.astype(jnp.float32)
    n = jnp.maximum(m.sum(), 1.0)
    var = lambda x: ((x - (x * m).sum() / n) ** 2 * m).sum() / n  # noqa: E731
    return 1.0 - var(returns - values) / jnp.maximum(var(returns), 1e-8)


def recompute_values(policy, params, transitions: Transitions, final_obs: dict,
                     final_alive: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Values [T, B] of every stored observation and the bootstrap [B] under the current critic."""
    t, b = transitions.mask.shape
    flat_obs = jax.tree.map(lambda x: x.reshape((t * b,) + x.shape[2:]), transitions.obs)
    values = policy.value(params, flat_obs).reshape(t, b)
    return values, policy.value(params, final_obs) * final_alive


def make_loss_fn(policy, rl_config):
    """losses(params, minibatch: Buffer, critic_only, actor_mb=None) -> (loss, metrics): the clipped
    surrogate plus the weighted value loss, or the value loss alone. With `actor_mb` (rows of the
    buffer's actor_rows) the surrogate is taken on it and the value loss on `minibatch`; without, both
    on `minibatch`."""
    c = rl_config

    def losses(params, mb: Buffer, critic_only: bool, actor_mb: Buffer | None = None):
        if critic_only or actor_mb is not None:
            value = policy.value(params, mb.obs)
        else:
            logp, value = policy.log_prob_and_value(params, mb.obs, mb.chain, train_vlm=c.train_vlm)
            actor_mb = mb
        v_loss = ppo_loss.value_loss(value, mb.old_value, mb.returns, mb.mask, c.value_clip,
                                     c.huber_delta)
        if critic_only:
            return c.value_coef * v_loss, {"value_loss": v_loss}
        if actor_mb is not mb:
            logp = policy.log_prob(params, actor_mb.obs, actor_mb.chain, train_vlm=c.train_vlm)
        p_loss, stats = ppo_loss.policy_loss(logp, actor_mb.old_log_prob, actor_mb.advantages,
                                            actor_mb.policy_mask, c.clip, c.clip_negative)
        return p_loss + c.value_coef * v_loss, {"policy_loss": p_loss, "value_loss": v_loss, **stats}

    return losses


def make_update_fns(policy, rl_config, optimizer: optax.GradientTransformation):
    """Returns (epoch, critic_epoch): each runs one pass of minibatch updates as a lax.scan.

    epoch(state, buffer, key) -> (state, metrics averaged over minibatches);
    critic_epoch: the same with the value loss only (actor frozen).
    """
    c = rl_config
    losses = make_loss_fn(policy, rl_config)

    def update(state: PPOState, mb: Buffer, critic_only: bool, actor_mb: Buffer | None = None):
        train = trainable(state.params, c.train_vlm)
        frozen = {name: sub for name, sub in state.params.items() if name not in train}
        (loss, metrics), grads = jax.value_and_grad(
            lambda t: losses({**frozen, **t}, mb, critic_only, actor_mb), has_aux=True)(train)
        updates, new_opt = optimizer.update(grads, state.opt_state, train)
        new_train = optax.apply_updates(train, updates)
        if critic_only:
            # Keep the actor (and VLM) exactly as they were, parameters and AdamW moments both.
            clip_state, part = new_opt
            inner = {**state.opt_state[1].inner_states, "critic": part.inner_states["critic"]}
            new_opt = (clip_state, part._replace(inner_states=inner))
            new_train = {**train, "value_head": new_train["value_head"]}
        metrics = {**metrics, "grad_norm": optax.tree.norm(grads), "loss": loss}
        return PPOState({**state.params, **new_train}, new_opt, state.step + 1), metrics

    def minibatches(buffer: Buffer, rows: jax.Array, num_mb: int) -> Buffer:
        rows = rows[: num_mb * (len(rows) // num_mb)]
        return jax.tree.map(lambda x: x[rows].reshape((num_mb, -1) + x.shape[1:]), buffer)

    def run_epoch(state: PPOState, buffer: Buffer, key: jax.Array, critic_only: bool):
        """Every row once, in minibatches of about rl.minibatch_size; with actor_rows, each minibatch
        also carries an equal share of those rows for the surrogate (so there are at most as many
        minibatches as actor rows: a vine buffer of whole episodes holds one explored chunk each)."""
        actor_rows, buffer = buffer.actor_rows, buffer.replace(actor_rows=None)
        n = buffer.mask.shape[0]
        num_mb = max(1, n // c.minibatch_size)
        if not critic_only and actor_rows is not None:
            if len(actor_rows) == 0:
                raise ValueError("the buffer holds no explored chunk for the surrogate (Buffer.actor_rows)")
            num_mb = min(num_mb, len(actor_rows))
        batches = minibatches(buffer, jax.random.permutation(key, n), num_mb)
        if critic_only or actor_rows is None:
            state, metrics = jax.lax.scan(lambda s, mb: update(s, mb, critic_only), state, batches)
        else:
            actor_order = jax.random.permutation(jax.random.fold_in(key, 1), actor_rows)
            actor = minibatches(buffer, actor_order, num_mb)
            state, metrics = jax.lax.scan(lambda s, mbs: update(s, mbs[0], False, mbs[1]), state, (batches, actor))
        return state, jax.tree.map(jnp.mean, metrics)

    return (lambda s, b, k: run_epoch(s, b, k, False)), (lambda s, b, k: run_epoch(s, b, k, True))
