"""The paper's bound coefficients (gamma 0.99, k 10, n 2: about 18916 -> 400) and adaptive n."""
import pytest

from vlambpo_jax.rl import theory


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
