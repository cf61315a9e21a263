"""PPO update plumbing on a tiny policy: which parameter groups move, critic-only warm-up."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import tabletop
from vlambpo_jax import loading
from vlambpo_jax.models.policy import Policy
from vlambpo_jax.rl import ppo
from vlambpo_jax.rl.rollout import Transitions


def rl_config(**kw):
    c = ml_collections.ConfigDict(dict(
        gamma=0.99, gae_lambda=0.95, gae_variant="paper", normalize_advantages=True, clip=0.1,
        clip_negative=0.1, value_clip=0.5, huber_delta=10.0, value_coef=1.0, actor_lr=1e-3,
        critic_lr=1e-3, b1=0.9, b2=0.95, weight_decay=0.0, grad_clip=1.0, train_vlm=False, vlm_lr=0.0,
        minibatch_size=4, advantage="gae", group_size=1))
    c.update(kw)
    return c


@pytest.fixture(scope="module")
def setup():
    config = tabletop.get_config("smoke")
    policy = Policy(config, loading.make_tokenizer(config.policy.tokenizer).vocab_size)
    T, B, size = 2, 4, config.image_size
    rng = np.random.default_rng(0)
    obs = {"images": jnp.asarray(rng.integers(0, 255, (T * B, 2, size, size, 3), np.uint8)),
           "tokens": jnp.ones((T * B, 8), jnp.int32), "token_mask": jnp.ones((T * B, 8), bool)}
    params = policy.init(jax.random.PRNGKey(0), jax.tree.map(lambda x: x[:1], obs))
    sample = policy.sample_sde(params, obs, jax.random.PRNGKey(1))
    unflat = lambda x: x.reshape((T, B) + x.shape[1:])
    rewards = np.zeros((T, B, config.chunk_size), np.float32)
    rewards[1, :2, -1] = 1.0
    traj = Transitions(obs=jax.tree.map(unflat, obs), chain=jax.tree.map(unflat, sample.chain),
                       actions=unflat(sample.actions), log_prob=unflat(sample.log_prob),
                       value=unflat(sample.value), step_rewards=jnp.asarray(rewards),
                       terminal=jnp.asarray(rewards.sum(-1) > 0), mask=jnp.ones((T, B), bool),
                       sampled=jnp.ones((T, B), bool))
    return policy, params, traj


def _changed(a, b):
    return any(not np.allclose(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.mark.parametrize("train_vlm", [False, True])
def test_epoch_moves_the_right_groups(setup, train_vlm):
    policy, params, traj = setup
    c = rl_config(train_vlm=train_vlm)
    opt = ppo.make_optimizer(c, params)
    buffer = ppo.make_buffer(traj, traj.value, jnp.zeros(traj.mask.shape[1]), c)
    epoch, critic_epoch = ppo.make_update_fns(policy, c, opt)
    state = ppo.init_state(c, opt, params)
    new, metrics = jax.jit(epoch)(state, buffer, jax.random.PRNGKey(2))
    assert int(new.step) == 2 and np.isfinite(float(metrics["loss"]))
    assert _changed(params["action_expert"], new.params["action_expert"])
    assert _changed(params["value_head"], new.params["value_head"])
    assert _changed(params["vlm"], new.params["vlm"]) == train_vlm

    warm, _ = jax.jit(critic_epoch)(state, buffer, jax.random.PRNGKey(2))
    assert _changed(params["value_head"], warm.params["value_head"])
    assert not _changed(params["action_expert"], warm.params["action_expert"])
    assert not _changed(params["vlm"], warm.params["vlm"])
    # The actor's and the VLM's AdamW moments are untouched by critic-only steps; a frozen VLM has none.
    assert ("vlm" in state.opt_state[1].inner_states) == train_vlm
    for group in ("actor", "vlm") if train_vlm else ("actor",):
        assert not _changed(state.opt_state[1].inner_states[group], warm.opt_state[1].inner_states[group])
    assert _changed(state.opt_state[1].inner_states["critic"], warm.opt_state[1].inner_states["critic"])


def test_first_update_ratio_is_one(setup):
    policy, params, traj = setup
    c = rl_config()
    buffer = ppo.make_buffer(traj, traj.value, jnp.zeros(traj.mask.shape[1]), c)
    logp = policy.log_prob(params, buffer.obs, buffer.chain)
    np.testing.assert_allclose(np.asarray(logp), np.asarray(buffer.old_log_prob), rtol=1e-4, atol=1e-3)


def test_vlm_trains_at_its_own_learning_rate(setup):
    """Adam's first steps move every parameter by about its lr (m / sqrt(v) = +-1): two steps move the
    VLM by at most 2 x vlm_lr while the action expert moves by the actor's lr."""
    policy, params, traj = setup
    c = rl_config(train_vlm=True, actor_lr=1e-3, vlm_lr=1e-6)
    opt = ppo.make_optimizer(c, params)
    buffer = ppo.make_buffer(traj, traj.value, jnp.zeros(traj.mask.shape[1]), c)
    epoch, _ = ppo.make_update_fns(policy, c, opt)
    new, _ = jax.jit(epoch)(ppo.init_state(c, opt, params), buffer,
                            jax.random.PRNGKey(2))
    assert int(new.step) == 2
    moved = lambda group: max(float(np.abs(np.asarray(a) - np.asarray(b)).max())  # noqa: E731
                              for a, b in zip(jax.tree.leaves(params[group]), jax.tree.leaves(new.params[group])))
    assert 0 < moved("vlm") <= 2.05e-6
    assert moved("action_expert") > 1e-4


def test_value_rows_train_the_critic_alone(setup):
    """ppo.with_value_rows (rl.value_anchor's rows): the critic's value at the rows' observations
    follows their targets, and the actor's update is the one the original rows alone give."""
    policy, params, traj = setup
    c = rl_config(minibatch_size=8)           # one minibatch of the 8 original rows (+ 4 value rows)
    opt = ppo.make_optimizer(c, params)
    buffer = ppo.make_buffer(traj, traj.value, jnp.zeros(traj.mask.shape[1]), c)
    rows = jax.tree.map(lambda x: x[:4], buffer.obs)
    rng = np.random.default_rng(1)
    rows["images"] = jnp.asarray(rng.integers(0, 255, rows["images"].shape, np.uint8))
    v0 = policy.value(params, rows)
    epoch, critic_epoch = (jax.jit(f) for f in ppo.make_update_fns(policy, c, opt))
    state = ppo.init_state(c, opt, params)
    moved = {}
    for shift in (-1.0, 1.0):
        s = state
        anchored = ppo.with_value_rows(buffer, rows, v0 + shift, v0)
        assert anchored.mask.shape == (12,) and not anchored.policy_mask[8:].any()
        for e in range(10):
            s, _ = critic_epoch(s, anchored, jax.random.PRNGKey(e))
        moved[shift] = float(jnp.mean(policy.value(s.params, rows) - v0))
    assert moved[1.0] > moved[-1.0] + 0.05, moved
    plain, _ = epoch(state, buffer, jax.random.PRNGKey(7))
    anchored, _ = epoch(state, ppo.with_value_rows(buffer, rows, v0 + 1.0, v0), jax.random.PRNGKey(7))
    for a, b in zip(*(jax.tree.leaves(s.params["action_expert"]) for s in (plain, anchored))):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)
    assert _changed(plain.params["value_head"], anchored.params["value_head"])
