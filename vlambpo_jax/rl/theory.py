"""Value-gap bounds of the paper (Thm 4.1, 4.2) and an adaptive branch length built on Thm 4.2.

Notation: chunk policy pi^k with chunk size k, discount gamma per env step, rewards in [0, r_max],
eps_pi = max TV distance between the data-collecting and the current chunk policy, eps_m = TV error of
the model's transitions (per step for Thm 4.1, per chunk over n-chunk branches for Thm 4.2).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def full_horizon_step_model_bound(gamma: float, k: int, eps_pi: float, eps_m: float,
                                  r_max: float = 1.0) -> dict[str, float]:
    """Thm 4.1 (step-level model, full-horizon rollout): coefficients and the bound.

    |V - V_hat| <= 2 r_max/(1-gamma) [ (2 g/(1-g)) eps_pi + 2 eps_pi + (k g/(1-g)) eps_m ], g = gamma^k.
    For gamma 0.99, k 10 the model coefficient is about 18916 (the paper's figure).
    """
    g = gamma ** k
    pre = 2.0 * r_max / (1.0 - gamma)
    policy_coef = pre * (2.0 * g / (1.0 - g) + 2.0)
    model_coef = pre * k * g / (1.0 - g)
    return {"policy_coef": policy_coef, "model_coef": model_coef,
            "bound": policy_coef * eps_pi + model_coef * eps_m}


def branched_chunk_model_bound(gamma: float, k: int, n: int, eps_pi: float, eps_m: float,
                               r_max: float = 1.0) -> dict[str, float]:
    """Thm 4.2 (chunk-level model, n-chunk branches): coefficients and the bound.

    |V - V_hat| <= 2 r_max/(1-gamma) [ (g^(n+1)/(1-g)) eps_pi + g^n eps_pi + n eps_m ], g = gamma^k.
    """
    g = gamma ** k
    pre = 2.0 * r_max / (1.0 - gamma)
    policy_coef = pre * (g ** (n + 1) / (1.0 - g) + g ** n)
    model_coef = pre * n
    return {"policy_coef": policy_coef, "model_coef": model_coef,
            "bound": policy_coef * eps_pi + model_coef * eps_m}


def choose_branch_length(gamma: float, k: int, eps_pi: float, eps_m_by_n: Sequence[float],
                         r_max: float = 1.0) -> tuple[int, list[float]]:
    """Adaptive branch length: the n minimizing the Thm 4.2 bound.

    eps_m_by_n[i] is the model error measured on held-out real branches of n = i + 1 chunks (it grows
    with n as errors compound). Returns (best n, the bound for every n).
    """
    bounds = [branched_chunk_model_bound(gamma, k, n, eps_pi, e, r_max)["bound"]
              for n, e in enumerate(eps_m_by_n, start=1)]
    return int(np.argmin(bounds)) + 1, bounds
