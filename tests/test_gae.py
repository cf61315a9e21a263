"""Chunk-level GAE against a plain-numpy reference with terminations and masks; group-relative and
vine advantages and the critic's explained variance by hand."""
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from vlambpo_jax.rl import gae, ppo
from vlambpo_jax.rl.rollout import Transitions


def _reference(step_rewards, values, bootstrap, terminals, mask, gamma, lam, variant):
    T, B, k = step_rewards.shape
    adv = np.zeros((T, B))
    for b in range(B):
        running = 0.0
        for t in reversed(range(T)):
            if variant == "paper":
                r = sum(gamma ** j * step_rewards[t, b, j] for j in range(k))
                disc = gamma ** k
            else:
                r = step_rewards[t, b].max()
                disc = gamma
            v_next = values[t + 1, b] if t + 1 < T else bootstrap[b]
            cont = 0.0 if terminals[t, b] else disc
            delta = r + cont * v_next - values[t, b]
            running = delta + cont * lam * running
            running *= mask[t, b]
            adv[t, b] = running
    return adv


@pytest.mark.parametrize("variant", ["paper", "code"])
def test_matches_numpy_reference(variant):
    rng = np.random.default_rng(0)
    T, B, k = 5, 7, 10
    step_rewards = (rng.random((T, B, k)) < 0.05).astype(np.float32)
    values = rng.normal(size=(T, B)).astype(np.float32)
    bootstrap = rng.normal(size=(B,)).astype(np.float32)
    terminals = rng.random((T, B)) < 0.2
    # Latched termination: chunks after the first terminal one are masked out.
    mask = np.cumsum(np.concatenate([np.zeros((1, B)), terminals[:-1]], 0), 0) == 0
    r, disc = gae.chunk_rewards_and_discount(step_rewards, 0.99, variant)
    adv, ret = gae.chunk_gae(r, values, bootstrap, terminals, mask, disc, 0.95)
    expected = _reference(step_rewards, values, bootstrap, terminals, mask, 0.99, 0.95, variant)
    np.testing.assert_allclose(np.asarray(adv), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(ret), (expected + values) * mask, rtol=1e-5, atol=1e-5)


def test_single_success_chunk_by_hand():
    # One chunk, success on step 3 (index 2): paper reward gamma^2, no bootstrap after a terminal.
    step_rewards = np.zeros((1, 1, 10), np.float32)
    step_rewards[0, 0, 2] = 1.0
    r, disc = gae.chunk_rewards_and_discount(step_rewards, 0.9, "paper")
    adv, _ = gae.chunk_gae(r, np.array([[0.5]]), np.array([7.0]), np.array([[True]]),
                           np.array([[True]]), disc, 0.95)
    assert float(adv[0, 0]) == pytest.approx(0.81 - 0.5)


def test_normalize_ignores_masked():
    adv = np.array([[1.0, 3.0, 100.0]])
    mask = np.array([[True, True, False]])
    out = np.asarray(gae.normalize_advantages(adv, mask))
    np.testing.assert_allclose(out, [[-1.0, 1.0, 0.0]], atol=1e-6)


def _transitions(step_rewards, mask, sampled=None):
    """Transitions with only the fields the advantage functions read."""
    t, b = mask.shape
    sampled = np.ones((t, b), bool) if sampled is None else sampled
    return Transitions(obs={}, chain={}, actions=np.zeros((t, b, 1, 7), np.float32), log_prob=np.zeros((t, b)),
                       value=np.zeros((t, b)), step_rewards=jnp.asarray(step_rewards, jnp.float32),
                       terminal=jnp.asarray(step_rewards.sum(-1) > 0), mask=jnp.asarray(mask),
                       sampled=jnp.asarray(sampled))


def test_group_relative_advantages_by_hand():
    # 2 chunks, 6 branches in 2 groups of 3. Group 0: branch 0 succeeds in chunk 0 (then masked),
    # branches 1, 2 fail -> mean 1/3; group 1: all fail -> degenerate.
    rewards = np.zeros((2, 6, 2), np.float32)
    rewards[0, 0, 1] = 1.0
    mask = np.ones((2, 6), bool)
    mask[1, 0] = False
    adv, mixed = ppo.group_relative_advantages(_transitions(rewards, mask), group_size=3)
    expected = np.array([[2 / 3, -1 / 3, -1 / 3, 0, 0, 0], [0, -1 / 3, -1 / 3, 0, 0, 0]])
    np.testing.assert_allclose(adv, expected, atol=1e-6)
    np.testing.assert_array_equal(mixed, [True, True, True, False, False, False])


def test_group_advantages_add_the_bootstrap_of_short_branches():
    # 1 chunk, 4 branches in 2 groups of 2. Group 0: branch 0 succeeds (its bootstrap is zero: it
    # terminated), branch 1 stops with value 0.4 -> returns 1, 0.4. Group 1: no success, values
    # 0.2 and 0.6 -> mixed through the critic alone.
    rewards = np.zeros((1, 4, 2), np.float32)
    rewards[0, 0, 1] = 1.0
    bootstrap = jnp.array([0.0, 0.4, 0.2, 0.6])
    adv, mixed = ppo.group_relative_advantages(_transitions(rewards, np.ones((1, 4), bool)), 2, bootstrap)
    np.testing.assert_allclose(adv, [[0.3, -0.3, -0.2, 0.2]], atol=1e-6)
    np.testing.assert_array_equal(mixed, [True] * 4)


def test_explained_variance_by_hand():
    returns = jnp.array([1.0, 0.0, 1.0, 0.0, 5.0])
    mask = jnp.array([True, True, True, True, False])
    assert float(ppo.explained_variance(returns, returns, mask)) == pytest.approx(1.0)
    assert float(ppo.explained_variance(jnp.full(5, 0.5), returns, mask)) == pytest.approx(0.0, abs=1e-6)
    # values off by +-0.25 on returns of variance 0.25 -> 1 - 0.0625 / 0.25
    values = jnp.array([0.75, 0.25, 1.25, -0.25, 0.0])
    assert float(ppo.explained_variance(values, returns, mask)) == pytest.approx(0.75, abs=1e-6)


def test_vine_advantages_train_the_explored_chunk_of_mixed_groups():
    # 3 chunks, 4 branches in 2 groups of 2. Group 0 explores chunk 1; branch 0 succeeds in chunk 2,
    # branch 1 never (mixed). Group 1 explores chunk 0; both succeed in chunk 1 (degenerate).
    rewards = np.zeros((3, 4, 2), np.float32)
    rewards[2, 0, 1] = rewards[1, 2, 1] = rewards[1, 3, 1] = 1.0
    mask = np.ones((3, 4), bool)
    mask[2, 2:] = False
    c = ml_collections.ConfigDict(dict(advantage="vine", advantage_bootstrap=True, group_size=2, gamma=0.99,
                                       gae_lambda=0.95, gae_variant="paper", normalize_advantages=True))
    sampled = np.zeros((3, 4), bool)
    sampled[1, :2] = sampled[0, 2:] = True
    traj = _transitions(rewards, mask, sampled)
    adv, _, policy_mask = ppo.compute_targets(traj, jnp.zeros((3, 4)), jnp.zeros(4), c)
    np.testing.assert_allclose(adv, [[0, 0, 0, 0], [0.5, -0.5, 0, 0], [0, 0, 0, 0]], atol=1e-6)
    np.testing.assert_array_equal(policy_mask, [[False] * 4, [True, True, False, False], [False] * 4])


def test_group_advantage_without_the_bootstrap_scores_rewards_alone():
    # one chunk, 2 groups of 2 that end alive: group 0 differs only in the critic's value of the
    # last state, group 1 by a success
    rewards = np.zeros((1, 4, 2), np.float32)
    rewards[0, 2, 1] = 1.0
    traj = _transitions(rewards, np.ones((1, 4), bool))
    bootstrap = jnp.array([0.4, 0.2, 0.3, 0.3])
    c = ml_collections.ConfigDict(dict(advantage="group", advantage_bootstrap=True, group_size=2, gamma=0.99,
                                       gae_lambda=0.95, gae_variant="paper", normalize_advantages=True))
    adv, returns, policy_mask = ppo.compute_targets(traj, jnp.zeros((1, 4)), bootstrap, c)
    np.testing.assert_allclose(adv, [[0.1, -0.1, 0.5, -0.5]], atol=1e-6)
    np.testing.assert_array_equal(policy_mask, [[True] * 4])
    c.advantage_bootstrap = False
    adv_off, returns_off, policy_mask = ppo.compute_targets(traj, jnp.zeros((1, 4)), bootstrap, c)
    np.testing.assert_allclose(adv_off, [[0.0, 0.0, 0.5, -0.5]], atol=1e-6)
    np.testing.assert_array_equal(policy_mask, [[False, False, True, True]])
    np.testing.assert_array_equal(returns_off, returns)   # the critic's targets keep the bootstrap
