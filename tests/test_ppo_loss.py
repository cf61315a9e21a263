"""PPO losses and gradients against hand-written numpy references."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlambpo_jax.rl import ppo_loss


def _np_policy_loss(new, old, adv, mask, clip, clip_neg):
    total, count = 0.0, 0.0
    for i in range(len(new)):
        if not mask[i]:
            continue
        r = np.exp(new[i] - old[i])
        eps = clip if adv[i] >= 0 else clip_neg
        total += -min(r * adv[i], np.clip(r, 1 - eps, 1 + eps) * adv[i])
        count += 1
    return total / max(count, 1.0)


def _np_huber(x, d):
    return 0.5 * x * x if abs(x) <= d else d * (abs(x) - 0.5 * d)


def _np_value_loss(v, v_old, ret, mask, vclip, delta):
    total, count = 0.0, 0.0
    for i in range(len(v)):
        if mask[i]:
            vc = v_old[i] + np.clip(v[i] - v_old[i], -vclip, vclip)
            total += max(_np_huber(v[i] - ret[i], delta), _np_huber(vc - ret[i], delta))
            count += 1
    return total / max(count, 1.0)


@pytest.fixture
def batch():
    rng = np.random.default_rng(3)
    n = 12
    return dict(new=rng.normal(0, 0.2, n), old=rng.normal(0, 0.2, n), adv=rng.normal(size=n),
                mask=rng.random(n) < 0.8, v=rng.normal(size=n), v_old=rng.normal(size=n),
                ret=rng.normal(0, 8, n))


def test_policy_loss_and_grad(batch):
    b = batch
    f = lambda new: ppo_loss.policy_loss(new, jnp.asarray(b["old"]), jnp.asarray(b["adv"]),
                                         jnp.asarray(b["mask"]), 0.1, 0.05)[0]
    new = jnp.asarray(b["new"])
    assert float(f(new)) == pytest.approx(_np_policy_loss(b["new"], b["old"], b["adv"], b["mask"], 0.1, 0.05), rel=1e-5)
    # Hand gradient: d/dnew of -r A where unclipped (or clipped but on the favourable side), else 0.
    expected = np.zeros(len(b["new"]))
    count = b["mask"].sum()
    for i in range(len(expected)):
        r = np.exp(b["new"][i] - b["old"][i])
        eps = 0.1 if b["adv"][i] >= 0 else 0.05
        unclipped = r * b["adv"][i] <= np.clip(r, 1 - eps, 1 + eps) * b["adv"][i]
        if b["mask"][i] and (unclipped or 1 - eps <= r <= 1 + eps):
            expected[i] = -r * b["adv"][i] / count
    np.testing.assert_allclose(np.asarray(jax.grad(f)(new)), expected, rtol=1e-4, atol=1e-6)


def test_value_loss_and_grad(batch):
    b = batch
    f = lambda v: ppo_loss.value_loss(v, jnp.asarray(b["v_old"]), jnp.asarray(b["ret"]),
                                      jnp.asarray(b["mask"]), 0.5, 10.0)
    v = jnp.asarray(b["v"])
    assert float(f(v)) == pytest.approx(_np_value_loss(b["v"], b["v_old"], b["ret"], b["mask"], 0.5, 10.0), rel=1e-5)
    eps = 1e-3
    numeric = np.array([(float(f(v.at[i].add(eps))) - float(f(v.at[i].add(-eps)))) / (2 * eps)
                        for i in range(len(b["v"]))])
    np.testing.assert_allclose(np.asarray(jax.grad(f)(v)), numeric, rtol=2e-2, atol=2e-4)


def test_all_masked_is_zero():
    z = jnp.zeros(3)
    loss, _ = ppo_loss.policy_loss(z, z, jnp.ones(3), jnp.zeros(3, bool))
    assert float(loss) == 0.0


def test_masked_entries_cannot_overflow_the_ratio():
    """A masked entry whose log-probs differ by 1000 nats (exp overflows) changes neither the loss nor
    its gradient (the vine continuation stores log-prob 0 for chunks it does not score)."""
    new, old = jnp.array([0.1, 1000.0]), jnp.array([0.0, 0.0])
    adv, mask = jnp.array([1.0, 1.0]), jnp.array([True, False])
    loss_fn = lambda x: ppo_loss.policy_loss(x, old, adv, mask)[0]  # noqa: E731
    np.testing.assert_allclose(loss_fn(new), loss_fn(new.at[1].set(0.0)), rtol=1e-6)
    assert np.isfinite(np.asarray(jax.grad(loss_fn)(new))).all()
