"""The paper's bound coefficients (gamma 0.99, k 10, n 2: about 18916 -> 400), adaptive n and the
model-error measurement it is chosen from."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlambpo_jax.rl import branch_length, theory


def test_paper_example_coefficients():
    full = theory.full_horizon_step_model_bound(0.99, 10, eps_pi=0.0, eps_m=1.0)
    branched = theory.branched_chunk_model_bound(0.99, 10, 2, eps_pi=0.0, eps_m=1.0)
    g = 0.99 ** 10
    assert full["model_coef"] == pytest.approx(200 * 10 * g / (1 - g))
    assert full["model_coef"] == pytest.approx(18916, abs=1)                      # the paper's figure
    assert branched["model_coef"] == pytest.approx(400)
    assert branched["bound"] == pytest.approx(400)


def test_policy_coefficients_by_hand():
    g = 0.9 ** 2
    full = theory.full_horizon_step_model_bound(0.9, 2, eps_pi=1.0, eps_m=0.0)
    assert full["bound"] == pytest.approx(20 * (2 * g / (1 - g) + 2))
    br = theory.branched_chunk_model_bound(0.9, 2, 3, eps_pi=1.0, eps_m=0.0)
    assert br["bound"] == pytest.approx(20 * (g ** 4 / (1 - g) + g ** 3))


def test_adaptive_branch_length():
    # Linear error growth: the policy term favours long branches, the model term short ones.
    n, bounds = theory.choose_branch_length(0.99, 10, eps_pi=0.2, eps_m_by_n=[0.01 * n for n in range(1, 9)])
    assert 1 < n < 8 and bounds[n - 1] == min(bounds)
    n_exact, _ = theory.choose_branch_length(0.99, 10, eps_pi=0.2, eps_m_by_n=[0.0] * 8)
    assert n_exact == 8                      # a perfect model: longest branch
    n_bad, _ = theory.choose_branch_length(0.99, 10, eps_pi=0.0, eps_m_by_n=[0.1] * 8)
    assert n_bad == 1                        # no policy shift: shortest branch


def _reward(images, tokens, token_mask):
    """A stand-in Yes/No reward: the mean brightness of the wrist view."""
    return images[:, 1].astype(jnp.float32).mean(axis=(1, 2, 3)) / 255.0


def _sequences(r=3, n=3, k=2):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (r, n + 1, 2, 4, 4, 3)).astype(np.uint8)
    return images, rng.normal(size=(r, n, k, 7)).astype(np.float32), np.zeros((r, 5), np.int32), np.ones((r, 5), bool)


def test_model_error_is_zero_for_a_perfect_model_and_the_reward_gap_for_a_frozen_one():
    images, actions, tok, mask = _sequences()
    real = {a.tobytes(): i for i, a in enumerate(np.moveaxis(actions, 1, 0))}

    def perfect(cur, tokens, token_mask, acts, key):  # looks up the real next frames of that chunk
        return jnp.asarray(images[:, real[np.asarray(acts).tobytes()] + 1])

    tv = branch_length.reward_tv_by_chunks(perfect, _reward, images, actions, tok, mask, jax.random.PRNGKey(0))
    np.testing.assert_allclose(tv, 0.0)
    frozen = branch_length.reward_tv_by_chunks(lambda cur, *a: cur, _reward, images, actions, tok, mask,
                                               jax.random.PRNGKey(0))
    p = np.asarray(_reward(jnp.asarray(images.reshape((-1,) + images.shape[2:])), tok, mask)).reshape(3, 4)
    np.testing.assert_allclose(frozen, np.abs(p[:, 1:] - p[:, :1]).mean(axis=0), rtol=1e-6)


def test_adaptive_choice_divides_the_measured_tv_by_n():
    out = branch_length.choose(np.array([0.02, 0.06, 0.3, 0.4]), 0.99, 10, eps_pi=0.2)
    np.testing.assert_allclose(out["eps_m"], [0.02, 0.03, 0.1, 0.1])
    n, bounds = theory.choose_branch_length(0.99, 10, 0.2, [0.02, 0.03, 0.1, 0.1])
    assert out["branch_chunks"] == n and np.allclose(out["bounds"], bounds)
    # the model term of the chosen n is exactly the TV measured after n chunks
    assert theory.branched_chunk_model_bound(0.99, 10, 3, 0.0, out["eps_m"][2])["bound"] == pytest.approx(200 * 0.3)


def test_logged_sequences_follow_each_episode():
    k, lengths = 2, {7: 7, 9: 4}                # episode 9 is too short for 2 chunks
    rows = [(e, t) for e, n in lengths.items() for t in range(n)]
    samples = {"episode_id": np.array([e for e, _ in rows]), "t": np.array([t for _, t in rows]),
               "images": np.array([e * 100 + t for e, t in rows]),
               "actions": np.array([[e * 100 + t] * k for e, t in rows]),
               "wm_tokens": np.array([[e] for e, _ in rows]), "wm_token_mask": np.ones((len(rows), 1), bool)}
    out = branch_length.logged_sequences(samples, k, num=10, num_chunks=2, seed=0)
    assert sorted(out["images"].tolist()) == [[700, 702, 704], [702, 704, 706]]
    assert all(a[:, 0].tolist() == im[:2].tolist() for a, im in zip(out["actions"], out["images"]))
    assert out["wm_tokens"].ravel().tolist() == [7, 7] and out["env_steps"] == 0
    with pytest.raises(ValueError, match="adaptive_max_chunks"):
        branch_length.logged_sequences(samples, k, num=10, num_chunks=4, seed=0)
