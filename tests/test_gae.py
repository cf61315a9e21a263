"""Chunk-level GAE against a plain-numpy reference with terminations and masks."""
import numpy as np
import pytest

from vlambpo_jax.rl import gae


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
