"""PPO on chunk-level branches imagined by the world model (VLA-MBPO): the iteration the `mbpo` stage
runs (stages/mbpo.py).

One iteration: draw M branch roots from the collected real rollouts, roll n chunks in the world model
(one jitted lax.scan), compute chunk-level GAE, run critic-only warm-up epochs, then PPO epochs (each
a lax.scan over minibatches, values re-computed before each epoch when configured). With
`rl.world = 'sim'` the same loop runs in the MJX simulator from fresh episodes instead (the online-PPO
baseline, piRL-style). Every random draw is keyed by the iteration index, so a resumed run continues
with identical numbers.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from vlambpo_jax.rl import ppo
from vlambpo_jax.rl.rollout import ImaginedState, ModelWorld, has_future, rollout
from vlambpo_jax.train import sharding


def repeat_groups(tree, group_size: int):
    """Every start state `group_size` times in a row (leading axis b -> b group_size): the groups of
    group-relative advantages (rl/ppo.group_relative_advantages)."""
    return jax.tree.map(lambda x: jnp.repeat(x, group_size, axis=0), tree) if group_size > 1 else tree


def imagined_roots(roots: dict, idx: np.ndarray) -> ImaginedState:
    """The world model's start states at root indices idx int[B] (the collected views and tokens)."""
    return ImaginedState(**{key: jnp.asarray(roots[key][idx]) for key in (
        "images", "tokens", "token_mask", "wm_tokens", "wm_token_mask")})


def branch_sampler(roots: dict, num_branches: int, seed: int, group_size: int = 1, make_state=None):
    """iteration -> start states of `num_branches` branches from roots drawn uniformly (deterministic
    per iteration), each root `group_size` times in a row. make_state(root indices int[B]) builds
    them; default: the world model's ImaginedState."""
    n = len(roots["t"])
    make_state = make_state or (lambda idx: imagined_roots(roots, idx))

    def draw(i: int):
        return make_state(np.repeat(np.random.default_rng([seed, i]).integers(0, n, num_branches // group_size),
                                    group_size))
    return draw


def make_iteration(policy, rl, world, world_params, start_fn, num_chunks: int, seed: int, optimizer,
                   dp: sharding.DataParallel | None = None, state_shardings=None, bootstrap_fn=None,
                   anchor: dict | None = None):
    """Returns iteration(state: PPOState, i) -> (state, metrics): one refill + PPO update.

    start_fn(i) gives the branch start states of iteration i (roots or fresh episodes). With a
    DataParallel `dp` (and the PPO state placed by it), branches are split over the mesh and the update
    epochs keep the state's shardings. bootstrap_fn(final world state) -> f32[B]: a fixed value of the
    branches' last states in place of the critic's (rl.bootstrap_model='classifier'), in the
    advantages and the critic's targets alike. anchor {'predicted': obs [N, ...], 'real': obs [N, ...],
    'returns': f32[N]} (rl.value_anchor > 0): the policy's observations of N world-model predictions and
    of the real frames they predict, and the returns that really followed those; each iteration
    rl.value_anchor of them join the buffer as critic-only rows, the predicted view valued toward the
    critic's value of the real one at the refill (rl.value_anchor_target='critic') or toward the real
    return ('return'). Logged: anchor_gap and anchor_return_gap, the critic's mean excess value on the
    predicted views over each, before the update.
    """
    roll_kw = ({} if dp is None or state_shardings is None else
               dict(in_shardings=(state_shardings.params, dp.batch_sharding, sharding.replicated(dp.mesh))))
    window = (int(rl.vine_window) or num_chunks) if rl.advantage == "vine" else 0
    horizon = int(rl.vine_horizon) if window else 0
    roll = jax.jit(lambda params, start, key: rollout(policy, params, world, world_params, start, key,
                                                      num_chunks, window, int(rl.group_size), horizon), **roll_kw)
    epoch, critic_epoch = ppo.make_update_fns(policy, rl, optimizer)
    shard_kw = ({} if state_shardings is None else
                dict(in_shardings=(state_shardings, None, None), out_shardings=(state_shardings, None)))
    epoch = jax.jit(epoch, donate_argnums=0, **shard_kw)
    critic_epoch = jax.jit(critic_epoch, donate_argnums=0, **shard_kw)
    values_fn = jax.jit(lambda p, traj, final_obs, alive: ppo.recompute_values(
        policy, p, traj, final_obs, alive))
    buffer_fn = jax.jit(lambda traj, v, b: ppo.make_buffer(traj, v, b, rl))
    value_pairs = jax.jit(lambda p, predicted, real: (policy.value(p, predicted), policy.value(p, real)))
    use_anchor = anchor is not None and int(rl.value_anchor) > 0
    if use_anchor:   # on the device once; each iteration gathers its rows there
        anchor = jax.tree.map(jnp.asarray, anchor)

    def iteration(state: ppo.PPOState, i: int):
        key = jax.random.fold_in(jax.random.PRNGKey(seed), i)
        roll_key, warm_key, epoch_key = jax.random.split(key, 3)
        start = start_fn(i)
        if dp is not None:
            start = jax.device_put(start, dp.batch_sharding)
        traj, bootstrap, final = roll(state.params, start, roll_key)
        alive = has_future(world, traj, final)
        fixed = None if bootstrap_fn is None else bootstrap_fn(final) * alive
        values = traj.value
        if window:
            # vine's deterministic chunks store no value; the critic's targets (GAE returns) and its
            # clipped loss need one, from the critic that sampled the branches
            values, bootstrap = values_fn(state.params, traj, world.observe(final), alive)
        bootstrap = bootstrap if fixed is None else fixed
        anchored, anchor_metrics = (lambda b: b), {}
        if use_anchor:
            n = len(jax.tree.leaves(anchor["real"])[0])
            idx = np.random.default_rng([seed, i, 0xA7]).integers(0, n, int(rl.value_anchor))
            predicted = jax.tree.map(lambda x: x[idx], anchor["predicted"])
            v_predicted, v_real = value_pairs(state.params, predicted, jax.tree.map(lambda x: x[idx], anchor["real"]))
            real_return = anchor["returns"][idx]
            target = real_return if rl.value_anchor_target == "return" else v_real
            anchored = lambda b: ppo.with_value_rows(b, predicted, target, v_predicted)  # noqa: E731
            anchor_metrics = {"anchor_gap": jnp.mean(v_predicted - v_real),
                              "anchor_return_gap": jnp.mean(v_predicted - real_return)}
        buffer = anchored(buffer_fn(traj, values, bootstrap))
        # how well the critic that sampled the branches predicted their returns (on the chunks it
        # valued: vine's deterministic chunks store no value)
        returns = buffer.returns[:traj.value.size].reshape(traj.value.shape)   # the anchor's rows follow
        metrics = {"explained_variance": ppo.explained_variance(traj.value, returns, traj.mask & traj.sampled),
                   **anchor_metrics}
        for e in range(rl.critic_warmup_epochs):
            state, m = critic_epoch(state, buffer, jax.random.fold_in(warm_key, e))
            metrics["warmup_value_loss"] = m["value_loss"]
        # The first critic_warmup_iterations refills train the critic alone, on the returns collected.
        for e in range(rl.epochs if i >= rl.critic_warmup_iterations else 0):
            if rl.recompute_values and (e > 0 or rl.critic_warmup_epochs > 0):
                values, boot = values_fn(state.params, traj, world.observe(final), alive)
                buffer = anchored(buffer_fn(traj, values, boot if fixed is None else fixed))
            state, m = epoch(state, buffer, jax.random.fold_in(epoch_key, e))
            metrics.update(m)
            metrics["epochs_run"] = e + 1
            if rl.target_kl and float(m["approx_kl"]) > rl.target_kl:
                break   # the policy moved far enough from the sampling one for this refill
        metrics.update(exploration_metrics(traj, int(rl.group_size)))
        metrics.update({
            "branch_success": jnp.mean(traj.terminal.any(axis=0)),
            "branch_return": jnp.mean(traj.step_rewards.sum(axis=(0, 2))),
            "chunks_taken": jnp.mean(traj.mask.sum(axis=0)),
            # steps the branches took (the simulator also steps finished branches, and discards them);
            # in the world model they are imagined, not real
            ("imagined_steps_taken" if isinstance(world, ModelWorld) else "env_steps_taken"):
                traj.mask.sum() * traj.actions.shape[2],
            "value_mean": jnp.mean(traj.value),
            # the value the advantages add where a branch stops short (critic or fixed)
            "bootstrap_mean": jnp.sum(bootstrap * alive) / jnp.maximum(jnp.sum(alive), 1),
        })
        return state, metrics

    return iteration


def exploration_metrics(traj, group_size: int) -> dict:
    """How much the sampled branches of one start state differ: with groups (group_size > 1),
    'mixed_groups' (fraction of groups whose branches' returns differ: the states PPO can learn
    from) and the within-group std of the first chunk's actions in env units, averaged over the
    position (dims 0-2), rotation (3-5) and gripper (6) dims."""
    if group_size < 2:
        return {}
    b = traj.mask.shape[1]
    returns = traj.step_rewards.sum(axis=(0, 2)).reshape(b // group_size, group_size)
    first = traj.actions[0].reshape((b // group_size, group_size) + traj.actions.shape[2:])  # [G, n, k, 7]
    spread = first.std(axis=1).mean(axis=(0, 1))                                              # [7]
    return {"mixed_groups": jnp.mean(returns.max(axis=1) > returns.min(axis=1)),
            "spread_pos": spread[:3].mean(), "spread_rot": spread[3:6].mean(), "spread_grip": spread[6:].mean()}
