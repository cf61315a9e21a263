"""BAGEL's CFG renormalization (flow_sampling.cfg_velocity) against hand computations, and its
config wiring into the world model's sampler."""
import jax
import numpy as np
import pytest

from configs import tabletop
from vlambpo_jax.config_checks import ConfigError, validate
from vlambpo_jax.models import flow_sampling as fs
from vlambpo_jax.models.world_model import WorldModel

# one sample, two tokens, two channels; the unconditional branches are zero, so with text scale 2
# and image scale 1 the guided velocity is exactly 2 x v_full
V_FULL = np.array([[[3.0, 4.0], [0.0, 1.0]]], np.float32)   # token norms 5 and 1, global sqrt(26)
ZERO = np.zeros_like(V_FULL)


def cfg(renorm, renorm_min=0.0, full=V_FULL, no_text=ZERO, no_img=ZERO, s_text=2.0, s_img=1.0):
    return np.asarray(fs.cfg_velocity(full, no_text, no_img, s_text, s_img, renorm, renorm_min))


def test_no_renorm_is_the_three_branch_rule():
    full, no_text, no_img = V_FULL, np.full_like(V_FULL, 1.0), np.full_like(V_FULL, -1.0)
    # by hand: v_t = 1 + 3 (full - 1); v = -1 + 2 (v_t + 1)
    expect = -1.0 + 2.0 * ((1.0 + 3.0 * (V_FULL - 1.0)) + 1.0)
    np.testing.assert_allclose(cfg("none", full=full, no_text=no_text, no_img=no_img, s_text=3.0, s_img=2.0),
                               expect, rtol=1e-6)
    np.testing.assert_allclose(cfg("none"), 2 * V_FULL)


def test_global_and_channel_renorm_by_hand():
    # guided = 2 v_full: every norm doubles, so scale = 0.5 brings it back to v_full
    np.testing.assert_allclose(cfg("global"), V_FULL, rtol=1e-6)
    np.testing.assert_allclose(cfg("channel"), V_FULL, rtol=1e-6)
    # renorm_min clamps the scale from below: 0.8 x (2 v_full)
    np.testing.assert_allclose(cfg("global", 0.8), 1.6 * V_FULL, rtol=1e-6)
    # per-token vs per-sample: make token 1's guided velocity 4x and token 0's 1x of v_full
    no_text = np.array([[[0.0, 0.0], [0.0, -1.5]]], np.float32)     # v_t = no_text + 2 (full - no_text)
    guided = no_text + 2 * (V_FULL - no_text)                        # [[6, 8], [0, 3.5]]
    np.testing.assert_allclose(guided, [[[6, 8], [0, 3.5]]])
    ch = cfg("channel", no_text=no_text)
    np.testing.assert_allclose(ch[0, 0], [3.0, 4.0], rtol=1e-6)                 # 5 / 10
    np.testing.assert_allclose(ch[0, 1], [0.0, 3.5 / 3.5], rtol=1e-6)           # 1 / 3.5
    g = cfg("global", no_text=no_text)
    np.testing.assert_allclose(g, guided * np.sqrt(26.0) / np.sqrt(100 + 3.5 ** 2), rtol=1e-6)
    # the scale never exceeds 1: a guided velocity shorter than v_full is left alone
    np.testing.assert_allclose(cfg("global", s_text=0.5), 0.5 * V_FULL, rtol=1e-6)
    np.testing.assert_allclose(cfg("channel", s_text=0.5), 0.5 * V_FULL, rtol=1e-6)


def test_text_channel_renorms_before_image_guidance():
    no_img = np.array([[[1.0, 0.0], [0.0, 0.0]]], np.float32)
    # by hand: v_t = 2 v_full -> per token scale 0.5 -> v_full; then v = no_img + 3 (v_full - no_img)
    expect = no_img + 3.0 * (V_FULL - no_img)
    np.testing.assert_allclose(cfg("text_channel", no_img=no_img, s_img=3.0), expect, rtol=1e-6)
    # 'channel' renorms after the image guidance instead: different result
    assert np.abs(cfg("channel", no_img=no_img, s_img=3.0) - expect).max() > 0.1
    with pytest.raises(ValueError, match="cfg_renorm_type"):
        cfg("bogus")


def test_config_wiring(monkeypatch):
    c = tabletop.get_config("smoke")
    assert (c.wm.cfg_renorm_type, c.wm.cfg_renorm_min, c.wm.ivd_vit_copy) == ("none", 0.0, True)
    c.wm.update(dict(cfg_text_scale=3.0, cfg_image_scale=2.0, cfg_renorm_type="text_channel",
                     cfg_renorm_min=0.25, num_sample_steps=2))
    wm = WorldModel(c)
    assert (wm.spec.cfg_renorm_type, wm.spec.cfg_renorm_min) == ("text_channel", 0.25)
    # the sampler hands the configured renorm to cfg_velocity (traced only, nothing compiled)
    seen = []
    real = fs.cfg_velocity

    def spy(*args):
        seen.append(args[3:])
        return real(*args)
    monkeypatch.setattr(fs, "cfg_velocity", spy)
    params = jax.eval_shape(lambda: wm.init(jax.random.key(0)))
    b = 2
    jax.eval_shape(wm.predict, params, jax.ShapeDtypeStruct((b, 2, 32, 32, 3), np.uint8),
                   jax.ShapeDtypeStruct((b, 6), np.int32), jax.ShapeDtypeStruct((b, 6), bool),
                   jax.ShapeDtypeStruct((b, 10, 7), np.float32), jax.random.key(1))
    assert seen and all(s == (3.0, 2.0, "text_channel", 0.25) for s in seen), seen
    # configs saved before these options existed (loaded checkpoints) keep the old behaviour
    old = tabletop.get_config("smoke")
    for k in ("cfg_renorm_type", "cfg_renorm_min", "ivd_vit_copy"):
        del old.wm[k]
    spec = WorldModel(old).spec
    assert (spec.cfg_renorm_type, spec.cfg_renorm_min, spec.ivd_vit_copy) == ("none", 0.0, False)
    c.wm.cfg_renorm_type = "bogus"
    with pytest.raises(ConfigError, match="cfg_renorm_type"):
        validate(c)
