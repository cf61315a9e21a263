"""Normalization statistics shipped with a pi0.5 checkpoint, read as NormStats.

Two layouts:
- openpi: <checkpoint>/assets/<asset id>/norm_stats.json, {"norm_stats": {"state": {"mean", "std",
  "q01", "q99"}, "actions": {...}}} (asset ids: 'physical-intelligence/libero' in pi05_libero, 'droid'
  in pi05_droid; pi05_base ships several). A path to the JSON file itself also works, as do gs:// paths.
- LeRobot: flat '<feature>.<stat>' tensors in policy_preprocessor_step_N_normalizer_processor.safetensors
  ('observation.state.q01', ...) and policy_postprocessor_step_N_unnormalizer_processor.safetensors
  ('action.q01', ...).
pi0.5 normalizes state and actions by the 1st/99th quantiles without clipping (normalization mode
'quantile'); statistics without quantiles (pi0's) use 'zscore'. Every dim is normalized (mask True);
min/max default to the quantiles where the file has none.
"""
from __future__ import annotations

import json

import numpy as np
from etils import epath
from safetensors.numpy import load_file

from vlambpo_jax.data.normalization import ArrayStats, NormStats
from vlambpo_jax.errors import UserError

_OPENPI_KEYS = {"state": "state", "actions": "action"}
_LEROBOT_KEYS = {"observation.state": "state", "action": "action"}
_LEROBOT_FILES = ("policy_preprocessor*_normalizer_processor.safetensors",
                  "policy_postprocessor*_unnormalizer_processor.safetensors")


def _array_stats(fields: dict, where: str) -> ArrayStats:
    get = lambda name: None if fields.get(name) is None else np.asarray(fields[name], np.float32).reshape(-1)  # noqa: E731
    mean, std, q01, q99 = get("mean"), get("std"), get("q01"), get("q99")
    if mean is None or std is None:
        raise UserError(f"normalization statistics {where} lack 'mean' or 'std' (have {sorted(fields)})")
    nan = np.full_like(mean, np.nan)
    q01 = nan if q01 is None else q01
    q99 = nan if q99 is None else q99
    lo, hi = get("min"), get("max")
    return ArrayStats(mean=mean, std=std, q01=q01, q99=q99, min=q01 if lo is None else lo,
                      max=q99 if hi is None else hi, mask=np.ones(mean.shape, bool))


def _openpi(path: epath.Path) -> dict[str, ArrayStats]:
    try:
        table = json.loads(path.read_text())["norm_stats"]
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{path}: not an openpi norm_stats.json ({e!r})") from None
    return {ours: _array_stats(table[theirs], f"'{theirs}' in {path}")
            for theirs, ours in _OPENPI_KEYS.items() if theirs in table}


def _lerobot(files: list[epath.Path]) -> dict[str, ArrayStats]:
    grouped: dict[str, dict] = {}
    for f in files:
        for flat, value in load_file(str(f)).items():     # a local file
            feature, _, stat = flat.rpartition(".")
            grouped.setdefault(feature, {})[stat] = value
    return {ours: _array_stats(grouped[theirs], f"'{theirs}' in {[f.name for f in files]}")
            for theirs, ours in _LEROBOT_KEYS.items() if theirs in grouped}


def _openpi_file(root: epath.Path, asset_id: str) -> epath.Path | None:
    if root.is_file():
        return root
    if asset_id:
        path = root / "assets" / asset_id / "norm_stats.json"
        if not path.is_file():
            raise UserError(f"no norm_stats.json for asset id {asset_id!r} in {root / 'assets'} "
                            f"(have {asset_ids(root)})")
        return path
    found = _stats_files(root)
    if len(found) > 1:
        raise UserError(f"{root} has statistics for several robots {asset_ids(root)}; name one with "
                        "--norm_stats_asset=ID")
    return found[0] if found else None


def asset_ids(root: epath.Path) -> list[str]:
    """The openpi asset ids under <root>/assets that hold a norm_stats.json."""
    return sorted(str(p.parent.relative_to(root / "assets")) for p in _stats_files(root))


def _stats_files(root: epath.Path) -> list[epath.Path]:
    """assets/<id>/norm_stats.json, ids of one or two parts ('droid', 'physical-intelligence/libero');
    epath globs no '**' (it would list a whole bucket)."""
    root = epath.Path(root)
    return sorted([*root.glob("assets/*/norm_stats.json"), *root.glob("assets/*/*/norm_stats.json")])


def load_checkpoint_stats(path: str, asset_id: str = "") -> tuple[NormStats, str]:
    """A pi0.5 checkpoint directory (or an openpi norm_stats.json) -> (NormStats with 'state' and/or
    'action', the normalization mode they are meant for: 'quantile' or 'zscore')."""
    root = epath.Path(path)
    openpi = _openpi_file(root, asset_id)
    lerobot = [f for pattern in _LEROBOT_FILES for f in sorted(root.glob(pattern))] if root.is_dir() else []
    if openpi is not None:
        arrays, source = _openpi(openpi), str(openpi)
    elif lerobot:
        arrays, source = _lerobot(lerobot), ", ".join(str(f) for f in lerobot)
    else:
        raise UserError(f"no normalization statistics in {path}: expected an openpi assets/<id>/norm_stats.json "
                        "or LeRobot's policy_*processor*_normalizer_processor.safetensors")
    if "action" not in arrays:
        raise UserError(f"normalization statistics in {source} have no action entry")
    quantiles = all(np.isfinite(a.q01).all() and np.isfinite(a.q99).all() for a in arrays.values())
    return NormStats(arrays, fingerprint=f"imported:{source}"), "quantile" if quantiles else "zscore"
