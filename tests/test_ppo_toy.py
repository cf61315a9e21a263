"""PPO learns in a world with a known answer (rl/toy_world.py): a chunk succeeds when its mean x action
is positive. From a fresh policy (about half the chunks succeed) success must pass 90%: the policy
gradient has the right sign, and the Flow-SDE sampler explores enough to find it."""
import jax
import numpy as np
import pytest

from configs import tabletop
from vlambpo_jax import loading
from vlambpo_jax.config_checks import validate
from vlambpo_jax.models.policy import Policy
from vlambpo_jax.rl import ppo, rollout, toy_world


# 'vine' over 2 chunks: only the first chunk is explored and trained; the second is the group's shared
# deterministic continuation, so it must learn from the first chunk alone. Where that continuation
# succeeds, the group carries no signal (about half the groups at the start), hence more iterations.
@pytest.mark.parametrize("stochastic_step,advantage,group_size,num_chunks,iterations",
                         [("per_sample", "gae", 1, 1, 20), ("all", "group", 8, 1, 20), ("all", "vine", 8, 2, 40)])
def test_ppo_raises_toy_success_above_90_percent(stochastic_step, advantage, group_size, num_chunks, iterations):
    config = tabletop.get_config("smoke")
    config.rl.update(dict(num_branches=64, minibatch_size=32, epochs=4, critic_warmup_epochs=1, actor_lr=1e-3,
                          advantage=advantage, group_size=group_size))
    config.policy.log_prob = "mean"
    config.policy.stochastic_step = stochastic_step
    validate(config)
    policy = Policy(config, loading.make_tokenizer(config.policy.tokenizer).vocab_size)
    history = toy_world.run_ppo(policy, config.rl, iterations=iterations, num_chunks=num_chunks)
    # success of the first chunk (a branch that succeeds there takes 1 chunk, otherwise 2)
    success = np.array([h["branch_success"] if num_chunks == 1 else 2 - h["chunks_taken"] for h in history])
    assert 0.2 < success[:3].mean() < 0.8, success       # the policy starts undecided
    assert success[-5:].mean() >= 0.9, success            # and learns the answer
    assert all(np.isfinite(h["approx_kl"]) for h in history)
    clip = np.array([h["clip_frac"] for h in history])
    # vine: a minibatch holds few mixed groups, so one iteration's fraction is noisy; its mean is bounded
    assert (clip.mean() if advantage == "vine" else clip.max()) < 0.5, clip


def test_toy_world_scores_the_mean_action():
    world = toy_world.ToyWorld(dim=0)
    state = toy_world.toy_states(3, 2, 8, 6, vocab_size=10)
    actions = np.zeros((3, 4, 7), np.float32)
    actions[0, :, 0] = [1, 1, -1, 0]      # mean +0.25: success
    actions[1, :, 0] = [1, -1, -1, 0]     # mean -0.25: failure
    actions[2, :, 1] = 5.0                # another dim only: failure
    _, rewards, success = world.step(None, state, actions, None)
    np.testing.assert_array_equal(success, [True, False, False])
    np.testing.assert_array_equal(rewards[:, -1], [1, 0, 0])
    assert float(np.abs(rewards[:, :-1]).sum()) == 0
    assert world.observe(state)["images"].shape == (3, 2, 8, 8, 3)


def test_target_kl_stops_the_epochs_of_a_refill():
    config = tabletop.get_config("smoke")
    config.rl.update(dict(num_branches=16, minibatch_size=8, epochs=4, actor_lr=1e-3))
    policy = Policy(config, loading.make_tokenizer(config.policy.tokenizer).vocab_size)
    assert [h["epochs_run"] for h in toy_world.run_ppo(policy, config.rl, iterations=2)] == [4, 4]
    config.rl.target_kl = 1e-12   # the second minibatch of the first epoch already sees a moved policy
    assert [h["epochs_run"] for h in toy_world.run_ppo(policy, config.rl, iterations=2)] == [1, 1]


def test_vine_buffer_values_every_chunk_the_branches_took(monkeypatch):
    """Vine's deterministic chunks store no value at sampling time; the buffer the critic first trains
    on (its warm-up epoch, and the critic-only refills) must carry the critic's value of them, not 0."""
    config = tabletop.get_config("smoke")
    config.rl.update(dict(num_branches=8, minibatch_size=8, epochs=1, critic_warmup_epochs=1,
                          advantage="vine", group_size=4, vine_window=0))
    policy = Policy(config, loading.make_tokenizer(config.policy.tokenizer).vocab_size)
    seen = []
    make_buffer = ppo.make_buffer

    def spy(traj, values, bootstrap, rl_config):
        jax.debug.callback(lambda v, s, m: seen.append((np.asarray(v), np.asarray(s), np.asarray(m))),
                           values, traj.sampled, traj.mask)
        return make_buffer(traj, values, bootstrap, rl_config)

    monkeypatch.setattr(ppo, "make_buffer", spy)
    toy_world.run_ppo(policy, config.rl, iterations=1, num_chunks=3)
    values, sampled, mask = seen[0]       # the first buffer of the refill, before any update
    deterministic = mask & ~sampled
    assert deterministic.any() and sampled.any()
    assert np.all(np.abs(values[deterministic]) > 0), values
    # a toy branch's observation never changes, so its chunks' values equal its sampled chunk's
    for j in range(values.shape[1]):
        np.testing.assert_allclose(values[mask[:, j], j], values[sampled[:, j], j][0], rtol=1e-4)


def _toy_vine_buffer(config):
    """-> (policy, params, trajectory, PPO buffer): 16 toy branches in groups of 4, 3 chunks each, one
    explored chunk per branch."""
    policy = Policy(config, loading.make_tokenizer(config.policy.tokenizer).vocab_size)
    world, d = toy_world.ToyWorld(), policy.dims
    start = toy_world.toy_states(16, d.num_views, d.image_size, int(config.data.max_text_len), d.vocab_size)
    params = policy.init(jax.random.PRNGKey(0), jax.tree.map(lambda x: x[:1], world.observe(start)))
    traj, bootstrap, _ = rollout.rollout(policy, params, world, None, start, jax.random.PRNGKey(1), 3,
                                         vine_window=3, group_size=4)
    buffer = ppo.make_buffer(traj, traj.value, bootstrap, config.rl)
    return policy, params, traj, buffer


def test_vine_actor_rows_give_the_full_buffers_update():
    """Vine re-scores only each branch's explored chunk (Buffer.actor_rows). In one minibatch that must
    be the same update as scoring every row, since the surrogate's mask is zero on the others; a wrong
    row (another chunk of the branch, another branch) changes the advantages it pairs with the chain."""
    config = tabletop.get_config("smoke")
    config.rl.update(dict(num_branches=16, minibatch_size=64, actor_lr=1e-3, advantage="vine", group_size=4,
                          vine_window=0))
    policy, params, traj, buffer = _toy_vine_buffer(config)
    explored = np.asarray(traj.sampled).reshape(-1)
    assert sorted(np.asarray(buffer.actor_rows)) == list(np.flatnonzero(explored))
    assert not np.asarray(buffer.policy_mask)[~explored].any() and np.asarray(buffer.policy_mask).any()
    opt = ppo.make_optimizer(config.rl, params)
    epoch, _ = ppo.make_update_fns(policy, config.rl, opt)
    key = jax.random.PRNGKey(2)
    subset, m_subset = jax.jit(epoch)(ppo.init_state(config.rl, opt, params), buffer, key)
    full, m_full = jax.jit(epoch)(ppo.init_state(config.rl, opt, params), buffer.replace(actor_rows=None), key)
    for name in ("policy_loss", "value_loss", "grad_norm"):
        np.testing.assert_allclose(float(m_subset[name]), float(m_full[name]), rtol=1e-4, atol=1e-7)
    for a, b in zip(jax.tree.leaves(subset.params), jax.tree.leaves(full.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
    assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(params["action_expert"]),
                                                    jax.tree.leaves(subset.params["action_expert"])))


def test_a_vine_buffer_with_fewer_explored_chunks_than_minibatches_runs_one_minibatch_per_chunk():
    """Whole episodes with one explored chunk each (online vine) can hold fewer actor rows than
    rl.minibatch_size makes minibatches: the epoch then runs as many minibatches as actor rows, the same
    update as the minibatch size that gives exactly that many."""
    config = tabletop.get_config("smoke")
    config.rl.update(dict(num_branches=16, actor_lr=1e-3, advantage="vine", group_size=4, vine_window=0))
    policy, params, _, buffer = _toy_vine_buffer(config)
    rows, actors = buffer.mask.shape[0], len(buffer.actor_rows)
    assert rows > actors and rows // (rows // actors) == actors
    results = []
    for minibatch_size in (1, rows // actors):
        config.rl.minibatch_size = minibatch_size
        opt = ppo.make_optimizer(config.rl, params)
        epoch, _ = ppo.make_update_fns(policy, config.rl, opt)
        results.append(jax.jit(epoch)(ppo.init_state(config.rl, opt, params), buffer, jax.random.PRNGKey(2))[0])
    assert int(results[0].step) == int(results[1].step) == actors
    for a, b in zip(jax.tree.leaves(results[0].params), jax.tree.leaves(results[1].params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)
