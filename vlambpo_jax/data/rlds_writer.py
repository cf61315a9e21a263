"""Writes episodes as an RLDS dataset directory that `tfds.builder_from_directory` opens.

Episodes stream through a tiny `tfds.core.GeneratorBasedBuilder` (TFDS does the sharding, the
`dataset_info.json` / `features.json` files and the atomic rename of the finished directory). Images
are encoded to PNG/JPEG bytes here with PIL, so with `file_format='array_record'` nothing imports
TensorFlow; 'tfrecord' (the format of the BridgeData V2 release) needs TensorFlow.

Episode layout (the RLDS convention; T steps, any T >= 0):
    {'steps': {'observation': {'image_0': uint8[T, H, W, 3], ..., 'state': float32[T, S]},
               'action': float32[T, A],
               'language_instruction': str (same for all steps) or list[str] of length T,
               'reward': float32[T], 'discount': float32[T],
               'is_first': bool[T], 'is_last': bool[T], 'is_terminal': bool[T],
               ...extra_step_features...},
     'episode_metadata': {name: str | int | bool | float scalar, ...}}
'steps' may also be a list of T per-step dicts.
"""
from __future__ import annotations

import io
import itertools
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from vlambpo_jax.data.errors import DataError, import_tensorflow, where

FILE_FORMATS = ("array_record", "tfrecord")


def episode_features(*, image_keys, image_shape, state_dim: int, action_dim: int,
                     metadata: Mapping[str, Any] | None = None, image_encoding: str = "png",
                     extra_step_features: Mapping[str, Any] | None = None) -> tfds.features.FeaturesDict:
    """The default feature spec of one episode (see the module docstring).

    image_shape: (H, W, 3). metadata: example values (or tfds features) of episode_metadata; the type of
    each value picks its feature (str -> Text, bool -> bool, int -> int64 or the numpy dtype, float ->
    float32). extra_step_features: {name: tfds feature} added to each step.
    """
    obs = {k: tfds.features.Image(shape=tuple(image_shape), dtype=np.uint8, encoding_format=image_encoding)
           for k in image_keys}
    obs["state"] = tfds.features.Tensor(shape=(state_dim,), dtype=np.float32)
    steps = {
        "observation": obs,
        "action": tfds.features.Tensor(shape=(action_dim,), dtype=np.float32),
        "language_instruction": tfds.features.Text(),
        "reward": tfds.features.Scalar(dtype=np.float32),
        "discount": tfds.features.Scalar(dtype=np.float32),
        "is_first": tfds.features.Scalar(dtype=np.bool_),
        "is_last": tfds.features.Scalar(dtype=np.bool_),
        "is_terminal": tfds.features.Scalar(dtype=np.bool_),
    }
    steps.update(extra_step_features or {})
    meta = {k: _scalar_feature(k, v) for k, v in (metadata or {}).items()}
    return tfds.features.FeaturesDict({"steps": tfds.features.Dataset(steps), "episode_metadata": meta})


def _scalar_feature(name: str, value: Any):
    if isinstance(value, tfds.features.FeatureConnector):
        return value
    if isinstance(value, (str, bytes)):
        return tfds.features.Text()
    if isinstance(value, (bool, np.bool_)):
        return tfds.features.Scalar(dtype=np.bool_)
    if isinstance(value, np.generic):
        return tfds.features.Scalar(dtype=value.dtype)
    if isinstance(value, int):
        return tfds.features.Scalar(dtype=np.int64)
    if isinstance(value, float):
        return tfds.features.Scalar(dtype=np.float32)
    raise DataError(f"episode_metadata '{name}': unsupported value type {type(value).__name__} "
                    "(use str, int, bool or float)")


def builder_dir(directory, dataset_name: str, version: str = "1.0.0") -> Path:
    """Where write_rlds(directory, ..., dataset_name, version) puts the dataset (what open_builder takes)."""
    return Path(directory) / dataset_name / version


def write_rlds(directory, episodes, *, dataset_name: str, image_keys=("image_0", "image_1"),
               image_shape=(64, 64, 3), split: str = "train", file_format: str = "array_record",
               version: str = "1.0.0", extra_step_features: Mapping[str, Any] | None = None,
               features: tfds.features.FeaturesDict | None = None, image_encoding: str = "png",
               description: str | None = None, overwrite: bool = False) -> Path:
    """Writes episodes to `directory/dataset_name/version` and returns that builder directory.

    directory: the TFDS data_dir (parent of the dataset folder).
    episodes: an iterable (a generator is fine; episodes are encoded one at a time) of episode dicts,
      or a mapping {split: iterable} to write several splits.
    image_keys, image_shape, extra_step_features, image_encoding: build the default feature spec
      (`episode_features`); state/action dims and the metadata spec come from the first episode.
    features: a complete tfds FeaturesDict to use instead (e.g. `bridge.rail_bridge_features()`); then
      episodes must match it (images may be uint8 arrays; they are encoded to the spec's format).
    file_format: 'array_record' (no TensorFlow needed; random access) or 'tfrecord' (needs TensorFlow).
    overwrite: replace an existing dataset at that path (otherwise that is an error).
    Raises DataError naming the episode and feature when an episode does not fit the spec.
    """
    if file_format not in FILE_FORMATS:
        raise ValueError(f"file_format must be one of {FILE_FORMATS}, got {file_format!r}")
    if file_format == "tfrecord":
        import_tensorflow()
    splits = dict(episodes) if isinstance(episodes, Mapping) else {split: episodes}
    splits = {name: iter(eps) for name, eps in splits.items()}
    if features is None:
        first_split = next(iter(splits))
        first = next(splits[first_split], None)
        if first is None:
            raise DataError(f"{where(dataset_name)}: split '{first_split}' has no episodes; the feature "
                            "spec is taken from the first episode (or pass features=)")
        splits[first_split] = itertools.chain([first], splits[first_split])
        steps = _steps_as_dict(first.get("steps"), dataset_name, 0)
        obs = steps.get("observation", {})
        features = episode_features(
            image_keys=image_keys, image_shape=image_shape,
            state_dim=_last_dim(obs.get("state"), dataset_name, "steps/observation/state"),
            action_dim=_last_dim(steps.get("action"), dataset_name, "steps/action"),
            metadata=first.get("episode_metadata", {}), image_encoding=image_encoding,
            extra_step_features=extra_step_features)

    out = builder_dir(directory, dataset_name, version)
    if (out / "dataset_info.json").exists():
        if not overwrite:
            raise FileExistsError(f"an RLDS dataset already exists at {out}; pass overwrite=True to replace it")
        shutil.rmtree(out)

    builder = _EpisodeWriter(name=dataset_name, version=version, features=features, splits=splits,
                             description=description, data_dir=str(directory), file_format=file_format)
    builder.download_and_prepare()
    return out


def _last_dim(x, dataset: str, feature: str) -> int:
    if x is None:
        raise DataError(f"{where(dataset, 0, feature)}: missing")
    x = np.asarray(x)
    if x.ndim != 2:
        raise DataError(f"{where(dataset, 0, feature)}: expected shape [T, D], got {x.shape}")
    return int(x.shape[1])


def _steps_as_dict(steps, dataset: str, index: int) -> dict:
    """Accepts a dict of per-step stacked values or a list of per-step dicts; returns the former."""
    if steps is None:
        raise DataError(f"{where(dataset, index, 'steps')}: missing")
    if isinstance(steps, Mapping):
        return dict(steps)
    steps = list(steps)
    if not steps:
        raise DataError(f"{where(dataset, index, 'steps')}: an empty list of steps has no structure; "
                        "give a dict of zero-length arrays instead")

    def stack(items):
        if isinstance(items[0], Mapping):
            return {k: stack([it[k] for it in items]) for k in items[0]}
        return list(items)
    return stack(steps)


class _EpisodeWriter(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A GeneratorBasedBuilder over in-memory iterables (no class per dataset needed)."""

    # No source file with checksums belongs to this builder; without this TFDS looks one up through
    # importlib_resources, which is not installed everywhere.
    code_path = None

    def __init__(self, *, name, version, features, splits, description, **kwargs):
        self.name = name
        self.VERSION = tfds.core.Version(version)  # noqa: N815  (TFDS attribute names)
        self.RELEASE_NOTES = {version: "Written by vlambpo_jax.data.rlds_writer."}  # noqa: N815
        self._features = features
        self._splits = splits
        self._description = description or f"RLDS episodes written by vlambpo_jax ({name})."
        super().__init__(**kwargs)

    def _info(self):
        # disable_shuffling keeps the episodes in the order given, so episode #i is the i-th written.
        return tfds.core.DatasetInfo(builder=self, description=self._description, features=self._features,
                                     disable_shuffling=True)

    def _split_generators(self, dl_manager):
        del dl_manager
        return {name: self._generate(name, eps) for name, eps in self._splits.items()}

    def _generate(self, split, episodes: Iterable):
        for i, ep in enumerate(episodes):
            yield i, _encode_episode(self._features, ep, f"{self.name}/{split}", i)

    def _generate_examples(self, **kwargs):  # required abstract method; _split_generators is used
        raise NotImplementedError

    # TFDS announces a download ("Downloading and preparing dataset ...") for every builder; nothing is
    # downloaded here, so say what happened instead.
    def _log_download_bytes(self):
        pass

    def _log_download_done(self):
        print(f"RLDS dataset {self.name} written to {self.data_dir}")


def _encode_episode(features: tfds.features.FeaturesDict, ep: Mapping, dataset: str, index: int) -> dict:
    if not isinstance(ep, Mapping):
        raise DataError(f"{where(dataset, index)}: expected a dict with 'steps' and 'episode_metadata', "
                        f"got {type(ep).__name__}")
    ep = dict(ep)
    ep["steps"] = _steps_as_dict(ep.get("steps"), dataset, index)
    steps_feature = features["steps"]
    lengths = {}
    _collect_lengths(ep["steps"], "steps", lengths)
    if len(set(lengths.values())) > 1:
        raise DataError(f"{where(dataset, index, 'steps')}: features have different numbers of steps: "
                        + ", ".join(f"{k}={v}" for k, v in sorted(lengths.items())))
    n_steps = next(iter(lengths.values()), 0)
    out = {}
    for key in features.keys():
        if key not in ep:
            if key == "episode_metadata" and not features[key].keys():
                out[key] = {}
                continue
            raise DataError(f"{where(dataset, index, key)}: missing")
        if key == "steps":
            out[key] = _encode_value(steps_feature.feature, ep[key], dataset, index, "steps", n_steps)
        else:
            out[key] = _encode_value(features[key], ep[key], dataset, index, key, None)
    extra = set(ep) - set(features.keys())
    if extra:
        raise DataError(f"{where(dataset, index, sorted(extra)[0])}: not in the feature spec")
    return out


def _collect_lengths(value, path, out):
    if isinstance(value, Mapping):
        for k, v in value.items():
            _collect_lengths(v, f"{path}/{k}", out)
    elif isinstance(value, (str, bytes)):
        return  # a single instruction string is broadcast over the steps
    else:
        out[path] = len(value)


def _encode_value(feature, value, dataset, index, path, n_steps):
    """Encodes one feature; n_steps is T for per-step values (leading time axis) and None otherwise."""
    if isinstance(feature, tfds.features.FeaturesDict):
        if not isinstance(value, Mapping):
            raise DataError(f"{where(dataset, index, path)}: expected a dict, got {type(value).__name__}")
        missing = [k for k in feature.keys() if k not in value]
        if missing:
            raise DataError(f"{where(dataset, index, f'{path}/{missing[0]}')}: missing")
        extra = [k for k in value if k not in feature.keys()]
        if extra:
            raise DataError(f"{where(dataset, index, f'{path}/{extra[0]}')}: not in the feature spec")
        return {k: _encode_value(feature[k], value[k], dataset, index, f"{path}/{k}", n_steps)
                for k in feature.keys()}
    if isinstance(feature, tfds.features.Image):
        if n_steps is None:
            return _encode_image(feature, value, dataset, index, path)
        return [_encode_image(feature, f, dataset, index, path) for f in value]
    if isinstance(feature, tfds.features.Text):
        if n_steps is None:
            return _as_text(value, dataset, index, path)
        if isinstance(value, (str, bytes)):
            return [_as_text(value, dataset, index, path)] * n_steps
        return [_as_text(v, dataset, index, path) for v in value]
    if isinstance(feature, tfds.features.Tensor):  # also Scalar
        arr = np.asarray(value)
        want = tuple(feature.shape) if n_steps is None else (n_steps,) + tuple(feature.shape)
        if arr.ndim != len(want) or any(w is not None and w != s for w, s in zip(want, arr.shape)):
            raise DataError(f"{where(dataset, index, path)}: expected shape {list(want)}, got {list(arr.shape)}")
        dtype = np.dtype(feature.np_dtype)
        if arr.size and not np.can_cast(arr.dtype, dtype, casting="same_kind"):
            raise DataError(f"{where(dataset, index, path)}: expected dtype {dtype}, got {arr.dtype}")
        return arr.astype(dtype, copy=False)
    return value  # any other TFDS feature: let TFDS encode it


def _as_text(value, dataset, index, path) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, (str, np.str_)):
        return str(value)
    raise DataError(f"{where(dataset, index, path)}: expected a string, got {type(value).__name__}")


def _encode_image(feature: tfds.features.Image, frame, dataset, index, path) -> bytes:
    """uint8[H, W, C] -> PNG/JPEG bytes (PIL, no TensorFlow). Bytes pass through unchanged."""
    if isinstance(frame, bytes):
        return frame
    arr = np.asarray(frame)
    want = tuple(feature.shape)
    if arr.dtype != np.uint8:
        raise DataError(f"{where(dataset, index, path)}: expected uint8 images, got {arr.dtype}")
    if arr.ndim != 3 or any(w is not None and w != s for w, s in zip(want, arr.shape)):
        raise DataError(f"{where(dataset, index, path)}: expected image shape {list(want)}, got {list(arr.shape)}")
    fmt = (feature.encoding_format or "png").lower()
    buf = io.BytesIO()
    img = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
    if fmt in ("jpeg", "jpg"):
        img.save(buf, format="JPEG", quality=95)
    else:
        img.save(buf, format="PNG")
    return buf.getvalue()
