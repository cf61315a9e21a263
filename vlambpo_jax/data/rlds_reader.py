"""RLDS datasets -> standardized episodes -> shuffled numpy (or device-sharded jax) training batches.

Reading goes through tensorflow-datasets: array_record datasets (this project's own episodes) are read
by random access with `builder.as_data_source` and need no TensorFlow; tfrecord datasets (the
BridgeData V2 release) are read with `builder.as_dataset` and need TensorFlow.

Episodes of a split are numbered 0..N-1 in file order. Host p of P reads the contiguous range
[N p / P, N (p + 1) / P), so the hosts' shards are disjoint and cover the split. Within a host, the
episode order of each epoch is a seeded permutation (array_record) or a seeded shuffle buffer over the
files' order (tfrecord), and samples (one per step) go through a seeded shuffle buffer: same seed, same
batches. Memory is bounded by the sample shuffle buffer (each sample references its episode, so at most
`shuffle_buffer` episodes are alive) plus the episode buffer.

Batch (B = per-host batch size, V views, S = image_size, k = chunk_size, L = max_text_len):
    images        uint8[B, V, S, S, 3]   view 0 = head, 1 = wrist (config.data.image_keys order)
    image_mask    bool[B, V]             False where the view is empty in that episode
    state         float32[B, D_s]        normalized (if statistics are given)
    raw_state     float32[B, D_s]        the state as recorded (episodes read from RLDS)
    actions       float32[B, k, D_a]     normalized actions t..t+k-1
    action_mask   bool[B, k]             False past the episode end (padding: last action or zeros)
    tokens        int32[B, L]; token_mask bool[B, L]   tokenized instruction
    instruction   object[B] (str)
    episode_index int32[B]; step_index int32[B]       where each sample came from
  with future=True also:
    next_images   uint8[B, V, S, S, 3]   frame t+k, clamped to the last frame
    episode_success bool[B]; steps_to_end int32[B] (T - 1 - t)
"""
from __future__ import annotations

import atexit
import collections
import dataclasses
import itertools
import os
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from vlambpo_jax.data import normalization
from vlambpo_jax.data.errors import DataError, import_tensorflow, where
from vlambpo_jax.data.standardize import StandardizeConfig, standardize
from vlambpo_jax.data.tokenizer import ByteTokenizer, policy_prompt

# Re-exported for users of the reader.
__all__ = ["DataError", "StandardizeConfig", "open_builder", "resolve_builder_dir", "EpisodeReader",
           "RLDSLoader", "host_range", "iter_samples", "make_batch", "iter_batches", "to_device", "prefetch"]

ACTION_PADS = ("repeat_last", "zeros")


# ----------------------------------------------------------------------------------------------------
# Opening datasets


def open_builder(builder_dir: str | os.PathLike = "", *, name: str = "", data_dir: str | os.PathLike = "",
                 version: str = "") -> tfds.core.DatasetBuilder:
    """A TFDS builder from its directory (.../name/version), or from name + data_dir (+ version).

    Without a version the newest version directory under data_dir/name is used.
    """
    if not builder_dir:
        if not (name and data_dir):
            raise DataError("no dataset given: set config.data.builder_dir, or config.data.name and "
                            "config.data.data_dir")
        base = epath.Path(data_dir) / name
        if not version:
            versions = sorted((p.name for p in base.glob("*") if (p / "dataset_info.json").exists()),
                              key=lambda v: tuple(int(x) for x in v.split(".") if x.isdigit()))
            if not versions:
                raise DataError(f"dataset '{name}': no prepared version under {base}")
            version = versions[-1]
        builder_dir = base / version
    path = epath.Path(builder_dir)   # local or a URL (gs://...): TFDS reads both
    if not (path / "dataset_info.json").exists():
        raise DataError(f"no RLDS/TFDS dataset at {path} (expected dataset_info.json and features.json "
                        "there; point config.data.builder_dir at the directory .../<name>/<version>)")
    return tfds.builder_from_directory(str(path))


def resolve_builder_dir(config, workdir: str | os.PathLike | None = None) -> str:
    """config.data.builder_dir, or (when empty and no name is set) the RLDS dataset the demos stage
    wrote under workdir/demos (the first directory there holding a dataset_info.json)."""
    d = config.data
    if d.builder_dir or d.name:
        return str(d.builder_dir)
    if workdir is None:
        raise DataError("config.data.builder_dir is empty and no workdir was given to find the demos")
    demos = Path(workdir) / "demos"   # local: the workdir is never a URL
    found = sorted(p.parent for p in demos.rglob("dataset_info.json")) if demos.exists() else []
    if not found:
        raise DataError(f"config.data.builder_dir is empty, which means 'the demos stage output', but no "
                        f"RLDS dataset was found under {demos}; run the demos stage first or set "
                        "config.data.builder_dir")
    return str(found[0])


def _file_format(builder) -> str:
    fmt = builder.info.file_format
    return getattr(fmt, "value", fmt) or "tfrecord"


def host_range(num_episodes: int, process_index: int, process_count: int) -> tuple[int, int]:
    """Contiguous [lo, hi) episode range of one host; the ranges of all hosts are disjoint and cover."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    return num_episodes * process_index // process_count, num_episodes * (process_index + 1) // process_count


def _empty_like_spec(feature) -> Any:
    """Zero-length numpy arrays with the structure of a (steps) feature: for episodes with 0 steps."""
    info = feature.get_tensor_info()

    def make(node):
        if isinstance(node, Mapping):
            return {k: make(v) for k, v in node.items()}
        dtype = np.dtype(node.np_dtype)
        dtype = np.dtype(object) if dtype.kind in "OSU" else dtype
        return np.zeros((0,) + tuple(0 if s is None else s for s in node.shape), dtype)
    return make(info)


def _stack(items: list) -> Any:
    """List of per-step (nested) dicts -> dict of stacked arrays."""
    first = items[0]
    if isinstance(first, Mapping):
        return {k: _stack([it[k] for it in items]) for k in first}
    if isinstance(first, (bytes, str)):
        return np.array(items, dtype=object)
    return np.stack([np.asarray(it) for it in items])


# ----------------------------------------------------------------------------------------------------
# Episodes


class EpisodeReader:
    """Standardized episodes of one split, this host's shard, in a seeded per-epoch order.

    builder: an opened TFDS builder (open_builder). std: StandardizeConfig.
    shuffle: permute the episode order each epoch (seed, epoch, process_index); else file order.
    skip_bad: on a bad episode (DataError) or an unreadable record, log, record it in `.bad` and go
      on; otherwise raise the DataError.
    bad: {episode index: message} of the episodes skipped as bad; readers of one loader share one, so
      an episode is counted (and logged) once however many passes read it.
    episode_buffer: size of the seeded shuffle buffer used for tfrecord (no random access).
    decode_images: False skips image decoding (episodes then carry no 'images'; for statistics).
    """

    def __init__(self, builder, split: str, std: StandardizeConfig, *, shuffle: bool = False, seed: int = 0,
                 process_index: int = 0, process_count: int = 1, skip_bad: bool = False,
                 episode_buffer: int = 16, decode_images: bool = True, log: Callable[[str], None] = print,
                 bad: dict[int, str] | None = None):
        self.builder = builder
        self.split = split
        self.std = std
        self.shuffle = shuffle
        self.seed = seed
        self.process_index = process_index
        self.process_count = process_count
        self.skip_bad = skip_bad
        self.episode_buffer = max(1, int(episode_buffer))
        self.decode_images = decode_images
        self.log = log
        self.name = builder.info.name
        self.file_format = _file_format(builder)
        if split not in builder.info.splits:
            raise DataError(f"{where(self.name)}: no split '{split}' (has: {', '.join(builder.info.splits)}) "
                            f"in {builder.data_dir}")
        info = builder.info.splits[split]
        self.total_episodes = int(info.num_examples)
        self.lo, self.hi = host_range(self.total_episodes, process_index, process_count)
        # Per-file sub-ranges [a, b) of this host's episodes, so a damaged file loses only its own part.
        self._ranges = []
        start = 0
        for file_idx, n in enumerate(info.shard_lengths):
            a, b = max(start, self.lo), min(start + n, self.hi)
            if a < b:
                self._ranges.append((file_idx, a, b))
            start += n
        self._filenames = list(info.filenames)
        self.bad = {} if bad is None else bad
        if self.file_format == "tfrecord":
            import_tensorflow()

    @property
    def bad_episodes(self) -> int:
        """Distinct episodes skipped as bad so far."""
        return len(self.bad)

    @property
    def num_episodes(self) -> int:
        """Episodes in this host's shard (before any are skipped as bad)."""
        return self.hi - self.lo

    def __iter__(self) -> Iterator[dict]:
        return self.epoch(0)

    def epoch(self, epoch: int) -> Iterator[dict]:
        """Yields this host's standardized episodes once, in the order of the given epoch."""
        raw_iter = self._raw_array_record(epoch) if self.file_format == "array_record" else self._raw_tfrecord(epoch)
        for index, raw in raw_iter:
            try:
                yield standardize(raw, self._std_for_read(), dataset=self.name, index=index)
            except DataError as e:
                self._bad(e, [index])

    def _std_for_read(self) -> StandardizeConfig:
        if self.decode_images:
            return self.std
        return dataclasses.replace(self.std, image_keys=("",) * len(self.std.image_keys))

    def _bad(self, error: DataError, indices) -> None:
        if not self.skip_bad:
            raise error
        new = [i for i in indices if i not in self.bad]
        self.bad.update((i, str(error)) for i in new)
        if new:
            self.log(f"WARNING: skipping {len(new)} bad episode(s) (config.data.skip_bad_episodes=True): "
                     f"{error}")

    def _rng(self, epoch: int, stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch, self.process_index, stream])

    def _decoders(self):
        if self.decode_images:
            return None
        obs = self.builder.info.features["steps"].feature["observation"]
        skip = {k: tfds.decode.SkipDecoding() for k in obs.keys()
                if isinstance(obs[k], tfds.features.Image)}
        return {"steps": {"observation": skip}} if skip else None

    def _read_error(self, file_idx: int, index: int, lost: int, e: Exception) -> DataError:
        fname = self._filenames[file_idx] if file_idx < len(self._filenames) else f"file {file_idx}"
        msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        return DataError(f"{where(self.name, index)}: cannot read record file {fname} of split "
                         f"'{self.split}' (truncated or corrupt; {lost} unread episode(s) of this host in it "
                         f"are lost): {type(e).__name__}: {msg}")

    # array_record: random access, a full permutation of the host's episodes per epoch.
    def _raw_array_record(self, epoch: int):
        sources: dict[int, Any] = {}
        order = np.arange(self.lo, self.hi)
        if self.shuffle:
            order = self._rng(epoch, 0).permutation(order)
        lost: set[int] = set()
        done_per_file: dict[int, set[int]] = collections.defaultdict(set)
        for index in order.tolist():
            file_idx, a, b = next(r for r in self._ranges if r[1] <= index < r[2])
            if file_idx in lost:
                continue
            try:
                if file_idx not in sources:
                    sources[file_idx] = self.builder.as_data_source(split=f"{self.split}[{a}:{b}]",
                                                                    decoders=self._decoders())
                record = sources[file_idx][index - a]
                steps = record["steps"]
                step_list = [steps[i] for i in range(len(steps))]
            except Exception as e:  # noqa: BLE001  (any reader failure becomes one clear DataError)
                lost.add(file_idx)
                unread = sorted(set(range(a, b)) - done_per_file[file_idx])
                self._bad(self._read_error(file_idx, index, len(unread), e), unread)
                continue
            done_per_file[file_idx].add(index)
            steps = _stack(step_list) if step_list else _empty_like_spec(self.builder.info.features["steps"].feature)
            yield index, {"steps": steps, "episode_metadata": record.get("episode_metadata", {})}

    # tfrecord: sequential reads per file (file order shuffled), then a seeded episode shuffle buffer.
    def _raw_tfrecord(self, epoch: int):
        tf = import_tensorflow()
        ranges = list(self._ranges)
        if self.shuffle:
            ranges = [ranges[i] for i in self._rng(epoch, 0).permutation(len(ranges))]

        def sequential():
            for file_idx, a, b in ranges:
                ds = self.builder.as_dataset(split=f"{self.split}[{a}:{b}]", shuffle_files=False,
                                             decoders=self._decoders())
                ds = ds.map(lambda ep: dict(ep, steps=ep["steps"].batch(
                    tf.maximum(ep["steps"].cardinality(), 1))))
                index = a
                it = iter(tfds.as_numpy(ds))
                while True:
                    try:
                        ep = next(it)
                        batches = list(ep["steps"])
                    except StopIteration:
                        break
                    except Exception as e:  # noqa: BLE001  (tf DataLossError etc. -> one clear DataError)
                        self._bad(self._read_error(file_idx, index, b - index, e), range(index, b))
                        break
                    steps = batches[0] if batches else _empty_like_spec(self.builder.info.features["steps"].feature)
                    yield index, {"steps": steps, "episode_metadata": ep.get("episode_metadata", {})}
                    index += 1

        if not self.shuffle:
            yield from sequential()
            return
        yield from _shuffle_buffer(sequential(), self.episode_buffer, self._rng(epoch, 1))


def _shuffle_buffer(items: Iterable, size: int, rng: np.random.Generator) -> Iterator:
    """Seeded random-replacement shuffle buffer of at most `size` items."""
    buf: list = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        j = int(rng.integers(size))
        out, buf[j] = buf[j], item
        yield out
    for j in rng.permutation(len(buf)).tolist():
        yield buf[j]


# ----------------------------------------------------------------------------------------------------
# Samples and batches


def add_normalized(ep: dict, stats: normalization.NormStats | None, mode: str) -> dict:
    """Adds 'state_norm' and 'action_norm' (float32[T, D]); copies of the raw values without stats."""
    ep = dict(ep)
    for key in ("state", "action"):
        x = ep[key]
        ep[f"{key}_norm"] = normalization.normalize(x, stats[key], mode) if stats is not None else x
    return ep


def iter_samples(episodes: Iterable[dict], *, shuffle_buffer: int = 0,
                 rng: np.random.Generator | None = None) -> Iterator[tuple[dict, int]]:
    """(episode, t) for every step t of every episode; shuffled through a buffer when shuffle_buffer > 1."""
    pairs = ((ep, t) for ep in episodes for t in range(ep["length"]))
    if shuffle_buffer > 1:
        return _shuffle_buffer(pairs, shuffle_buffer, rng or np.random.default_rng(0))
    return pairs


class _TokenCache:
    def __init__(self, tokenizer, max_len: int):
        self.tokenizer, self.max_len = tokenizer, max_len
        self.cache: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def __call__(self, text: str):
        hit = self.cache.get(text)
        if hit is None:
            if len(self.cache) > 10_000:
                self.cache.clear()
            ids, mask = self.tokenizer.encode(text, self.max_len)
            hit = self.cache[text] = (np.asarray(ids, np.int32), np.asarray(mask, bool))
        return hit


def make_batch(samples: list[tuple[dict, int]], *, chunk_size: int, tokenizer=None, max_text_len: int = 32,
               future: bool = False, action_pad: str = "repeat_last", prompt_format: str = "plain",
               _tokens: _TokenCache | None = None) -> dict:
    """Assembles samples (episode, t) into one batch (see the module docstring for keys and shapes).

    Episodes need 'images', 'image_mask', 'state_norm', 'action_norm', 'instruction', 'length',
    'index' and (for future) 'success' (see add_normalized). The action chunk at t is actions
    t..t+k-1; steps past the episode end are padded (action_pad 'repeat_last': the last action,
    'zeros': zeros) and masked out in action_mask. The tokens encode tokenizer.policy_prompt of the
    instruction (and, for prompt_format 'pi05', the normalized state at t).
    """
    if action_pad not in ACTION_PADS:
        raise ValueError(f"config.data.action_pad must be one of {ACTION_PADS}, got {action_pad!r}")
    if _tokens is None:
        if tokenizer is None:
            tokenizer = ByteTokenizer()
        _tokens = _TokenCache(tokenizer, max_text_len)
    k = chunk_size
    offsets = np.arange(k)
    out: dict[str, list] = collections.defaultdict(list)
    for ep, t in samples:
        T = ep["length"]
        idx = t + offsets
        valid = idx < T
        chunk = ep["action_norm"][np.minimum(idx, T - 1)]
        if action_pad == "zeros":
            chunk = np.where(valid[:, None], chunk, 0.0).astype(np.float32)
        text = ep["instruction"][t]
        ids, mask = _tokens(policy_prompt(text, ep["state_norm"][t], prompt_format))
        out["images"].append(ep["images"][t])
        out["image_mask"].append(ep["image_mask"])
        out["state"].append(ep["state_norm"][t])
        if "state" in ep:   # the raw state beside the normalized one (read episodes have both)
            out["raw_state"].append(ep["state"][t])
        out["actions"].append(chunk)
        out["action_mask"].append(valid)
        out["tokens"].append(ids)
        out["token_mask"].append(mask)
        out["instruction"].append(text)
        out["episode_index"].append(ep["index"])
        out["step_index"].append(t)
        if future:
            out["next_images"].append(ep["images"][min(t + k, T - 1)])
            out["episode_success"].append(ep["success"])
            out["steps_to_end"].append(T - 1 - t)
    dtypes = {"images": np.uint8, "image_mask": bool, "state": np.float32, "raw_state": np.float32,
              "actions": np.float32,
              "action_mask": bool, "tokens": np.int32, "token_mask": bool, "episode_index": np.int32,
              "step_index": np.int32, "next_images": np.uint8, "episode_success": bool,
              "steps_to_end": np.int32}
    batch = {}
    for key, values in out.items():
        if key == "instruction":
            arr = np.empty((len(values),), object)
            arr[:] = values
            batch[key] = arr
        else:
            batch[key] = np.stack(values).astype(dtypes[key], copy=False)
    return batch


def iter_batches(samples: Iterable[tuple[dict, int]], batch_size: int, *, drop_remainder: bool = True,
                 **batch_kwargs) -> Iterator[dict]:
    """Groups samples into batches of batch_size (the last partial one only if not drop_remainder)."""
    tokenizer = batch_kwargs.pop("tokenizer", None)
    if tokenizer is None:
        tokenizer = ByteTokenizer()
    cache = _TokenCache(tokenizer, batch_kwargs.pop("max_text_len", 32))
    it = iter(samples)
    while True:
        group = list(itertools.islice(it, batch_size))
        if not group or (drop_remainder and len(group) < batch_size):
            return
        yield make_batch(group, _tokens=cache, **batch_kwargs)


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


def prefetch(iterator: Iterable, size: int) -> Iterator:
    """Runs `iterator` in a background thread, keeping up to `size` items ready (order unchanged).

    An exception in the producer is re-raised in the consumer; closing the consumer stops the producer.
    """
    if size <= 0:
        yield from iterator
        return
    q: queue.Queue = queue.Queue(maxsize=size)
    stop = threading.Event()
    end = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work():
        try:
            for item in iterator:
                if not put(item):
                    return
            put(end)
        except BaseException as e:  # noqa: BLE001  (handed to the consumer)
            put(_Failure(e))

    thread = threading.Thread(target=work, name="rlds-prefetch", daemon=True)

    def shutdown():
        # A daemon thread killed at interpreter exit while inside TensorFlow's C++ reader aborts the
        # process ("terminate called ... exception not rethrown"): stop it and let it finish first.
        stop.set()
        thread.join(timeout=30)

    atexit.register(shutdown)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is end:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item
    finally:
        stop.set()
        atexit.unregister(shutdown)


def to_device(batch: Mapping[str, np.ndarray], sharding) -> dict:
    """Per-host numpy batch -> global jax arrays sharded over the batch axis (strings stay numpy).

    sharding: e.g. NamedSharding(mesh, PartitionSpec('data')); each host passes its own rows.
    """
    return {k: v if v.dtype == object else jax.make_array_from_process_local_data(sharding, v)
            for k, v in batch.items()}


# ----------------------------------------------------------------------------------------------------
# Config-driven entry point


class RLDSLoader:
    """Everything config.data describes: the dataset, its statistics, episodes and training batches.

        loader = RLDSLoader(config, workdir=workdir)
        stats = loader.norm_stats(cache_dir)             # cached JSON, one streaming pass
        for batch in loader.batches(future=True): ...    # infinite, shuffled, normalized
        for ep in loader.episodes(): ...                 # whole standardized episodes (with *_norm)

    process_index/process_count default to jax.process_index()/process_count(); batch sizes in the
    config are global and divided by process_count.
    """

    def __init__(self, config, *, split: str | None = None, workdir=None, tokenizer=None,
                 stats: normalization.NormStats | None = None, process_index: int | None = None,
                 process_count: int | None = None, log: Callable[[str], None] = print):
        self.config = config
        d = config.data
        if process_index is None or process_count is None:
            process_index, process_count = jax.process_index(), jax.process_count()
        self.process_index, self.process_count = process_index, process_count
        self.split = split or d.split
        self.builder = open_builder(resolve_builder_dir(config, workdir), name=d.name, data_dir=d.data_dir,
                                    version=d.version)
        self.builder_dir = str(self.builder.data_dir)  # the version directory, however it was named
        self.std = StandardizeConfig.from_config(config)
        self.tokenizer = tokenizer
        self.stats = stats
        self.log = log
        self._bad: dict[int, str] = {}  # shared by every reader of this loader

    @property
    def name(self) -> str:
        return self.builder.info.name

    @property
    def bad_episodes(self) -> int:
        """Distinct episodes skipped as bad so far, over every pass this loader made."""
        return len(self._bad)

    def reader(self, *, shuffle: bool, all_hosts: bool = False, decode_images: bool = True) -> EpisodeReader:
        d = self.config.data
        return EpisodeReader(self.builder, self.split, self.std, shuffle=shuffle, seed=int(self.config.seed),
                             process_index=0 if all_hosts else self.process_index,
                             process_count=1 if all_hosts else self.process_count,
                             skip_bad=bool(d.skip_bad_episodes), episode_buffer=int(d.episode_buffer),
                             decode_images=decode_images, log=self.log, bad=self._bad)

    def _nothing_read(self, reader: EpisodeReader) -> DataError:
        """The error for a pass that yielded no episode: an empty shard, or every episode bad."""
        shard = (f"split '{self.split}'" if reader.process_count == 1 else
                 f"host {reader.process_index}'s shard of split '{self.split}'")
        if reader.num_episodes == 0:
            return DataError(f"{where(self.name)}: {shard} has no episodes (the split has "
                             f"{reader.total_episodes}, over {reader.process_count} hosts)")
        first = self._bad[min(self._bad)] if self._bad else "none recorded"
        return DataError(f"{where(self.name)}: all {reader.num_episodes} episodes of {shard} are bad and "
                         f"were skipped (config.data.skip_bad_episodes=True); the first: {first}")

    def fingerprint(self) -> str:
        """Hash of the dataset files (names, sizes), split and every setting the statistics depend on."""
        d = self.config.data
        files = sorted((p.name, p.stat().length) for p in epath.Path(self.builder_dir).iterdir() if p.is_file())
        return normalization.fingerprint(
            {"dataset": self.name, "version": str(self.builder.info.version), "split": self.split,
             "files": files, "standardize": self.std.to_dict(), "skip_bad": bool(d.skip_bad_episodes),
             "skip_action_dims": list(d.norm_skip_action_dims), "skip_state_dims": list(d.norm_skip_state_dims)})

    def norm_stats(self, cache_dir) -> normalization.NormStats:
        """Statistics of the whole split (every host computes the same), cached under cache_dir."""
        d = self.config.data

        def compute():
            reader = self.reader(shuffle=False, all_hosts=True, decode_images=False)
            episodes = iter(reader)
            first = next(episodes, None)
            if first is None:
                raise self._nothing_read(reader)
            masks = {"action": normalization.dims_mask(self.std.action_dim, d.norm_skip_action_dims),
                     "state": normalization.dims_mask(self.std.state_dim, d.norm_skip_state_dims)}
            return normalization.compute_stats(itertools.chain([first], episodes), masks=masks)

        self.stats = normalization.load_or_compute(cache_dir, self.fingerprint(), compute, log=self.log)
        return self.stats

    def episodes(self, *, epoch: int = 0, shuffle: bool = False, all_hosts: bool = False) -> Iterator[dict]:
        """This host's standardized episodes (every host's with all_hosts), with state_norm/action_norm
        when stats are set."""
        mode = self.config.data.norm_mode
        for ep in self.reader(shuffle=shuffle, all_hosts=all_hosts).epoch(epoch):
            yield add_normalized(ep, self.stats, mode)

    def batches(self, *, batch_size: int | None = None, future: bool = False, repeat: bool = True,
                shuffle: bool = True, drop_remainder: bool = True, sharding=None) -> Iterator[dict]:
        """Training batches (module docstring); batch_size is global (default config.data.batch_size)."""
        d = self.config.data
        global_bs = int(batch_size or d.batch_size)
        if global_bs % self.process_count:
            raise ValueError(f"config.data.batch_size={global_bs} must be divisible by the number of "
                             f"hosts ({self.process_count})")
        local_bs = global_bs // self.process_count
        reader = self.reader(shuffle=shuffle)
        if reader.num_episodes == 0:
            raise self._nothing_read(reader)
        mode = d.norm_mode

        def samples():
            for epoch in itertools.count() if repeat else (0,):
                eps = (add_normalized(ep, self.stats, mode) for ep in reader.epoch(epoch))
                rng = np.random.default_rng([int(self.config.seed), epoch, self.process_index, 2])
                n = 0
                for s in iter_samples(eps, shuffle_buffer=int(d.shuffle_buffer) if shuffle else 0, rng=rng):
                    n += 1
                    yield s
                if n == 0:
                    raise self._nothing_read(reader)

        batches = iter_batches(samples(), local_bs, drop_remainder=drop_remainder,
                               chunk_size=int(self.config.chunk_size), tokenizer=self.tokenizer,
                               max_text_len=int(d.max_text_len), future=future, action_pad=d.action_pad,
                               prompt_format=self.config.get("policy", {}).get("prompt_format", "plain"))
        for batch in prefetch(batches, int(d.get("prefetch", 0))):
            yield to_device(batch, sharding) if sharding is not None else batch
