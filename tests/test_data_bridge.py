"""BridgeData V2: the exact RAIL spec, the standardization, and reading both the shipped fixture and the
real Bridge slice (../shared/data/bridge_dataset/1.0.0, as in CI)."""
import json
import os
import types

import numpy as np
import pytest
import tensorflow_datasets as tfds

from vlambpo_jax.data.bridge import binarize_gripper, rail_bridge_features
from vlambpo_jax.data.rlds_reader import EpisodeReader, RLDSLoader, open_builder
from vlambpo_jax.data.rlds_writer import write_rlds
from vlambpo_jax.data.standardize import StandardizeConfig
from vlambpo_jax.stages import data as data_stage

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "bridge_dataset", "1.0.0")
REAL = os.path.normpath(os.path.join(ROOT, "..", "shared", "data", "bridge_dataset", "1.0.0"))
needs_real = pytest.mark.skipif(not os.path.exists(os.path.join(REAL, "dataset_info.json")),
                                reason=f"real Bridge slice not present at {REAL}")


def _config(builder_dir, **data):
    from configs import bridge

    c = bridge.get_config("smoke")
    c.data.builder_dir = builder_dir
    c.data.update(data)
    return c


def test_binarize_gripper():
    g = np.array([1.0, 0.97, 0.6, 0.3, 0.02, 0.0, 0.5, 0.99, 0.7], np.float32)
    np.testing.assert_array_equal(binarize_gripper(g), [1, 1, 0, 0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(binarize_gripper(np.array([0.4, 0.7], np.float32)), [0, 1])


def test_fixture_has_the_exact_rail_spec():
    with open(os.path.join(FIXTURE, "features.json")) as f:
        fixture_spec = json.load(f)
    spec = rail_bridge_features((64, 64, 3))
    assert tfds.features.FeatureConnector.from_json(fixture_spec).to_json() == spec.to_json()
    with open(os.path.join(FIXTURE, "dataset_info.json")) as f:
        assert json.load(f)["fileFormat"] == "tfrecord"
    size = sum(os.path.getsize(os.path.join(FIXTURE, n)) for n in os.listdir(FIXTURE))
    assert size < 2_000_000


@needs_real
def test_rail_spec_matches_the_real_release():
    with open(os.path.join(REAL, "features.json")) as f:
        real = json.load(f)
    with open(os.path.join(FIXTURE, "features.json")) as f:
        assert json.load(f) == real


def test_fixture_standardization():
    std = StandardizeConfig.from_config(_config(FIXTURE))
    eps = list(EpisodeReader(open_builder(FIXTURE), "train", std))
    assert [e["length"] for e in eps] == [8, 7, 8, 6]          # #0 lost its all-zero first action
    for e in eps:
        assert set(np.unique(e["action"][:, 6])) <= {0.0, 1.0}  # binarized gripper
        assert e["images"].shape[1:] == (2, 32, 32, 3)
    np.testing.assert_array_equal(eps[0]["action"][:, 6], [1, 0, 0, 0, 0, 0, 0, 0])
    assert [e["image_mask"].tolist() for e in eps] == [[True, True], [True, True], [True, False], [True, True]]
    assert not eps[2]["images"][:, 1].any()
    assert [e["success"] for e in eps] == [True, True, True, False]
    assert eps[0]["instruction"][0] == "put the carrot on the plate"
    # A wrist view that is empty everywhere (image_3) is masked in every episode.
    std3 = StandardizeConfig.from_config(_config(FIXTURE, image_keys=("image_0", "image_3")))
    assert all(not e["image_mask"][1] for e in EpisodeReader(open_builder(FIXTURE), "val", std3))



def test_a_bucket_url_reaches_tfds_whole(monkeypatch):
    """config.data.builder_dir=gs://...: the URL is checked and opened as a URL (pathlib would turn it
    into the local path gs:/...). The bucket is the fixture behind epath's test backend, which etils
    picks only when it believes TensorFlow is absent."""
    from etils.epath import gpath, testing

    url = "gs://bucket/bridge_dataset/1.0.0"
    opened = []

    def local(original, path, *args, **kwargs):
        return original(str(path).replace(url, FIXTURE), *args, **kwargs)

    def builder_from_directory(path):
        opened.append(path)
        return real_builder(path.replace(url, FIXTURE))

    real_builder = tfds.builder_from_directory
    monkeypatch.setattr(gpath, "_is_tf_installed", lambda: False)
    monkeypatch.setattr(tfds, "builder_from_directory", builder_from_directory)
    with testing.mock_epath(exists=local):
        builder = open_builder(url)
    assert opened == [url]
    std = StandardizeConfig.from_config(_config(FIXTURE))
    assert [e["length"] for e in EpisodeReader(builder, "train", std)] == [8, 7, 8, 6]


def _check_batches(loader, n=2):
    it = loader.batches(future=True)
    for _ in range(n):
        b = next(it)
        B, k = loader.config.data.batch_size, loader.config.chunk_size
        S = loader.config.image_size
        assert b["images"].shape == (B, 2, S, S, 3) and b["images"].dtype == np.uint8
        assert b["next_images"].shape == b["images"].shape
        assert b["actions"].shape == (B, k, 7) and b["action_mask"].shape == (B, k)
        assert b["state"].shape == (B, 7) and b["tokens"].shape == (B, loader.config.data.max_text_len)
        assert np.isfinite(b["actions"]).all() and np.abs(b["actions"]).max() <= 1.0
        assert set(np.unique(b["actions"][..., 6])) <= {0.0, 1.0}  # gripper not normalized
        assert b["instruction"].shape == (B,) and all(isinstance(s, str) and s for s in b["instruction"])
        steps_left = b["steps_to_end"]
        np.testing.assert_array_equal(b["action_mask"].sum(1), np.minimum(steps_left + 1, k))


def test_fixture_batches(tmp_path):
    loader = RLDSLoader(_config(FIXTURE), process_index=0, process_count=1, log=lambda s: None)
    stats = loader.norm_stats(tmp_path)
    assert stats["action"].mask.tolist() == [True] * 6 + [False]
    _check_batches(loader)


@needs_real
def test_real_bridge_slice(tmp_path):
    c = _config(REAL)
    loader = RLDSLoader(c, process_index=0, process_count=1, log=lambda s: None)
    assert loader.builder.info.splits["train"].num_examples == 25
    stats = loader.norm_stats(tmp_path)
    assert stats.num_episodes == 25 and stats["action"].count == 250
    assert np.isfinite(stats["state"].mean).all() and (stats["action"].q99 >= stats["action"].q01).all()
    eps = list(loader.episodes())
    assert len(eps) == 25
    for e in eps:  # views 0 and 1 have pixels (the metadata flags of this slice say otherwise)
        assert e["image_mask"].all() and set(np.unique(e["action"][:, 6])) <= {0.0, 1.0}
    _check_batches(loader)
    # image_3 (the wrist camera slot) is empty throughout this slice: masked.
    c3 = _config(REAL, image_keys=("image_0", "image_3"), split="val")
    ep = next(RLDSLoader(c3, process_index=0, process_count=1).episodes())
    assert ep["image_mask"].tolist() == [True, False] and not ep["images"][:, 1].any()


def test_oxe_bridge_layout(tmp_path):
    T = 5
    rng = np.random.default_rng(0)
    feats = tfds.features.FeaturesDict({
        "steps": tfds.features.Dataset({
            "observation": {"image": tfds.features.Image(shape=(12, 16, 3), encoding_format="png"),
                            "state": tfds.features.Tensor(shape=(7,), dtype=np.float32),
                            "natural_language_instruction": tfds.features.Text()},
            "action": {"world_vector": tfds.features.Tensor(shape=(3,), dtype=np.float32),
                       "rotation_delta": tfds.features.Tensor(shape=(3,), dtype=np.float32),
                       "open_gripper": tfds.features.Scalar(dtype=np.bool_),
                       "terminate_episode": tfds.features.Scalar(dtype=np.float32)},
            "reward": tfds.features.Scalar(dtype=np.float32),
            "is_first": tfds.features.Scalar(dtype=np.bool_),
            "is_last": tfds.features.Scalar(dtype=np.bool_),
            "is_terminal": tfds.features.Scalar(dtype=np.bool_)}),
    })
    wv = rng.normal(size=(T, 3)).astype(np.float32)
    wv[0] = 0
    rd = rng.normal(size=(T, 3)).astype(np.float32)
    rd[0] = 0
    og = np.array([False, True, True, False, False])
    ep = {"steps": {"observation": {"image": rng.integers(0, 255, (T, 12, 16, 3), dtype=np.uint8),
                                    "state": rng.normal(size=(T, 7)).astype(np.float32),
                                    "natural_language_instruction": "pick up the spoon"},
                    "action": {"world_vector": wv, "rotation_delta": rd, "open_gripper": og,
                               "terminate_episode": np.zeros(T, np.float32)},
                    "reward": np.zeros(T, np.float32), "is_first": np.arange(T) == 0,
                    "is_last": np.arange(T) == T - 1, "is_terminal": np.arange(T) == T - 1}}
    path = write_rlds(tmp_path, [ep], dataset_name="bridge", version="0.1.0", features=feats)
    std = StandardizeConfig(layout="oxe_bridge", image_keys=("image", ""), image_size=8,
                            drop_first_zero_action=True, binarize_gripper=True)
    (e,) = list(EpisodeReader(open_builder(path), "train", std))
    # open_gripper False at step 0 makes its action all zero: dropped.
    assert e["length"] == T - 1
    np.testing.assert_array_equal(e["action"], np.concatenate([wv, rd, og[:, None]], 1)[1:])
    assert e["image_mask"].tolist() == [True, False] and e["images"].shape == (T - 1, 2, 8, 8, 3)
    assert e["instruction"][0] == "pick up the spoon"


def test_inspect_stage_on_fixture(tmp_path):
    calls = []
    ctx = types.SimpleNamespace(config=_config(FIXTURE), workdir=tmp_path, stage_dir=tmp_path / "data",
                                writer=types.SimpleNamespace(scalars=lambda step, d: calls.append(d)),
                                preemption=None)
    summary = data_stage.run(ctx)
    json.dumps(summary)
    assert summary["episodes"] == 4 and summary["batches_read"] == 2
    assert summary["batch"]["images"]["shape"] == [8, 2, 32, 32, 3]
    assert (tmp_path / "data" / "norm_stats.json").exists()
    assert list((tmp_path / "norm_stats").glob("norm_stats_*.json"))
    assert calls and calls[0]["data/episodes"] == 4.0


def test_bridge_config_and_docs_name_the_same_views():
    """configs/bridge.py's view keys are the ones its docstring and the README say it reads."""
    from configs import bridge

    head, wrist = bridge.get_config().data.image_keys
    readme = open(os.path.join(ROOT, "README.md")).read()
    for doc in (" ".join(bridge.__doc__.split()), " ".join(readme.split())):
        assert f"head slot reads {head}" in doc or f"reads `{head}`" in doc, doc[:200]
        assert f"wrist slot reads {wrist}" in doc or f"and `{wrist}`" in doc
        assert "image_3" in doc and "blank" in doc  # and what a user without a wrist camera gets
