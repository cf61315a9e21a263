"""Raw RLDS episodes (as TFDS decodes them) -> one standard, validated episode dict.

Layouts:
  'generic'     this project's own episodes (vlambpo_jax.data.rlds_writer): steps/observation/<image
                keys>, steps/observation/state, steps/action, steps/language_instruction.
  'rail_bridge' RAIL bridge_dataset 1.0.0 (same paths as generic; continuous gripper in action[6]).
  'oxe_bridge'  OXE bridge 0.1.0 (action is a dict; instruction under observation).

Standard episode (T steps, V = len(image_keys) views, S = image_size):
    images       uint8[T, V, S, S, 3]   views in image_keys order (0 = head, 1 = wrist); zeros if empty
    image_mask   bool[V]                False where the view is empty in this episode
    state        float32[T, state_dim]  raw (not normalized)
    action       float32[T, action_dim] raw; gripper binarized when configured
    instruction  object[T] of str       per-step language instruction
    reward, discount float32[T]; is_first, is_last, is_terminal bool[T]
    success      bool                   episode_metadata['success'] if present, else any(reward > 0)
    length       int (= T >= 1); index int (position in the split); key str; metadata dict
Anything that does not fit raises DataError naming dataset, episode and feature.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
from PIL import Image

from vlambpo_jax.data.bridge import binarize_gripper
from vlambpo_jax.data.errors import DataError, where

LAYOUTS = ("generic", "rail_bridge", "oxe_bridge")
EMPTY_VIEW_RULES = ("pixels", "metadata", "either")


@dataclasses.dataclass(frozen=True)
class StandardizeConfig:
    """How raw episodes are standardized (see the module docstring). Fields mirror config.data."""
    layout: str = "generic"
    image_keys: tuple = ("image_0", "image_1")   # '' = a view this dataset does not have (always masked)
    image_size: int = 64
    state_dim: int = 7
    action_dim: int = 7
    empty_view_rule: str = "pixels"   # pixels: all-zero frames; metadata: has_<key> False; either: both
    drop_first_zero_action: bool = False
    binarize_gripper: bool = False
    gripper_dim: int = 6

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise ValueError(f"config.data.layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.empty_view_rule not in EMPTY_VIEW_RULES:
            raise ValueError(f"config.data.empty_view_rule must be one of {EMPTY_VIEW_RULES}, "
                             f"got {self.empty_view_rule!r}")
        if not self.image_keys:
            raise ValueError("config.data.image_keys must name at least one view")

    @classmethod
    def from_config(cls, config) -> "StandardizeConfig":
        """From a full experiment config (uses config.data, config.image_size, config.action_dim)."""
        d = config.data
        return cls(layout=d.layout, image_keys=tuple(d.image_keys), image_size=int(config.image_size),
                   state_dim=int(d.state_dim), action_dim=int(config.action_dim),
                   empty_view_rule=d.empty_view_rule, drop_first_zero_action=bool(d.drop_first_zero_action),
                   binarize_gripper=bool(d.binarize_gripper), gripper_dim=int(d.gripper_dim))

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


def _get(tree: Mapping, path: str, dataset: str, episode, required: bool = True):
    node = tree
    for part in path.split("/"):
        if not isinstance(node, Mapping) or part not in node:
            if not required:
                return None
            raise DataError(f"{where(dataset, episode, 'steps/' + path)}: missing from the episode "
                            f"(present: {_keys_hint(tree)})")
        node = node[part]
    return node


def _keys_hint(tree: Mapping, prefix: str = "") -> str:
    names = []
    for k, v in tree.items():
        if isinstance(v, Mapping):
            names.extend(_keys_hint(v, f"{prefix}{k}/").split(", "))
        else:
            names.append(f"{prefix}{k}")
    return ", ".join(n for n in names if n)


def _text(x) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def _episode_label(index: int, metadata: Mapping) -> str:
    extra = [f"{k}={_text(metadata[k])}" for k in ("file_path", "episode_id") if k in metadata]
    return f"#{index}" + (f" ({', '.join(extra)})" if extra else "")


def standardize(raw: Mapping, cfg: StandardizeConfig, *, dataset: str, index: int) -> dict[str, Any]:
    """One raw episode {'steps': {...stacked numpy...}, 'episode_metadata': {...}} -> standard episode."""
    metadata = {k: (_text(v) if isinstance(v, bytes) else v)
                for k, v in dict(raw.get("episode_metadata") or {}).items()}
    ep_label = _episode_label(index, metadata)
    steps = raw.get("steps")
    if not isinstance(steps, Mapping):
        raise DataError(f"{where(dataset, ep_label, 'steps')}: missing")

    # --- layout-specific extraction ---
    if cfg.layout == "oxe_bridge":
        act = _get(steps, "action", dataset, ep_label)
        if not isinstance(act, Mapping):
            raise DataError(f"{where(dataset, ep_label, 'steps/action')}: the oxe_bridge layout expects an "
                            "action dict (world_vector, rotation_delta, open_gripper)")
        wv = _float_array(_get(steps, "action/world_vector", dataset, ep_label), dataset, ep_label,
                          "steps/action/world_vector", 3)
        rd = _float_array(_get(steps, "action/rotation_delta", dataset, ep_label), dataset, ep_label,
                          "steps/action/rotation_delta", 3)
        og = np.asarray(_get(steps, "action/open_gripper", dataset, ep_label))
        if og.shape != (len(wv),):
            raise DataError(f"{where(dataset, ep_label, 'steps/action/open_gripper')}: expected shape "
                            f"[{len(wv)}], got {list(og.shape)}")
        action = np.concatenate([wv, rd, og.astype(np.float32)[:, None]], axis=1)
        instr = _get(steps, "observation/natural_language_instruction", dataset, ep_label)
    else:
        action = _float_array(_get(steps, "action", dataset, ep_label), dataset, ep_label, "steps/action",
                              cfg.action_dim)
        instr = _get(steps, "language_instruction", dataset, ep_label)
    if action.shape[1] != cfg.action_dim:
        raise DataError(f"{where(dataset, ep_label, 'steps/action')}: expected {cfg.action_dim} dims, "
                        f"got {action.shape[1]}")
    state = _float_array(_get(steps, "observation/state", dataset, ep_label), dataset, ep_label,
                         "steps/observation/state", cfg.state_dim)
    if state.shape[1] != cfg.state_dim:
        raise DataError(f"{where(dataset, ep_label, 'steps/observation/state')}: expected {cfg.state_dim} "
                        f"dims, got {state.shape[1]}")
    T = len(action)
    if T == 0:
        raise DataError(f"{where(dataset, ep_label, 'steps')}: empty episode (0 steps)")

    per_step: dict[str, np.ndarray] = {"action": action, "state": state}
    instr = np.asarray(instr, dtype=object).reshape(-1)
    per_step["instruction"] = np.array([_text(s) for s in instr], dtype=object)
    for name, dtype, default in (("reward", np.float32, 0.0), ("discount", np.float32, 1.0),
                                 ("is_terminal", np.bool_, False)):
        value = _get(steps, name, dataset, ep_label, required=False)
        per_step[name] = np.full((T,), default, dtype) if value is None else np.asarray(value).astype(dtype)
    raw_views = []
    for key in cfg.image_keys:
        if not key:
            raw_views.append(None)
            continue
        frames = np.asarray(_get(steps, f"observation/{key}", dataset, ep_label))
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise DataError(f"{where(dataset, ep_label, f'steps/observation/{key}')}: expected uint8[T, H, W, 3] "
                            f"images, got {frames.dtype}{list(frames.shape)}")
        raw_views.append(frames)
        per_step[f"view:{key}"] = frames
    for name, arr in per_step.items():
        if len(arr) != T:
            feature = name.replace("view:", "observation/")
            raise DataError(f"{where(dataset, ep_label, 'steps/' + feature)}: has {len(arr)} steps but "
                            f"steps/action has {T}")
    for name in ("action", "state"):
        bad = ~np.isfinite(per_step[name])
        if bad.any():
            t, d = np.argwhere(bad)[0]
            feature = "steps/action" if name == "action" else "steps/observation/state"
            raise DataError(f"{where(dataset, ep_label, feature)}: non-finite value "
                            f"{per_step[name][t, d]} at step {t}, dim {d} ({int(bad.sum())} in total)")

    # --- transforms ---
    start = 1 if cfg.drop_first_zero_action and not np.any(action[0]) else 0
    if start:
        per_step = {k: v[1:] for k, v in per_step.items()}
        raw_views = [None if v is None else v[1:] for v in raw_views]
        T -= 1
        if T == 0:
            raise DataError(f"{where(dataset, ep_label, 'steps')}: empty episode (only an all-zero first "
                            "action, which is dropped)")
    action = per_step["action"].copy()
    if cfg.binarize_gripper:
        action[:, cfg.gripper_dim] = binarize_gripper(action[:, cfg.gripper_dim])

    images = np.zeros((T, len(cfg.image_keys), cfg.image_size, cfg.image_size, 3), np.uint8)
    mask = np.zeros((len(cfg.image_keys),), bool)
    for v, (key, frames) in enumerate(zip(cfg.image_keys, raw_views)):
        if frames is None:
            continue
        empty_pixels = not frames.any()
        flag = metadata.get(f"has_{key}")
        empty_meta = flag is not None and not bool(flag)
        empty = {"pixels": empty_pixels, "metadata": empty_meta, "either": empty_pixels or empty_meta}[
            cfg.empty_view_rule]
        if not empty:
            mask[v] = True
            images[:, v] = resize_frames(frames, cfg.image_size)

    reward = per_step["reward"]
    success = bool(metadata["success"]) if "success" in metadata else bool(T and reward.max() > 0)
    is_first = np.zeros((T,), bool)
    is_first[0] = True
    is_last = np.zeros((T,), bool)
    is_last[-1] = True
    return {
        "images": images, "image_mask": mask, "state": per_step["state"], "action": action,
        "instruction": per_step["instruction"], "reward": reward, "discount": per_step["discount"],
        "is_first": is_first, "is_last": is_last, "is_terminal": per_step["is_terminal"],
        "success": success, "length": T, "index": index, "key": f"{dataset}/{ep_label}",
        "metadata": metadata,
    }


def _float_array(x, dataset, episode, feature, dim) -> np.ndarray:
    arr = np.asarray(x)
    if not np.issubdtype(arr.dtype, np.floating):
        raise DataError(f"{where(dataset, episode, feature)}: expected a float array, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise DataError(f"{where(dataset, episode, feature)}: expected shape [T, {dim}], got {list(arr.shape)}")
    return arr.astype(np.float32, copy=False)


def resize_frames(frames: np.ndarray, size: int) -> np.ndarray:
    """uint8[T, H, W, 3] -> uint8[T, size, size, 3]; unchanged (bit-exact) when already that size.

    PIL bilinear resampling (area-weighted when shrinking); non-square frames are stretched to square.
    """
    if frames.shape[1] == size and frames.shape[2] == size:
        return frames
    return np.stack([np.asarray(Image.fromarray(f).resize((size, size), Image.Resampling.BILINEAR))
                     for f in frames])
