"""Normalization statistics (one streaming pass) against numpy, (un)normalize round trips, caching."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vlambpo_jax.data import normalization as nz


def _data(seed=0, n=1000, d=7):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * np.arange(1, d + 1) + np.arange(d)
    x[:, -1] = rng.integers(0, 2, n)  # a binary gripper dim
    return x.astype(np.float32)


def test_stats_match_numpy():
    x = _data()
    bounds = zip(range(0, 1000, 97), list(range(97, 1000, 97)) + [1000])
    eps = [{"action": x[a:b], "state": x[a:b] * 2} for a, b in bounds]
    stats = nz.compute_stats(eps, masks={"action": nz.dims_mask(7, (6,))})
    s = stats["action"]
    np.testing.assert_allclose(s.mean, x.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(s.std, x.std(0), rtol=1e-5)
    np.testing.assert_array_equal(s.min, x.min(0))
    np.testing.assert_array_equal(s.max, x.max(0))
    np.testing.assert_allclose(s.q01, np.quantile(x.astype(np.float64), 0.01, axis=0), rtol=1e-6)
    np.testing.assert_allclose(s.q99, np.quantile(x.astype(np.float64), 0.99, axis=0), rtol=1e-6)
    assert s.mask.tolist() == [True] * 6 + [False] and stats["state"].mask.all()
    assert s.count == 1000 and stats.num_episodes == len(eps)


def test_reservoir_quantiles_are_close_beyond_capacity():
    x = _data(1, n=20_000)
    acc = nz.StreamingStats(7, reservoir=4000)
    for a in range(0, 20_000, 777):
        acc.update(x[a:a + 777])
    s = acc.finalize()
    np.testing.assert_allclose(s.mean, x.mean(0), rtol=1e-4, atol=1e-4)  # still exact
    spread = x.std(0)[:6]
    assert (np.abs(s.q01 - np.quantile(x, 0.01, axis=0))[:6] < 0.15 * spread).all()
    assert (np.abs(s.q99 - np.quantile(x, 0.99, axis=0))[:6] < 0.15 * spread).all()


@pytest.mark.parametrize("mode", nz.MODES)
def test_round_trip_numpy_and_jax(mode):
    x = _data()
    stats = nz.compute_stats([{"action": x}], keys=("action",), masks={"action": nz.dims_mask(7, (-1,))})["action"]
    y = nz.normalize(x, stats, mode)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y[:, 6], x[:, 6])  # masked gripper untouched
    if mode == "percentile":
        assert y.min() >= -1 and y.max() <= 1
        inside = ((x >= stats.q01) & (x <= stats.q99)).all(1)
        np.testing.assert_allclose(nz.unnormalize(y, stats, mode)[inside], x[inside], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(nz.normalize(stats.q99[None], stats, mode)[0, :6], 1.0, atol=1e-6)
    elif mode == "quantile":   # the same map unclipped: exact everywhere, beyond [-1, 1] outside the quantiles
        assert y[:, :6].min() < -1 and y[:, :6].max() > 1
        np.testing.assert_allclose(nz.unnormalize(y, stats, mode), x, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(nz.normalize(stats.q01[None], stats, mode)[0, :6], -1.0, atol=1e-6)
    else:
        np.testing.assert_allclose(y[:, :6].mean(0), 0, atol=1e-4)
        np.testing.assert_allclose(y[:, :6].std(0), 1, atol=1e-4)
        np.testing.assert_allclose(nz.unnormalize(y, stats, mode), x, rtol=1e-4, atol=1e-4)
    yj = jax.jit(lambda a: nz.normalize(a, stats, mode))(jnp.asarray(x))
    assert isinstance(yj, jax.Array)
    np.testing.assert_allclose(np.asarray(yj), y, rtol=1e-5, atol=1e-6)
    xj = jax.jit(lambda a: nz.unnormalize(a, stats, mode))(yj)
    np.testing.assert_allclose(np.asarray(xj), nz.unnormalize(y, stats, mode), rtol=1e-5, atol=1e-5)


def test_constant_dim_and_bad_mode():
    x = np.ones((10, 2), np.float32)
    s = nz.compute_stats([{"action": x}], keys=("action",))["action"]
    for mode in nz.MODES:
        assert np.isfinite(nz.normalize(x, s, mode)).all()
    with pytest.raises(ValueError, match="zscore"):
        nz.normalize(x, s, "minmax")


def test_to_from_dict_and_cache(tmp_path):
    stats = nz.compute_stats([{"action": _data(), "state": _data(2)}], fingerprint="abc")
    again = nz.NormStats.from_dict(json.loads(json.dumps(stats.to_dict())))
    for k in ("action", "state"):
        for f in ("mean", "std", "q01", "q99", "min", "max", "mask"):
            np.testing.assert_array_equal(getattr(again[k], f), getattr(stats[k], f))
    calls = []

    def compute():
        calls.append(1)
        return stats
    a = nz.load_or_compute(tmp_path, "key1", compute, log=lambda s: None)
    b = nz.load_or_compute(tmp_path, "key1", compute, log=lambda s: None)
    assert len(calls) == 1 and (tmp_path / "norm_stats_key1.json").exists()
    np.testing.assert_array_equal(a["action"].q99, b["action"].q99)
    nz.load_or_compute(tmp_path, "key2", compute, log=lambda s: None)
    assert len(calls) == 2
    assert nz.fingerprint({"a": 1}) != nz.fingerprint({"a": 2})


def test_loader_fingerprint_tracks_transforms():
    import os

    from configs import bridge
    from vlambpo_jax.data.rlds_reader import RLDSLoader

    c = bridge.get_config("smoke")
    kw = dict(process_index=0, process_count=1)
    f1 = RLDSLoader(c, **kw).fingerprint()
    assert f1 == RLDSLoader(bridge.get_config("smoke"), **kw).fingerprint()
    c.data.binarize_gripper = False
    assert RLDSLoader(c, **kw).fingerprint() != f1
    assert os.path.isdir(c.data.builder_dir)


def test_data_config_rules_accept_shipped_configs_and_name_bad_keys():
    from configs import bridge, tabletop
    from vlambpo_jax.config_checks import ConfigError, validate

    for mod in (bridge, tabletop):
        for arg in ("", "smoke"):
            validate(mod.get_config(arg))
    c = bridge.get_config("smoke")
    c.data.layout = "lerobot"
    with pytest.raises(ConfigError, match="^config.data.layout='lerobot': must be one of"):
        validate(c)
    c = bridge.get_config("smoke")
    c.data.image_keys = ("image_0",)
    with pytest.raises(ConfigError, match="^config.data.image_keys=.*one observation key per view"):
        validate(c)
