"""Bad data: each case stops with one DataError naming dataset, episode and feature, or is skipped and
counted when config.data.skip_bad_episodes is set. Never a silently wrong batch."""
import os
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds

from vlambpo_jax.data.errors import DataError
from vlambpo_jax.data.rlds_reader import EpisodeReader, RLDSLoader, open_builder
from vlambpo_jax.data.rlds_writer import episode_features, write_rlds
from vlambpo_jax.data.standardize import StandardizeConfig
from vlambpo_jax.data.synthetic import synthetic_episode

KEYS = ("image_0", "image_1")
STD = StandardizeConfig(layout="generic", image_keys=KEYS, image_size=8)


def _eps(n=3, seed=0, T=4, **kw):
    rng = np.random.default_rng(seed)
    return [synthetic_episode(rng, T, image_keys=kw.get("image_keys", KEYS),
                              action_dim=kw.get("action_dim", 7),
                              metadata={"episode_id": i, "file_path": f"traj{i}"}) for i in range(n)]


def _write(tmp_path, eps, name="bad", **kw):
    kw.setdefault("image_keys", KEYS)
    return write_rlds(tmp_path, eps, dataset_name=name, image_shape=(8, 8, 3), **kw)


def _read_all(path, std=STD, **kw):
    return list(EpisodeReader(open_builder(path), "train", std, **kw))


def _expect(path, *patterns, std=STD):
    with pytest.raises(DataError) as info:
        _read_all(path, std=std)
    msg = str(info.value)
    assert "\n" not in msg
    for p in patterns:
        assert p in msg, msg
    return msg


def test_missing_feature(tmp_path):
    path = _write(tmp_path, _eps(image_keys=("image_0",)), image_keys=("image_0",))
    _expect(path, "dataset 'bad'", "episode #0 (file_path=traj0, episode_id=0)",
            "feature 'steps/observation/image_1'", "missing")


def test_wrong_action_shape(tmp_path):
    path = _write(tmp_path, _eps(action_dim=6))
    _expect(path, "dataset 'bad'", "episode #0", "feature 'steps/action'", "expected 7 dims, got 6")


def test_wrong_dtype(tmp_path):
    feats = episode_features(image_keys=KEYS, image_shape=(8, 8, 3), state_dim=7, action_dim=7,
                             metadata={"episode_id": 0, "file_path": ""})
    steps = dict(feats["steps"].feature.items())
    steps["action"] = tfds.features.Tensor(shape=(7,), dtype=np.int32)
    feats = tfds.features.FeaturesDict({"steps": tfds.features.Dataset(steps),
                                        "episode_metadata": feats["episode_metadata"]})
    eps = _eps()
    for e in eps:
        e["steps"]["action"] = (e["steps"]["action"] * 10).astype(np.int32)
    path = _write(tmp_path, eps, features=feats)
    _expect(path, "episode #0", "feature 'steps/action'", "expected a float array, got dtype int32")


def test_wrong_image_shape(tmp_path):
    rng = np.random.default_rng(0)
    eps = _eps()
    for e in eps:  # a grayscale wrist view where RGB is expected
        e["steps"]["observation"]["image_1"] = rng.integers(0, 255, (4, 8, 8, 1), dtype=np.uint8)
    feats = episode_features(image_keys=KEYS, image_shape=(8, 8, 3), state_dim=7, action_dim=7,
                             metadata=eps[0]["episode_metadata"])
    obs = dict(feats["steps"].feature["observation"].items())
    obs["image_1"] = tfds.features.Image(shape=(8, 8, 1), encoding_format="png")
    steps = dict(feats["steps"].feature.items(), observation=tfds.features.FeaturesDict(obs))
    feats = tfds.features.FeaturesDict({"steps": tfds.features.Dataset(steps),
                                        "episode_metadata": feats["episode_metadata"]})
    path = _write(tmp_path, eps, features=feats)
    _expect(path, "episode #0", "feature 'steps/observation/image_1'", "expected uint8[T, H, W, 3]")


@pytest.mark.parametrize("where_,value", [("action", np.nan), ("state", np.inf)])
def test_non_finite_values(tmp_path, where_, value):
    eps = _eps()
    arr = eps[2]["steps"]["action"] if where_ == "action" else eps[2]["steps"]["observation"]["state"]
    arr[1, 3] = value
    path = _write(tmp_path, eps)
    feature = "steps/action" if where_ == "action" else "steps/observation/state"
    _expect(path, "episode #2", f"feature '{feature}'", "non-finite value", "step 1, dim 3")


def test_empty_episode(tmp_path):
    eps = _eps()
    eps.insert(1, _eps(1, T=0)[0])
    path = _write(tmp_path, eps)
    _expect(path, "episode #1", "feature 'steps'", "empty episode")


def test_only_zero_action_is_empty_after_dropping_it(tmp_path):
    eps = _eps(1, T=1)
    eps[0]["steps"]["action"][:] = 0
    path = _write(tmp_path, eps)
    _expect(path, "episode #0", "empty episode", std=StandardizeConfig(image_keys=KEYS, image_size=8,
                                                                        drop_first_zero_action=True))


@pytest.mark.parametrize("file_format", ["array_record", "tfrecord"])
def test_truncated_record_file(tmp_path, file_format):
    eps = _eps(4, T=6)
    path = _write(tmp_path, eps, file_format=file_format)
    (data_file,) = [p for p in path.iterdir() if f".{file_format}-" in p.name]
    size = data_file.stat().st_size
    with open(data_file, "r+b") as f:
        f.truncate(size // 2)
    msg = _expect(path, "dataset 'bad'", data_file.name, "truncated or corrupt")
    assert "episode #" in msg
    # With skipping, the readable episodes come through and the lost ones are counted.
    reader = EpisodeReader(open_builder(path), "train", STD, skip_bad=True, log=lambda s: None)
    got = [e["index"] for e in reader]
    assert reader.bad_episodes == 4 - len(got) >= 1
    assert got == list(range(len(got)))
    # Shuffled order: still every episode either read or counted as lost, once.
    reader = EpisodeReader(open_builder(path), "train", STD, skip_bad=True, shuffle=True, seed=1,
                           log=lambda s: None)
    got = [e["index"] for e in reader]
    assert reader.bad_episodes == 4 - len(got) >= 1


def test_writer_rejects_inconsistent_steps(tmp_path):
    eps = _eps(2)
    eps[1]["steps"]["reward"] = np.zeros((3,), np.float32)
    with pytest.raises(DataError, match=r"episode #1.*different numbers of steps.*steps/reward=3"):
        _write(tmp_path, eps)


def test_skip_bad_episodes_counts_and_never_yields_them(tmp_path):
    from configs import bridge

    eps = _eps(4)
    eps[1]["steps"]["action"][2, 0] = np.nan
    eps[3]["steps"]["observation"]["state"][0, 0] = -np.inf
    path = _write(tmp_path, eps)
    c = bridge.get_config("smoke")
    c.image_size, c.chunk_size = 8, 2
    c.data.update(dict(builder_dir=str(path), layout="generic", drop_first_zero_action=False,
                       binarize_gripper=False, batch_size=2, shuffle_buffer=4))
    logs = []
    c.data.skip_bad_episodes = False
    with pytest.raises(DataError, match="episode #1"):
        list(RLDSLoader(c, process_index=0, process_count=1).batches(repeat=False))
    c.data.skip_bad_episodes = True
    loader = RLDSLoader(c, process_index=0, process_count=1, log=logs.append)
    seen = set()
    for b in loader.batches(repeat=False, drop_remainder=False):
        seen.update(b["episode_index"].tolist())
        assert np.isfinite(b["actions"]).all() and np.isfinite(b["state"]).all()
    assert seen == {0, 2}
    assert loader.bad_episodes == 2
    assert sum("skipping" in m for m in logs) == 2


def test_unknown_dataset_path(tmp_path):
    with pytest.raises(DataError, match="no RLDS/TFDS dataset at"):
        open_builder(os.path.join(tmp_path, "nope", "1.0.0"))
    path = _write(tmp_path, _eps(1))
    with pytest.raises(DataError, match="no split 'val'"):
        EpisodeReader(open_builder(path), "val", STD)


def _loader_config(path, **data):
    from configs import bridge

    c = bridge.get_config("smoke")
    c.image_size, c.chunk_size = 8, 2
    c.data.update(dict(builder_dir=str(path), layout="generic", drop_first_zero_action=False,
                       binarize_gripper=False, batch_size=2, shuffle_buffer=4, skip_bad_episodes=True,
                       **data))
    return c


def test_skipped_episodes_are_counted_once_over_every_pass(tmp_path):
    """The statistics pass, the batch pass and repeated epochs all meet the same lost episodes."""
    path = _write(tmp_path / "data", _eps(6, T=6), file_format="tfrecord")
    (data_file,) = [p for p in path.iterdir() if ".tfrecord-" in p.name]
    with open(data_file, "r+b") as f:
        f.truncate(data_file.stat().st_size // 2)
    logs = []
    loader = RLDSLoader(_loader_config(path), process_index=0, process_count=1, log=logs.append)
    loader.norm_stats(tmp_path / "stats")
    read = set()
    batches = loader.batches(repeat=True, drop_remainder=False)
    for _ in range(12):  # several epochs of the readable episodes
        read.update(next(batches)["episode_index"].tolist())
    lost = 6 - len(read)
    assert 1 <= lost < 6
    assert loader.bad_episodes == lost
    assert sum("skipping" in m for m in logs) == 1, logs


def test_every_episode_bad_names_the_dataset_and_says_so(tmp_path):
    eps = _eps(3)
    for ep in eps:
        ep["steps"]["action"][0, 0] = np.nan
    path = _write(tmp_path, eps)
    loader = RLDSLoader(_loader_config(path), process_index=0, process_count=1, log=lambda s: None)
    with pytest.raises(DataError) as info:
        loader.norm_stats(tmp_path / "stats")
    msg = str(info.value)
    assert "\n" not in msg
    assert "dataset 'bad'" in msg and "all 3 episodes of split 'train' are bad" in msg, msg
    assert "the first: dataset 'bad', episode #0" in msg and "non-finite value nan" in msg, msg


def test_dataset_named_by_data_dir_reports_its_directory(tmp_path):
    path = _write(tmp_path, _eps(2))
    c = _loader_config("", name="bad", data_dir=str(tmp_path))
    loader = RLDSLoader(c, process_index=0, process_count=1)
    assert Path(loader.builder_dir) == path
    assert loader.fingerprint() == RLDSLoader(_loader_config(path), process_index=0,
                                              process_count=1).fingerprint()
