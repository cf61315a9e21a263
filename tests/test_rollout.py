"""The chunk rollout scan with the simulator as its world equals a plain step-by-step real rollout; the
vine rollout explores one chunk per group and shares the deterministic rest within the group; the
hybrid world takes each half from its own world."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tabletop
from vlambpo_jax import loading
from vlambpo_jax.data.tokenizer import ByteTokenizer
from vlambpo_jax.envs.tabletop import make_env
from vlambpo_jax.models.policy import Policy
from vlambpo_jax.models.world_model import WorldModel
from vlambpo_jax.rl import ppo, toy_world
from vlambpo_jax.rl.rollout import HybridWorld, ImaginedState, ModelWorld, SimWorld, has_future, rollout


@pytest.mark.parametrize("arg", ["smoke", pytest.param("smoke,truth", marks=pytest.mark.slow)])
def test_sim_world_rollout_matches_manual_loop(arg):
    """`truth`: the policy also reads the privileged state, normalized by the world."""
    config = tabletop.get_config(arg)
    env = make_env(config)
    tokenizer = loading.make_tokenizer(config.policy.tokenizer)
    tokens, mask = tokenizer.encode_batch(list(env.instructions), config.data.max_text_len)
    policy = Policy(config, unnormalize=lambda a: a * 0.8, vocab_size=tokenizer.vocab_size)
    normalize_state = (lambda s: s * 3.0 - 0.1) if config.policy.use_state else None
    world = SimWorld(env, tokens, mask, normalize_state)
    b, n = 3, 2
    start = jax.vmap(env.reset)(jax.random.split(jax.random.PRNGKey(0), b), jnp.arange(b) % env.num_tasks)
    params = policy.init(jax.random.PRNGKey(1), jax.tree.map(lambda x: x[:1], world.observe(start)))
    key = jax.random.PRNGKey(2)

    traj, bootstrap, final = jax.jit(lambda p, s, k: rollout(policy, p, world, None, s, k, n))(
        params, start, key)

    # Reference: sample a chunk, step the env k times, one chunk after the other.
    state, step = start, jax.jit(jax.vmap(env.step))
    for c, chunk_key in enumerate(jax.random.split(key, n)):
        ids = np.asarray(state.obs["instruction_id"])
        obs = {"images": state.obs["images"], "tokens": jnp.asarray(tokens[ids]),
               "token_mask": jnp.asarray(mask[ids])}
        if normalize_state is not None:
            obs["state"] = state.obs["state"] * 3.0 - 0.1
        policy_key, _ = jax.random.split(chunk_key)
        sample = policy.sample_sde(params, obs, policy_key)
        np.testing.assert_array_equal(np.asarray(traj.obs["images"][c]), np.asarray(obs["images"]))
        np.testing.assert_allclose(np.asarray(traj.log_prob[c]), np.asarray(sample.log_prob), rtol=1e-5, atol=1e-4)
        actions = np.asarray(sample.actions) * 0.8
        np.testing.assert_allclose(np.asarray(traj.actions[c]), actions, rtol=1e-5, atol=1e-5)
        rewards = []
        for t in range(config.chunk_size):
            state = step(state, jnp.asarray(actions[:, t]))
            rewards.append(np.asarray(state.reward))
        np.testing.assert_allclose(np.asarray(traj.step_rewards[c]), np.stack(rewards, 1), atol=1e-6)
    np.testing.assert_allclose(np.asarray(final.data.qpos), np.asarray(state.data.qpos), atol=1e-5)
    np.testing.assert_array_equal(np.asarray(final.obs["images"]), np.asarray(state.obs["images"]))
    assert bootstrap.shape == (b,) and np.isfinite(np.asarray(bootstrap)).all()
    assert bool(traj.mask[0].all())


@pytest.mark.slow
def test_sim_world_bootstrap_is_zero_past_the_time_limit():
    """A branch that runs into the episode's time limit has nothing left to bootstrap; one cut short by
    the branch length bootstraps the critic's value of its last observation."""
    config = tabletop.get_config("smoke")
    config.env.horizons.pick = 2 * config.chunk_size
    env = make_env(config)
    tokenizer = loading.make_tokenizer(config.policy.tokenizer)
    tokens, mask = tokenizer.encode_batch(list(env.instructions), config.data.max_text_len)
    policy = Policy(config, unnormalize=lambda a: a * 0.8, vocab_size=tokenizer.vocab_size)
    world = SimWorld(env, tokens, mask)
    b = 3
    start = jax.vmap(env.reset)(jax.random.split(jax.random.PRNGKey(0), b))
    params = policy.init(jax.random.PRNGKey(1), jax.tree.map(lambda x: x[:1], world.observe(start)))
    for n, reaches_limit in [(1, False), (2, True)]:
        traj, bootstrap, final = jax.jit(lambda p, s, k, n=n: rollout(policy, p, world, None, s, k, n))(
            params, start, jax.random.PRNGKey(2))
        alive = ~np.asarray(traj.terminal).any(axis=0)
        assert alive.all(), "a random policy should not succeed here"
        value = np.asarray(policy.value(params, world.observe(final)))
        np.testing.assert_array_equal(np.asarray(world.ended(final)), np.full(b, reaches_limit))
        np.testing.assert_allclose(np.asarray(bootstrap), 0.0 if reaches_limit else value, atol=1e-6)
        assert np.abs(value).min() > 0
        # MBPO's value recomputation between epochs bootstraps the same branches
        _, recomputed = ppo.recompute_values(policy, params, traj, world.observe(final),
                                             has_future(world, traj, final))
        np.testing.assert_allclose(np.asarray(recomputed), np.asarray(bootstrap), atol=1e-6)


@pytest.mark.parametrize("window", [1, 3])
def test_vine_rollout_explores_one_chunk_and_shares_the_rest(window):
    """vine_window=W: each group of consecutive branches explores one chunk, drawn from its first W:
    that chunk is the Flow-SDE sample; every other chunk is the Euler sampler from noise drawn once
    per group (in the toy world the state never changes, so a group's unexplored chunks must be
    identical)."""
    config = tabletop.get_config("smoke")
    policy = Policy(config, unnormalize=lambda a: a * 0.8,
                    vocab_size=loading.make_tokenizer(config.policy.tokenizer).vocab_size)
    d, b, g, n = policy.dims, 8, 2, 3
    start = toy_world.toy_states(b, d.num_views, d.image_size, config.data.max_text_len, d.vocab_size)
    world = toy_world.ToyWorld()
    obs = world.observe(start)
    params = policy.init(jax.random.PRNGKey(1), jax.tree.map(lambda x: x[:1], obs))
    key = jax.random.PRNGKey(2)

    traj, _, _ = jax.jit(lambda p, s, k: rollout(policy, p, world, None, s, k, n, vine_window=window,
                                                 group_size=g))(params, start, key)

    sampled = np.asarray(traj.sampled)
    np.testing.assert_array_equal(sampled.sum(axis=0), np.ones(b))        # one explored chunk per branch
    np.testing.assert_array_equal(sampled[:, ::2], sampled[:, 1::2])      # ... shared by its group
    explored_at = sampled.argmax(axis=0)
    assert explored_at.max() < window
    if window > 1:
        assert len(set(explored_at.tolist())) > 1, explored_at              # groups explore different chunks
    for c, chunk_key in enumerate(jax.random.split(key, n)):
        policy_key, _ = jax.random.split(chunk_key)
        sde = policy.sample_sde(params, obs, policy_key)
        noise = jax.random.normal(policy_key, (b // g, d.chunk_size, d.action_pad_dim))
        euler = policy.sample_actions(params, obs, policy_key, noise=jnp.repeat(noise, g, axis=0))
        here = sampled[c]
        expected = np.where(here[:, None, None], np.asarray(sde.actions), np.asarray(euler)) * 0.8
        np.testing.assert_allclose(traj.actions[c], expected, atol=1e-5)
        np.testing.assert_allclose(traj.log_prob[c], np.where(here, sde.log_prob, 0.0), rtol=1e-5, atol=1e-4)
        for j in range(0, b, g):
            differs = np.abs(np.asarray(traj.actions[c, j] - traj.actions[c, j + 1])).max() > 1e-3
            assert differs == bool(here[j])   # explored chunks differ within a group, the rest do not


class _NeverSucceeds(toy_world.ToyWorld):
    def step(self, params, state, actions, key):
        state, rewards, success = super().step(params, state, actions, key)
        return state, rewards * 0, success & False


def test_vine_horizon_stops_branches_after_their_explored_chunk():
    """vine_horizon=h: a branch takes its chunks up to the explored one and h - 1 more, then stops and
    bootstraps the critic's value of its state; without it the branch runs to the end."""
    config = tabletop.get_config("smoke")
    policy = Policy(config, unnormalize=lambda a: a * 0.8,
                    vocab_size=loading.make_tokenizer(config.policy.tokenizer).vocab_size)
    d, b, g, n, h = policy.dims, 12, 2, 6, 2
    start = toy_world.toy_states(b, d.num_views, d.image_size, config.data.max_text_len, d.vocab_size)
    world = _NeverSucceeds()
    params = policy.init(jax.random.PRNGKey(1), jax.tree.map(lambda x: x[:1], world.observe(start)))
    for horizon in (0, h):
        traj, bootstrap, _ = jax.jit(lambda p, s, k, horizon=horizon: rollout(
            policy, p, world, None, s, k, n, vine_window=n, group_size=g, vine_horizon=horizon))(
            params, start, jax.random.PRNGKey(2))
        explored_at = np.asarray(traj.sampled).argmax(axis=0)
        last = np.minimum(explored_at + h, n) if horizon else np.full(b, n)
        assert horizon == 0 or (last < n).any(), explored_at   # some branches are cut short
        np.testing.assert_array_equal(np.asarray(traj.mask), np.arange(n)[:, None] < last[None, :])
        np.testing.assert_allclose(np.asarray(bootstrap), np.asarray(policy.value(params, world.observe(start))),
                                   atol=1e-6)


def test_hybrid_world_takes_each_half_from_its_world():
    """rl.reward_from: with the world model's views the success is the simulator's, with the
    simulator's views the success is the world model's Yes/No read on them; each half equals its own
    world stepped alone from the same state with the same actions."""
    config = tabletop.get_config("smoke")
    env = make_env(config)
    tokenizer = ByteTokenizer()
    tokens, mask = tokenizer.encode_batch(list(env.instructions), config.data.max_text_len)
    sim = SimWorld(env, tokens, mask)
    wm = WorldModel(config)
    wm_params = wm.init(jax.random.PRNGKey(3))
    b = 2
    sim_start = jax.vmap(env.reset)(jax.random.split(jax.random.PRNGKey(0), b))
    ids = np.asarray(sim_start.obs["instruction_id"])
    wm_tokens, wm_mask = tokenizer.encode_batch([env.instructions[i] for i in ids], config.wm.max_text_len)
    imagined = ImaginedState(images=sim_start.obs["images"], tokens=jnp.asarray(tokens[ids]),
                             token_mask=jnp.asarray(mask[ids]), wm_tokens=jnp.asarray(wm_tokens),
                             wm_token_mask=jnp.asarray(wm_mask))
    actions = jax.random.uniform(jax.random.PRNGKey(1), (b, config.chunk_size, 7), minval=-1.0, maxval=1.0)
    key = jax.random.PRNGKey(2)
    sim_next, sim_rewards, sim_success = jax.jit(sim.step)(None, sim_start, actions, key)
    predicted = jax.jit(ModelWorld(wm).advance)(wm_params, imagined, actions, key)
    assert not np.asarray(sim_success).any(), "random actions should not succeed"
    reward = jax.jit(wm.reward)
    p_real = np.asarray(reward(wm_params, sim_next.obs["images"], imagined.wm_tokens, imagined.wm_token_mask))
    p_pred = np.asarray(reward(wm_params, predicted.images, imagined.wm_tokens, imagined.wm_token_mask))
    j = int(np.argmax(np.abs(p_real - p_pred)))
    assert abs(p_real[j] - p_pred[j]) > 1e-4

    # threshold 0: the world model calls every chunk a success, the simulator none
    seen_model = HybridWorld(sim, ModelWorld(wm, threshold=0.0), views="model")
    (s, i), rewards, success = jax.jit(seen_model.step)(wm_params, (sim_start, imagined), actions, key)
    np.testing.assert_array_equal(np.asarray(seen_model.observe((s, i))["images"]), np.asarray(predicted.images))
    np.testing.assert_array_equal(np.asarray(rewards), np.asarray(sim_rewards))
    np.testing.assert_array_equal(np.asarray(success), np.asarray(sim_success))
    np.testing.assert_array_equal(np.asarray(seen_model.ended((s, i))), np.asarray(sim.ended(sim_next)))

    # threshold between the two reads of branch j: it tells real views from predicted ones
    for threshold in (0.0, float(p_real[j] + p_pred[j]) / 2):
        seen_sim = HybridWorld(sim, ModelWorld(wm, threshold), views="sim")
        (s, i), rewards, success = jax.jit(seen_sim.step)(wm_params, (sim_start, imagined), actions, key)
        np.testing.assert_array_equal(np.asarray(seen_sim.observe((s, i))["images"]),
                                      np.asarray(sim_next.obs["images"]))
        np.testing.assert_array_equal(np.asarray(success), p_real > threshold)
        np.testing.assert_array_equal(np.asarray(rewards[:, -1]), (p_real > threshold).astype(np.float32))
        assert not np.asarray(rewards[:, :-1]).any()
