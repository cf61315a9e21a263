"""Tests of the pi0.5-style policy: shapes, attention structure, KV cache, Flow-SDE log-probs, overfitting.

Every test uses the smoke-sized config (one layer per transformer) at batch 2. Parameters are perturbed
away from their initial values because pi0.5's zero-initialised adaRMS gates make the action expert
ignore the prefix at init, which would let mask and cache bugs pass unnoticed.
"""
import copy

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

from configs import tabletop
from vlambpo_jax import loading
from vlambpo_jax.models import policy as policy_lib

B = 2


def _config():
    config = tabletop.get_config("smoke")
    config.policy.tokenizer = "byte"  # _obs draws byte-tokenizer ids
    return config


def _obs(seed=0, b=B, text_len=16):
    rng = np.random.default_rng(seed)
    mask = np.zeros((b, text_len), bool)
    mask[:, :6] = True
    mask[1, 6:9] = True  # ragged instruction lengths
    return dict(images=jnp.asarray(rng.integers(0, 256, (b, 2, 32, 32, 3)), jnp.uint8),
                image_mask=jnp.ones((b, 2), bool),
                tokens=jnp.asarray(rng.integers(3, 259, (b, text_len)) * mask, jnp.int32),
                token_mask=jnp.asarray(mask))


def _perturb(params, key, scale=0.2):
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return treedef.unflatten([x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


@pytest.fixture(scope="module")
def setup():
    config = _config()
    pol = policy_lib.Policy(config, loading.make_tokenizer(config.policy.tokenizer).vocab_size)
    obs = _obs()
    params = pol.init(jax.random.key(0), obs)
    return pol, _perturb(params, jax.random.key(1)), obs


@pytest.fixture(scope="module")
def sde_sample(setup):
    pol, params, obs = setup
    return jax.jit(pol.sample_sde)(params, obs, jax.random.key(5))


def test_param_groups_and_shapes(setup, sde_sample):
    pol, params, obs = setup
    assert set(params) == {"vlm", "action_expert", "value_head"}
    k, d, steps = pol.dims.chunk_size, pol.dims.action_dim, pol.num_steps
    out = sde_sample
    assert out.actions.shape == (B, k, d) and out.actions.dtype == jnp.float32
    assert out.chain["x"].shape == (B, steps + 1, k, pol.dims.action_pad_dim)
    assert out.chain["step"].shape == (B,) and out.log_prob.shape == (B,) and out.value.shape == (B,)
    np.testing.assert_array_equal(out.actions, out.chain["x"][:, -1, :, :d])
    labels = policy_lib.param_labels(params)
    assert set(jax.tree.leaves(labels)) == {"vlm", "action_expert", "value_head"}


def test_prefix_never_sees_actions_and_actions_see_prefix(setup):
    pol, params, obs = setup
    joint = jax.jit(lambda o, x, t: pol._apply(params, o, x, t, method=policy_lib.VLAModel.joint))
    k, dp = pol.dims.chunk_size, pol.dims.action_pad_dim
    x1 = jax.random.normal(jax.random.key(2), (B, k, dp))
    x2 = jax.random.normal(jax.random.key(3), (B, k, dp))
    t = jnp.array([0.3, 0.8])
    c1, v1 = joint(obs, x1, t)
    c2, v2 = joint(obs, x2, t)
    # Prefix outputs do not depend on the action tokens ...
    np.testing.assert_array_equal(c1.out, c2.out)
    assert not np.allclose(v1, v2)
    # ... while the action tokens read the images and the valid text ...
    obs_img = dict(obs, images=obs["images"].at[:, 1].set(0))
    assert np.abs(joint(obs_img, x1, t)[1] - v1).max() > 1e-3
    obs_txt = dict(obs, tokens=obs["tokens"].at[:, 2].add(1))
    assert np.abs(joint(obs_txt, x1, t)[1] - v1).max() > 1e-3
    # ... but not padded text tokens (sample 0 has 6 valid tokens, position 12 is padding).
    obs_pad = dict(obs, tokens=obs["tokens"].at[:, 12].set(77))
    np.testing.assert_allclose(joint(obs_pad, x1, t)[1], v1, atol=1e-6)
    # Action tokens attend to each other (the action block is bidirectional).
    x3 = x1.at[:, -1].add(1.0)
    assert np.abs(joint(obs, x3, t)[1][:, 0] - v1[:, 0]).max() > 1e-4
    # The gradient of every prefix output w.r.t. the noisy actions is exactly zero.
    g = jax.grad(lambda x: joint(obs, x, t)[0].out.sum())(x1)
    assert np.all(np.asarray(g) == 0)


def test_kv_cached_equals_uncached(setup):
    pol, params, obs = setup
    k, dp = pol.dims.chunk_size, pol.dims.action_pad_dim
    x = jax.random.normal(jax.random.key(4), (B, k, dp))
    t = jnp.array([0.9, 0.2])
    cached = jax.jit(lambda: pol.denoise(params, pol.encode_prefix(params, obs), x, t))()
    _, uncached = jax.jit(lambda: pol._apply(params, obs, x, t, method=policy_lib.VLAModel.joint))()
    np.testing.assert_allclose(cached, uncached, rtol=1e-5, atol=1e-5)
    sample = jax.jit(pol.sample_actions, static_argnames=("num_steps", "use_cache"))
    a_cached = sample(params, obs, jax.random.key(7))
    a_uncached = sample(params, obs, jax.random.key(7), use_cache=False)
    np.testing.assert_allclose(a_cached, a_uncached, rtol=1e-5, atol=1e-5)
    # Same key -> same actions; another key -> other actions.
    np.testing.assert_array_equal(a_cached, sample(params, obs, jax.random.key(7)))
    assert not np.allclose(a_cached, sample(params, obs, jax.random.key(8)))


def test_sde_log_prob_matches_independent_gaussian(setup, sde_sample):
    pol, params, obs = setup
    out = sde_sample
    steps, d = pol.num_steps, pol.dims.action_dim
    xs, chosen = np.asarray(out.chain["x"], np.float64), np.asarray(out.chain["step"])
    ts = np.append(np.linspace(1.0, 1.0 / steps, steps), 0.0)
    velocity = jax.jit(lambda x, t: pol.denoise(params, pol.encode_prefix(params, obs), x, t))
    vs = [np.asarray(velocity(out.chain["x"][:, i], jnp.full((B,), ts[i], jnp.float32)), np.float64)
          for i in range(steps)]
    for b in range(B):
        for i in range(steps):
            t, dt = ts[i], ts[i] - ts[i + 1]
            v = vs[i][b]
            x = xs[b, i]
            if i != chosen[b]:  # deterministic steps are plain Euler
                np.testing.assert_allclose(xs[b, i + 1], x - dt * v, atol=1e-5)
                continue
            # sigma at t = 1 uses t_1 in the denominator (authors' code) to stay finite
            sigma = 0.5 * np.sqrt(t / (1.0 - (ts[1] if t == 1.0 else t)))
            x0, x1 = x - v * t, x + v * (1 - t)
            mean = x0 * (1 - (t - dt)) + x1 * (t - dt - sigma ** 2 * dt / (2 * t))
            expected = stats.norm.logpdf(xs[b, i + 1, :, :d], mean[:, :d], np.sqrt(dt) * sigma).sum()
            np.testing.assert_allclose(out.log_prob[b], expected, rtol=1e-4, atol=1e-3)
    # Re-scoring the stored chain under the same parameters reproduces the log-prob and value.
    logp, value = jax.jit(pol.log_prob_and_value)(params, obs, out.chain)
    np.testing.assert_allclose(logp, out.log_prob, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(value, out.value, rtol=1e-6)


def test_mean_log_prob_is_the_gaussian_density_averaged_over_dims(setup, sde_sample):
    """policy.log_prob='mean': the same chain (same key), its log-probability the joint density of the
    stochastic transition divided by k x action_dim, checked against scipy on that transition."""
    pol, params, obs = setup
    config = copy.deepcopy(pol.config)
    config.policy.log_prob = "mean"
    mean_pol = policy_lib.Policy(config, pol.dims.vocab_size)
    out = jax.jit(mean_pol.sample_sde)(params, obs, jax.random.key(5))
    np.testing.assert_array_equal(out.chain["x"], sde_sample.chain["x"])
    steps, k, d = pol.num_steps, pol.dims.chunk_size, pol.dims.action_dim
    ts = np.append(np.linspace(1.0, 1.0 / steps, steps), 0.0)
    xs, chosen = np.asarray(out.chain["x"], np.float64), np.asarray(out.chain["step"])
    velocity = jax.jit(lambda x, t: pol.denoise(params, pol.encode_prefix(params, obs), x, t))
    for b in range(B):
        i = chosen[b]
        t, dt = ts[i], ts[i] - ts[i + 1]
        v = np.asarray(velocity(out.chain["x"][:, i], jnp.full((B,), t, jnp.float32)), np.float64)[b]
        sigma = 0.5 * np.sqrt(t / (1.0 - (ts[1] if t == 1.0 else t)))
        mean = (xs[b, i] - v * t) * (1 - (t - dt)) + (xs[b, i] + v * (1 - t)) * (t - dt - sigma ** 2 * dt / (2 * t))
        expected = stats.norm.logpdf(xs[b, i + 1, :, :d], mean[:, :d], np.sqrt(dt) * sigma).mean()
        np.testing.assert_allclose(out.log_prob[b], expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out.log_prob * k * d, sde_sample.log_prob, rtol=1e-5, atol=1e-3)
    logp, _ = jax.jit(mean_pol.log_prob_and_value)(params, obs, out.chain)
    np.testing.assert_allclose(logp, out.log_prob, rtol=1e-5, atol=1e-5)


def test_all_steps_chain_log_prob_is_the_sum_of_its_gaussian_transitions(setup):
    """policy.stochastic_step='all' (DPPO's chain): every transition is a Gaussian draw around the
    Flow-SDE mean; the log-prob is the sum over transitions of each one's joint density (scipy), and
    re-scoring the stored chain (all steps batched) gives it back, with gradients for the expert only."""
    pol, params, obs = setup
    config = copy.deepcopy(pol.config)
    config.policy.stochastic_step = "all"
    all_pol = policy_lib.Policy(config, pol.dims.vocab_size)
    out = jax.jit(all_pol.sample_sde)(params, obs, jax.random.key(5))
    np.testing.assert_array_equal(out.chain["step"], -1)
    steps, d = pol.num_steps, pol.dims.action_dim
    ts = np.append(np.linspace(1.0, 1.0 / steps, steps), 0.0)
    xs = np.asarray(out.chain["x"], np.float64)
    velocity = jax.jit(lambda x, t: pol.denoise(params, pol.encode_prefix(params, obs), x, t))
    expected = np.zeros(B)
    for i in range(steps):
        t, dt = ts[i], ts[i] - ts[i + 1]
        v = np.asarray(velocity(out.chain["x"][:, i], jnp.full((B,), t, jnp.float32)), np.float64)
        sigma = 0.5 * np.sqrt(t / (1.0 - (ts[1] if t == 1.0 else t)))
        mean = (xs[:, i] - v * t) * (1 - (t - dt)) + (xs[:, i] + v * (1 - t)) * (t - dt - sigma ** 2 * dt / (2 * t))
        expected += stats.norm.logpdf(xs[:, i + 1, :, :d], mean[..., :d], np.sqrt(dt) * sigma).sum(axis=(1, 2))
        assert np.abs(xs[:, i + 1] - mean).max() > 1e-3  # every step drew noise
    np.testing.assert_allclose(out.log_prob, expected, rtol=1e-4, atol=1e-3)
    logp_fn = jax.jit(jax.value_and_grad(lambda p: all_pol.log_prob(p, obs, out.chain).sum()))
    logp_sum, grads = logp_fn(params)
    np.testing.assert_allclose(logp_sum, out.log_prob.sum(), rtol=1e-5)
    assert float(optax.tree.norm(grads["vlm"])) == 0.0 and float(optax.tree.norm(grads["action_expert"])) > 0


def test_per_sample_steps_rescore_and_gradients(setup):
    pol, params, obs = setup
    obs4 = _obs(seed=3, b=8)
    out = jax.jit(pol.sample_sde, static_argnames="per_sample")(params, obs4, jax.random.key(9), per_sample=True)
    assert len(set(np.asarray(out.chain["step"]).tolist())) > 1
    out_call = jax.jit(pol.sample_sde, static_argnames="per_sample")(params, obs4, jax.random.key(9),
                                                                    per_sample=False)
    assert len(set(np.asarray(out_call.chain["step"]).tolist())) == 1
    loss = jax.jit(jax.value_and_grad(lambda p: pol.log_prob(p, obs4, out.chain).sum()))
    logp_sum, grads = loss(params)
    np.testing.assert_allclose(logp_sum, out.log_prob.sum(), rtol=1e-4)
    norms = {g: float(optax.tree.norm(grads[g])) for g in grads}
    assert norms["vlm"] == 0.0 and norms["action_expert"] > 0.0


def test_policy_sample_unnormalizes(setup):
    pol, params, obs = setup
    stats_ = dict(mean=np.arange(7, dtype=np.float32), std=np.full(7, 2.0, np.float32))
    pol2 = policy_lib.Policy(pol.config, pol.dims.vocab_size,
                             unnormalize=policy_lib.make_unnormalizer(stats_, "zscore"))
    env, info = jax.jit(pol2.sample, static_argnames=("mode", "return_info"))(
        params, obs, jax.random.key(7), mode="eval", return_info=True)
    np.testing.assert_allclose(env, info["actions_normalized"] * 2.0 + np.arange(7), rtol=1e-6)
    with pytest.raises(ValueError, match="images"):
        pol.check_obs(dict(obs, images=obs["images"][:, :1]))


def test_noise_samples_equal_repeated_observations(setup):
    """n flow draws per observation from one prefix pass = the same draws on n copies of each row."""
    pol, params, obs = setup
    b = obs["images"].shape[0]
    actions = jax.random.uniform(jax.random.key(3), (b, pol.dims.chunk_size, 7), minval=-1, maxval=1)
    mask = jnp.arange(pol.dims.chunk_size)[None, :] < jnp.arange(b)[:, None] + 3
    batch = dict(obs, actions=actions, action_mask=mask)
    key = jax.random.key(4)
    shared, _ = pol.flow_matching_loss(params, batch, key, noise_samples=3)
    repeated, _ = pol.flow_matching_loss(params, jax.tree.map(lambda x: jnp.repeat(x, 3, axis=0), batch), key)
    single, _ = pol.flow_matching_loss(params, batch, key)
    np.testing.assert_allclose(shared, repeated, rtol=1e-5)
    assert abs(float(shared) - float(single)) > 1e-4


def test_tiny_model_overfits_tiny_dataset():
    config = _config()
    pol = policy_lib.Policy(config, loading.make_tokenizer(config.policy.tokenizer).vocab_size)
    n = 4
    obs = _obs(seed=11, b=n)
    rng = np.random.default_rng(0)
    actions = jnp.asarray(rng.uniform(-1, 1, (n, 1, 7)).repeat(config.chunk_size, 1), jnp.float32)
    batch = dict(obs, actions=actions, action_mask=jnp.ones((n, config.chunk_size), bool))
    params = pol.init(jax.random.key(0), obs)
    opt = optax.adam(3e-3)
    state = opt.init(params)

    @jax.jit
    def train(params, state, key):
        def body(carry, k):
            p, s = carry
            (loss, _), g = jax.value_and_grad(pol.flow_matching_loss, has_aux=True)(p, batch, k)
            u, s = opt.update(g, s, p)
            return (optax.apply_updates(p, u), s), loss
        (params, state), losses = jax.lax.scan(body, (params, state), jax.random.split(key, 300))
        return params, state, losses

    params, state, losses = train(params, state, jax.random.key(1))
    first, last = float(losses[:20].mean()), float(losses[-20:].mean())
    assert last < 0.25 * first, (first, last)
    sampled = jax.jit(pol.sample_actions)(params, obs, jax.random.key(2))
    err = float(jnp.mean((sampled - actions) ** 2))
    assert err < 0.05, err


def test_env_policy_fn_adapter(setup):
    from vlambpo_jax.data.tokenizer import ByteTokenizer

    pol, params, obs = setup
    fn = policy_lib.make_env_policy_fn(pol, ByteTokenizer(), ["pick up the red cube", "push it"],
                                       max_text_len=16)
    env_obs = dict(images=obs["images"], instruction_id=jnp.array([1, 0], jnp.int32),
                   state=jnp.zeros((B, 7)))
    keys = jax.random.split(jax.random.key(0), B)
    actions = jax.jit(jax.vmap(fn, in_axes=(None, 0, 0)))(params, env_obs, keys)
    assert actions.shape == (B, pol.dims.chunk_size, pol.dims.action_dim)


def test_conv_stem_tokens_are_local_and_row_major():
    from vlambpo_jax.models.vit import ViT
    vit = ViT(patch=8, width=16, depth=0, heads=2, mlp=16, out_width=16, stem="conv")
    images = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (1, 32, 32, 3)), jnp.float32)
    params = vit.init(jax.random.key(0), images)
    base = vit.apply(params, images)
    assert base.shape == (1, 16, 16)
    # Changing the top-left 8x8 patch moves token 0 (row-major grid) and leaves the far corner alone.
    moved = vit.apply(params, images.at[:, :8, :8].set(1.0)) - base
    change = np.abs(np.asarray(moved[0])).max(-1).reshape(4, 4)
    assert change[0, 0] > 1e-3
    assert change[2:, 2:].max() == 0 and change[3].max() == 0 and change[:, 3].max() == 0
    policy_config = _config()
    policy_config.policy.vit_stem = "conv"
    pol = policy_lib.Policy(policy_config, loading.make_tokenizer(policy_config.policy.tokenizer).vocab_size)
    params = pol.init(jax.random.key(0), _obs())
    assert "stem_0" in params["vlm"]["vit"] and "patch_embed" not in params["vlm"]["vit"]
    assert pol.sample_actions(params, _obs(), jax.random.key(1)).shape == (B, policy_config.chunk_size, 7)
