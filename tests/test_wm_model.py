"""World model: action tokens, cached == uncached sampling, IVD wiring, overfitting one transition."""
import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs import tabletop
from vlambpo_jax.models import action_tokens as at
from vlambpo_jax.models import flow_sampling as fs
from vlambpo_jax.models.umm import MoTBackbone, UMMConfig
from vlambpo_jax.models.vae import VAE, to_float
from vlambpo_jax.models.world_model import WorldModel, motion_weighted_mean, shift_timesteps, spec_from_config


def tiny_config(**wm):
    c = tabletop.get_config("smoke")
    c.wm.update(dict(dict(num_sample_steps=2), **wm))
    return c


def transition(b=2, seed=0, length=6):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, 259, (b, length)).astype(np.int32)
    mask = np.ones((b, length), bool)
    mask[:, -2:] = False  # padding must be harmless
    return dict(images=rng.integers(0, 256, (b, 2, 32, 32, 3), dtype=np.uint8),
                next_images=rng.integers(0, 256, (b, 2, 32, 32, 3), dtype=np.uint8),
                actions=rng.uniform(-1, 1, (b, 10, 7)).astype(np.float32),
                tokens=tokens, token_mask=mask,
                episode_success=np.array([True, False][:b]), steps_to_end=np.array([1, 40][:b]))


def test_action_bins_round_trip():
    rng = np.random.default_rng(0)
    amin = np.array([-1, -2, -0.5, -3, -1, -1, 0], np.float32)
    amax = np.array([1, 2, 0.5, 3, 1, 1, 1], np.float32)
    a = rng.uniform(amin, amax, (4, 10, 7)).astype(np.float32)
    bins = at.actions_to_bins(a, amin, amax)
    assert bins.dtype == jnp.int32 and int(bins.min()) >= 0 and int(bins.max()) <= 256
    back = np.asarray(at.bins_to_actions(bins, amin, amax))
    assert np.all(np.abs(back - a) <= (amax - amin) / 512 + 1e-6)
    np.testing.assert_array_equal(at.actions_to_bins(back, amin, amax), bins)  # bins are fixed points
    assert list(np.asarray(at.actions_to_bins(np.stack([amin, amax]), amin, amax))[:, 0]) == [0, 256]
    ids = np.asarray(at.bins_to_token_ids(bins))
    assert ids.shape == (4, 70) and ids.min() >= at.ACTION_OFFSET and ids.max() < at.YES_ID
    np.testing.assert_array_equal(ids[:, 7:14] - at.ACTION_OFFSET, np.asarray(bins)[:, 1])


@pytest.mark.parametrize("view_decoding,cfg", [("interleaved", True), ("joint", False)])
def test_cached_sampling_equals_uncached(view_decoding, cfg):
    c = tiny_config(view_decoding=view_decoding, action_encoding="bins",
                    cfg_text_scale=3.0 if cfg else 1.0, cfg_image_scale=2.0 if cfg else 1.0,
                    cfg_interval=(0.4, 1.0), cfg_renorm_type="text_channel" if cfg else "none")
    wm = WorldModel(c)
    params = wm.init(jax.random.key(0))
    # llm2vae starts at zero; randomize it so the velocities (and the test) are not trivially zero
    params["net"]["params"]["llm2vae"]["kernel"] = 0.3 * jax.random.normal(
        jax.random.key(1), params["net"]["params"]["llm2vae"]["kernel"].shape)
    tr = transition()
    args = (params, tr["images"], tr["tokens"], tr["token_mask"], tr["actions"], jax.random.key(2))
    cached = jax.jit(lambda *a: wm.predict(*a, return_latents=True))(*args)
    uncached = jax.jit(lambda *a: wm.predict(*a, use_cache=False, return_latents=True))(*args)
    assert cached.shape == (2, 2, 16, 16)
    np.testing.assert_allclose(np.asarray(cached), np.asarray(uncached), atol=1e-4)
    # and the velocities matter: a different action gives a different prediction
    other = jax.jit(lambda *a: wm.predict(*a, return_latents=True))(*args[:4], -tr["actions"], args[5])
    assert np.abs(np.asarray(other) - np.asarray(cached)).max() > 1e-3


def test_ivd_wrist_ignores_action_in_training():
    """Teacher-forced IVD sequence: the wrist loss must not depend on the action tokens (mask wiring),
    the head loss must. Two layers, so that the action could also reach the wrist through the hidden
    states of the next head's clean copies (the paper's second generation call has no action in it)."""
    c = tiny_config(view_decoding="interleaved", action_encoding="bins")
    c.wm.umm.depth = 2
    wm = WorldModel(c)
    params = wm.init(jax.random.key(0))
    params["net"]["params"]["llm2vae"]["kernel"] = 0.3 * jax.random.normal(
        jax.random.key(1), params["net"]["params"]["llm2vae"]["kernel"].shape)
    tr = transition()
    loss = jax.jit(lambda p, b, k: wm.loss(p, b, k, train=False)[1])
    m1 = loss(params, tr, jax.random.key(3))
    m2 = loss(params, dict(tr, actions=-tr["actions"]), jax.random.key(3))
    assert float(m1["mse_wrist"]) == pytest.approx(float(m2["mse_wrist"]), abs=1e-6)
    assert abs(float(m1["mse_head"]) - float(m2["mse_head"])) > 1e-5


def test_euler_sample_with_the_exact_velocity_lands_on_the_target():
    rng = np.random.default_rng(0)
    x0, noise = (jnp.asarray(rng.normal(size=(2, 3, 4)), jnp.float32) for _ in range(2))
    ts = shift_timesteps(jnp.linspace(1.0, 0.0, 5), 2.0)
    out = fs.euler_sample(lambda x, t: (x - x0) / t, noise, ts)
    np.testing.assert_allclose(np.asarray(out), np.asarray(x0), atol=1e-5)


def test_motion_weight_puts_the_flow_loss_where_the_latents_change():
    err = jnp.asarray([[1.0, 3.0]])
    change = jnp.asarray([[[0.0, 0.0], [1.0, 1.0]]])       # token 1 moves: c = (0, 1), mean 0.5
    assert float(motion_weighted_mean(err, change, 0.0)) == 2.0
    # weights 1 + 1 * (0, 1) / 0.5 = (1, 3): (1 * 1 + 3 * 3) / 4
    np.testing.assert_allclose(float(motion_weighted_mean(err, change, 1.0)), 2.5, rtol=1e-6)
    tr = transition()
    out = {}
    for weight in ((0.0, 0.0), (2.0, 0.0), (0.0, 2.0), (2.0, 2.0)):
        wm = WorldModel(tiny_config(predict_delta=True, delta_scale=(0.4, 1.0), motion_weight=weight))
        params = wm.init(jax.random.key(0))
        out[weight] = jax.jit(lambda p, wm=wm: wm.loss(p, tr, jax.random.key(3), train=False)[1])(params)
    mse = {w: float(m["image_mse"]) for w, m in out.items()}
    assert out[(0.0, 0.0)]["mse_head"] == out[(2.0, 2.0)]["mse_head"]   # the per-view metric: the plain mean
    assert len(set(mse.values())) == 4
    # each view's weight changes its own term of the loss only
    np.testing.assert_allclose(mse[(2.0, 0.0)] + mse[(0.0, 2.0)], mse[(0.0, 0.0)] + mse[(2.0, 2.0)], rtol=1e-5)
    saved = tiny_config().to_dict()   # a config saved when the weight was one number for every view
    saved["wm"]["motion_weight"] = 2.0
    assert spec_from_config(ml_collections.ConfigDict(saved)).motion_weight == (2.0, 2.0)


def test_zero_noise_fraction_trains_what_the_one_step_deterministic_sampler_reads():
    """At zero_noise_fraction 1 every example is t = 1 with no noise, so each view's flow loss is the
    squared error of the one-step temperature-0 prediction against the real next latent (in target
    units): the training loss is then independent of the noise key, and equals that error computed from
    predict. Held out, the loss is the flow's own."""
    c = tiny_config(predict_delta=True, delta_scale=(0.4, 1.0), zero_noise_fraction=1.0,
                    num_sample_steps=1, sample_temperature=0.0)
    wm = WorldModel(c)
    params = wm.init(jax.random.key(0))
    params["net"]["params"]["llm2vae"]["kernel"] = 0.3 * jax.random.normal(
        jax.random.key(1), params["net"]["params"]["llm2vae"]["kernel"].shape)
    tr = transition()
    loss = jax.jit(lambda p, k: wm.loss(p, tr, k)[1])    # the smoke config's dropouts are 0
    m1, m2 = loss(params, jax.random.key(3)), loss(params, jax.random.key(4))
    pred = wm.predict(params, tr["images"], tr["tokens"], tr["token_mask"], tr["actions"], jax.random.key(5),
                      return_latents=True)
    nxt = wm.encode_latents(params, tr["next_images"].reshape((-1, 32, 32, 3))).reshape(pred.shape)
    for i, name in enumerate(("head", "wrist")):
        assert float(m1[f"mse_{name}"]) == pytest.approx(float(m2[f"mse_{name}"]), rel=1e-6)
        want = np.mean(((np.asarray(nxt[:, i]) - np.asarray(pred[:, i])) / c.wm.delta_scale[i]) ** 2)
        np.testing.assert_allclose(float(m1[f"mse_{name}"]), want, rtol=1e-4)
    # held out (train=False) the loss is the flow's own, as at fraction 0: it depends on the key
    held = [jax.jit(lambda p, k: wm.loss(p, tr, k, train=False)[1])(params, jax.random.key(k)) for k in (3, 4)]
    assert abs(float(held[0]["mse_head"]) - float(held[1]["mse_head"])) > 1e-4
    c.wm.zero_noise_fraction = 0.0
    plain = jax.jit(lambda p, k: WorldModel(c).loss(p, tr, k, train=False)[1])(params, jax.random.key(3))
    assert float(plain["mse_head"]) == pytest.approx(float(held[0]["mse_head"]), rel=1e-6)


@pytest.mark.parametrize("delta_pixels", [True, False])
def test_predict_delta_zero_change_reproduces_the_current_frame(monkeypatch, delta_pixels):
    """The sampler with the exact velocity for a zero target ((x - 0) / t, in place of the network's):
    with predict_delta it returns the current latents, and with delta_pixels the current frames
    themselves; predicting the next latent directly, the same velocity gives the zero latent."""
    euler = fs.euler_sample
    monkeypatch.setattr(fs, "euler_sample", lambda velocity, x, ts: euler(lambda y, t: y / t, x, ts))
    tr = transition()
    out = {}
    for delta in (True, False):
        wm = WorldModel(tiny_config(view_decoding="interleaved", action_encoding="continuous",
                                    predict_delta=delta, delta_pixels=delta_pixels, delta_scale=(0.4, 1.0),
                                    sample_temperature=1.0))
        params = wm.init(jax.random.key(0))
        args = (params, tr["images"], tr["tokens"], tr["token_mask"], tr["actions"], jax.random.key(2))
        out[delta] = [np.asarray(jax.jit(lambda *a, r=r: wm.predict(*a, return_latents=r))(*args))
                      for r in (True, False)]
    current = np.asarray(wm.encode_latents(params, tr["images"].reshape(4, 32, 32, 3))).reshape(2, 2, 16, 16)
    np.testing.assert_allclose(out[True][0], current, atol=1e-5)
    np.testing.assert_allclose(out[False][0], 0.0, atol=1e-5)
    assert np.abs(current).max() > 0.1
    if delta_pixels:
        np.testing.assert_array_equal(out[True][1], tr["images"])
    else:  # the VAE's reconstruction of the current frame
        recon = np.asarray(wm.decode_latents(params, current.reshape(4, 16, 16))).reshape(tr["images"].shape)
        assert np.abs(out[True][1].astype(int) - recon).max() <= 1
        assert np.abs(out[True][1].astype(int) - tr["images"]).max() > 10


def test_exact_latent_next_is_the_decoding_of_the_true_next_latents():
    """With delta_pixels an unchanged frame comes back exactly; predicting latents directly, the exact
    next latents decode to the VAE's reconstruction of the next frame."""
    tr = transition()
    flat = lambda x: x.reshape((4, 32, 32, 3))  # noqa: E731
    for delta_pixels in (True, False):
        wm = WorldModel(tiny_config(predict_delta=True, delta_pixels=delta_pixels))
        params = wm.init(jax.random.key(0))
        same = np.asarray(wm.exact_latent_next(params, tr["images"], tr["images"]))
        moved = np.asarray(wm.exact_latent_next(params, tr["images"], tr["next_images"]))
        if delta_pixels:
            np.testing.assert_array_equal(same, tr["images"])
            assert np.abs(moved.astype(int) - tr["images"]).max() > 10
        else:
            recon = wm.decode_latents(params, wm.encode_latents(params, flat(tr["next_images"])))
            np.testing.assert_array_equal(flat(moved), np.asarray(recon))


@pytest.mark.parametrize("predict_delta", [True, False])
def test_tiny_wm_overfits_one_transition(predict_delta):
    wm = WorldModel(tiny_config(view_decoding="interleaved", action_encoding="continuous",
                                num_sample_steps=4, timestep_shift=1.0, predict_delta=predict_delta,
                                sample_temperature=1.0,
                                dropout=dict(text=0.0, vit=0.0, vae=0.0), loss_text=1.0))
    params = wm.init(jax.random.key(0))
    tr = transition(b=2)
    opt = optax.adam(3e-3)
    state = opt.init(params["net"])

    @jax.jit
    def step(net, state, key):
        def f(n):
            return wm.loss({**params, "net": n}, tr, key)
        (loss, m), g = jax.value_and_grad(f, has_aux=True)(net)
        upd, state = opt.update(g, state, net)
        return optax.apply_updates(net, upd), state, m

    net = params["net"]
    first = None
    for i in range(150):
        net, state, m = step(net, state, jax.random.key(i))
        first = first if first is not None else float(m["image_mse"])
    trained = {**params, "net": net}
    pred = jax.jit(lambda p: wm.predict(p, tr["images"], tr["tokens"], tr["token_mask"], tr["actions"],
                                        jax.random.key(7), return_latents=True))
    target = wm.encode_latents(params, tr["next_images"].reshape(4, 32, 32, 3)).reshape(2, 2, 16, 16)
    err_before = float(jnp.mean((pred(params) - target) ** 2))
    err_after = float(jnp.mean((pred(trained) - target) ** 2))
    assert float(m["image_mse"]) < 0.3 * first, (first, float(m["image_mse"]))
    assert err_after < 0.2 * err_before, (err_before, err_after)
    p = wm.reward(trained, tr["images"], tr["tokens"], tr["token_mask"])
    assert float(p[0]) > 0.8 and float(p[1]) < 0.2  # episode 0 ends in success 1 step later


def test_ivd_wrist_learns_the_motion_from_the_next_head():
    """IVD's second call can carry what the wrist needs: two transitions with the same current views,
    instruction and action whose next wrist equals their (different) next head. Only a wrist that reads
    the next head can tell them apart; after training with teacher forcing, the wrist sampled from each
    real next head lands near its own target, much nearer than the other transition's."""
    wm = WorldModel(tiny_config(view_decoding="interleaved", action_encoding="continuous",
                                num_sample_steps=4, timestep_shift=1.0, sample_temperature=0.0,
                                predict_delta=False, dropout=dict(text=0.0, vit=0.0, vae=0.0)))
    params = wm.init(jax.random.key(0))
    tr = {k: np.repeat(v, 2, axis=0) for k, v in transition(b=1).items()}
    heads = np.random.default_rng(5).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    tr["next_images"] = np.stack([heads, heads], axis=1)  # next wrist = next head
    # latents of about unit scale, as the VAE phase's statistics give
    frames = np.concatenate([heads, tr["images"][0]])
    z = np.asarray(wm.vae.apply(params["vae"], to_float(frames), method=VAE.encode)[0]).reshape(-1, 4)
    params["stats"] = dict(params["stats"], latent_shift=jnp.asarray(z.mean(0)),
                           latent_scale=jnp.asarray(z.std(0)))
    opt = optax.adam(3e-3)

    @jax.jit
    def step(net, state, key):
        (_, m), g = jax.value_and_grad(lambda n: wm.loss({**params, "net": n}, tr, key), has_aux=True)(net)
        upd, state = opt.update(g, state, net)
        return optax.apply_updates(net, upd), state, m

    net, state = params["net"], opt.init(params["net"])
    for i in range(300):
        net, state, _ = step(net, state, jax.random.key(i))
    wrist = jax.jit(lambda p, head: wm.predict(p, tr["images"], tr["tokens"], tr["token_mask"], tr["actions"],
                                               jax.random.key(7), return_latents=True,
                                               given_next={0: head})[0, 1])
    target = wm.encode_latents(params, heads)  # [2, n, pd]
    err = np.asarray([[float(jnp.mean((wrist({**params, "net": net}, np.stack([h, h])) - target[j]) ** 2))
                       for j in range(2)] for h in heads])  # [given head, target]
    for i in range(2):
        assert err[i, i] < 0.5 * err[i, 1 - i], err


def _random_head(params):
    params["net"]["params"]["llm2vae"]["kernel"] = 0.3 * jax.random.normal(
        jax.random.key(1), params["net"]["params"]["llm2vae"]["kernel"].shape)
    return params


def test_ivd_wrist_reads_vit_tokens_of_the_decoded_predicted_head():
    """Sampling: the wrist view is generated after the predicted head's clean copies, including ViT
    tokens of its *decoded* image. With return_latents the VAE decoder is used only for that copy, so
    perturbing the decoder must change the predicted wrist latent and leave the head latent unchanged."""
    wm = WorldModel(tiny_config(view_decoding="interleaved", action_encoding="continuous"))
    assert wm.spec.ivd_vit_copy and "head_next_vit" in [s.name for s in wm.dynamics_layout(6).segments]
    params = _random_head(wm.init(jax.random.key(0)))
    tr = transition()
    pred = jax.jit(lambda p: wm.predict(p, tr["images"], tr["tokens"], tr["token_mask"], tr["actions"],
                                        jax.random.key(2), return_latents=True))
    base = np.asarray(pred(params))
    vae = params["vae"]["params"]
    dec = [k for k in vae if k.startswith("dec") or "decoder" in k]
    assert dec, list(vae)
    other = dict(params, vae={"params": {**vae, **{k: jax.tree.map(lambda a: a + 0.5, vae[k]) for k in dec}}})
    moved = np.asarray(pred(other))
    np.testing.assert_array_equal(moved[:, 0], base[:, 0])          # the head never sees its copies
    assert np.abs(moved[:, 1] - base[:, 1]).max() > 1e-4            # the wrist reads the decoded head


@pytest.mark.parametrize("view_decoding", ["interleaved", "independent"])
def test_given_next_head_teacher_forces_the_ivd_wrist(view_decoding):
    """predict(given_next={0: head}): with IVD the head output is the given frame and the wrist is
    sampled from it, so a different given head changes the wrist, and giving the head that IVD
    predicted reproduces the plain prediction's wrist up to the VAE round trip of that head; with
    independent decoding the wrist never sees the next head, so only the head output changes."""
    wm = WorldModel(tiny_config(view_decoding=view_decoding, action_encoding="continuous"))
    params = _random_head(wm.init(jax.random.key(0)))
    tr = transition()
    pred = jax.jit(lambda p, given: wm.predict(p, tr["images"], tr["tokens"], tr["token_mask"],
                                               tr["actions"], jax.random.key(2), given_next=given))
    plain = np.asarray(pred(params, None))
    heads = [tr["next_images"][:, 0], tr["images"][:, 0]]
    forced = [np.asarray(pred(params, {0: h})) for h in heads]
    for f, h in zip(forced, heads):
        np.testing.assert_array_equal(f[:, 0], h)
    if view_decoding == "independent":
        for f in forced:
            np.testing.assert_array_equal(f[:, 1], plain[:, 1])
        return
    assert np.abs(forced[0][:, 1].astype(int) - forced[1][:, 1]).max() > 0
    again = np.asarray(pred(params, {0: plain[:, 0]}))
    assert np.abs(again[:, 1].astype(int) - plain[:, 1]).mean() < np.abs(
        forced[0][:, 1].astype(int) - plain[:, 1]).mean()


def test_ivd_vit_copy_in_training_layout():
    """Teacher forcing with the same layout: the ViT copy of the real next head changes the wrist
    loss only (same weights, layouts with and without the copy)."""
    params = None
    out = {}
    for copy in (True, False):
        wm = WorldModel(tiny_config(view_decoding="interleaved", action_encoding="continuous",
                                    ivd_vit_copy=copy))
        params = params or _random_head(wm.init(jax.random.key(0)))
        out[copy] = jax.jit(lambda p, b, k: wm.loss(p, b, k, train=False)[1])(params, transition(),
                                                                              jax.random.key(3))
    assert float(out[True]["mse_head"]) == pytest.approx(float(out[False]["mse_head"]), abs=1e-6)
    assert abs(float(out[True]["mse_wrist"]) - float(out[False]["mse_wrist"])) > 1e-5


def test_reward_reads_the_configured_views():
    tr = transition()
    head_changed = dict(tr, images=tr["images"].copy())
    head_changed["images"][:, 0] = 255 - head_changed["images"][:, 0]
    args = lambda b: (b["images"], b["tokens"], b["token_mask"])  # noqa: E731
    for views, moves in (("wrist", False), ("head", True), ("both", True)):
        wm = WorldModel(tiny_config(reward_views=views))
        params = wm.init(jax.random.key(0))
        reward = jax.jit(wm.reward)
        p = np.asarray(reward(params, *args(tr)))
        assert (np.abs(np.asarray(reward(params, *args(head_changed))) - p).max() > 1e-6) == moves, views
        if views != "both":  # a single view may also be passed alone
            one = tr["images"][:, 0 if views == "head" else 1]
            np.testing.assert_allclose(np.asarray(reward(params, one, tr["tokens"], tr["token_mask"])), p,
                                       atol=1e-6)
        else:
            with pytest.raises(ValueError, match="reads views"):
                wm.reward(params, tr["images"][:, 0], tr["tokens"], tr["token_mask"])


def test_reward_on_predicted_views():
    """The extra Yes/No loss reads the flow's estimate of the next views, labelled as frame t + k."""
    c = tiny_config(view_decoding="independent", action_encoding="continuous", reward_on_predictions=1.0)
    wm = WorldModel(c)
    params = _random_head(wm.init(jax.random.key(0)))
    tr = transition(b=2)
    tr.update(episode_success=np.array([True, True]), steps_to_end=np.array([12, 16]))
    b, v = tr["images"].shape[:2]
    current = wm.encode_latents(params, tr["images"].reshape((b * v, 32, 32, 3))).reshape(b, v, 16, 16)
    ex = wm._predicted_reward_examples(params, tr, jnp.zeros((b, v, 16, 16)), current)
    # frame t + k (k = 10) is 2 and 6 steps before the end: Yes, and inside the dropped window
    np.testing.assert_array_equal(np.asarray(ex["yes"]), [True, False])
    np.testing.assert_array_equal(np.asarray(ex["valid"]), [True, False])
    np.testing.assert_array_equal(np.asarray(ex["images"]), tr["images"])  # zero change: the frames
    m_on = jax.jit(lambda p: wm.loss(p, tr, jax.random.key(3), train=False))(params)
    off = WorldModel(tiny_config(view_decoding="independent", action_encoding="continuous"))
    m_off = jax.jit(lambda p: off.loss(p, tr, jax.random.key(3), train=False))(params)
    assert np.isfinite(float(m_on[1]["reward_ce_pred"])) and "reward_ce_pred" not in m_off[1]
    assert float(m_on[0]) > float(m_off[0])
    np.testing.assert_allclose(float(m_on[1]["image_mse"]), float(m_off[1]["image_mse"]), rtol=1e-6)


def _randomize(tree, key, scale=0.3):
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(treedef, [scale * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


def test_action_adaln_modulates_the_generation_norms_by_hand():
    """Expert.qkv / mlp of a modulated expert against the formula: RMSNorm(x) (1 + a) + b, (a, b) =
    Dense(cond), then the plain projections; cond None leaves the block plain."""
    from vlambpo_jax.models.layers import RMSNorm
    from vlambpo_jax.models.umm import Expert, UMMConfig
    cfg = UMMConfig(vocab_size=8, width=8, depth=1, heads=2, kv_heads=1, head_dim=4, mlp=16, qk_norm=False,
                    gen_condition=True)
    expert = Expert(cfg, modulated=True)
    x, cond = jax.random.normal(jax.random.key(0), (2, 3, 8)), jax.random.normal(jax.random.key(1), (2, 8))
    params = expert.init(jax.random.key(2), x, cond, method=Expert.qkv)
    params = {"params": dict(params["params"], input_mod=_randomize(params["params"]["input_mod"],
                                                                    jax.random.key(3)))}
    q, _, _ = expert.apply(params, x, cond, method=Expert.qkv)
    p = params["params"]
    mod = cond @ p["input_mod"]["kernel"] + p["input_mod"]["bias"]
    h = RMSNorm(cfg.rms_eps).apply({"params": p["input_norm"]}, x) * (1 + mod[:, None, :8]) + mod[:, None, 8:]
    expected = (h @ p["q_proj"]["kernel"] + p["q_proj"]["bias"]).reshape(2, 3, 2, 4)
    np.testing.assert_allclose(np.asarray(q), np.asarray(expected), rtol=1e-5, atol=1e-5)
    plain, _, _ = expert.apply(params, x, None, method=Expert.qkv)
    assert np.abs(np.asarray(plain) - np.asarray(q)).max() > 1e-2


def _without(tree, names):
    return {k: _without(v, names) for k, v in tree.items() if k not in names} if isinstance(tree, dict) else tree


def test_action_adaln_starts_as_the_plain_model_and_samples_cached_as_uncached():
    tr = transition()
    plain = WorldModel(tiny_config(view_decoding="independent"))
    adaln = WorldModel(tiny_config(view_decoding="independent", action_adaln=True, cfg_text_scale=3.0,
                                   dropout=dict(text=0.1, vit=0.0, vae=0.0)))
    params = adaln.init(jax.random.key(0))
    params["net"]["params"]["llm2vae"]["kernel"] = 0.3 * jax.random.normal(
        jax.random.key(1), params["net"]["params"]["llm2vae"]["kernel"].shape)
    plain_params = dict(params, net=_without(params["net"], ("input_mod", "mlp_mod", "cond_in", "cond_out")))
    loss = lambda wm, p: float(wm.loss(p, tr, jax.random.key(3), train=False)[0])  # noqa: E731
    assert loss(adaln, params) == pytest.approx(loss(plain, plain_params), abs=1e-6)  # zero-initialised
    # the modulation switched on: the condition reaches the loss, and the KV cache keeps it
    net = params["net"]["params"]
    for name, sub in net["backbone"].items():
        if name.startswith("layers_"):
            sub["gen"]["input_mod"]["kernel"] = _randomize(sub["gen"]["input_mod"]["kernel"], jax.random.key(4), 0.1)
            sub["gen"]["mlp_mod"]["kernel"] = _randomize(sub["gen"]["mlp_mod"]["kernel"], jax.random.key(5), 0.1)
    assert abs(loss(adaln, params) - loss(plain, plain_params)) > 1e-4
    args = (params, tr["images"], tr["tokens"], tr["token_mask"], tr["actions"], jax.random.key(2))
    cached = jax.jit(lambda *a: adaln.predict(*a, return_latents=True))(*args)
    uncached = jax.jit(lambda *a: adaln.predict(*a, use_cache=False, return_latents=True))(*args)
    np.testing.assert_allclose(np.asarray(cached), np.asarray(uncached), atol=1e-4)
    # the CFG branch that drops the action reads the zero action's condition
    dropped = adaln._condition(params, tr["actions"], dropped=jnp.array([True, False]))
    zero = adaln._condition(params, np.zeros_like(tr["actions"]))
    own = adaln._condition(params, tr["actions"])
    np.testing.assert_allclose(np.asarray(dropped[0]), np.asarray(zero[0]), atol=1e-6)
    np.testing.assert_allclose(np.asarray(dropped[1]), np.asarray(own[1]), atol=1e-6)


def test_backbone_remat_keeps_parameters_loss_and_gradients():
    """umm.UMMConfig.remat recomputes each layer in the backward pass: the same parameter tree and
    values, and the same loss and gradients through both experts, the layers wrapped in a checkpoint."""
    cfg = UMMConfig(vocab_size=16, width=16, depth=2, heads=2, kv_heads=1, head_dim=8, mlp=32)
    plain, remat = MoTBackbone(cfg), MoTBackbone(dataclasses.replace(cfg, remat=True))
    x = jax.random.normal(jax.random.key(0), (2, 5, 16))
    experts, positions = np.array([0, 0, 1, 1, 0]), jnp.arange(5)[None]
    mask = jnp.tril(jnp.ones((5, 5), bool))[None]
    params = plain.init(jax.random.key(1), x, experts, positions, mask)
    remat_params = remat.init(jax.random.key(1), x, experts, positions, mask)
    assert jax.tree.structure(remat_params) == jax.tree.structure(params)
    jax.tree.map(np.testing.assert_array_equal, remat_params, params)

    def loss(net):
        return lambda p: jnp.sum(net.apply(p, x, experts, positions, mask)[0] ** 2)

    (l0, g0), (l1, g1) = (jax.value_and_grad(loss(net))(params) for net in (plain, remat))
    np.testing.assert_allclose(float(l1), float(l0), rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6), g1, g0)

    def checkpoints(net):   # jax.checkpoint's primitive is remat2 or checkpoint, by JAX version
        eqns = jax.make_jaxpr(loss(net))(params).jaxpr.eqns
        return [e for e in eqns if e.primitive.name in ("remat2", "checkpoint")]

    assert len(checkpoints(remat)) == cfg.depth and not checkpoints(plain)
