"""Per-robot observation mapping: the keys an openpi client sends -> the policy's observation.

An openpi robot client sends one dict per request, for example (LIBERO example client)::

    {"observation/image": uint8[224, 224, 3], "observation/wrist_image": uint8[224, 224, 3],
     "observation/state": float[8], "prompt": "put the bowl on the plate"}

`RobotConfig` says which of those keys feed the policy's views (config.views order: head, wrist),
which key holds the instruction and which keys (concatenated in order) form the proprioceptive state.
A key is looked up as written first; if absent, a key with '/' is followed through nested dicts, so
"images/cam_high" reads {"images": {"cam_high": ...}} (the ALOHA client's layout).

`--robot_config` takes a preset name (see PRESETS) or the path of a JSON file whose fields override those
of the preset named by its optional "base" field (default 'libero'), e.g.
``{"image_keys": ["cam/front", ""], "default_prompt": "stack the blocks"}``
('' = the robot has no such camera: that view is zeros and masked out of the policy's attention).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

import numpy as np
from PIL import Image

from vlambpo_jax.data.tokenizer import policy_prompt

SEED_KEY = "seed"    # optional int in [0, 2**31): the request's sampling seed (server picks one otherwise)


class RequestError(ValueError):
    """A request the server refuses; the message names the field and what is wrong with it."""


@dataclasses.dataclass(frozen=True)
class RobotConfig:
    """How a robot's observation dict maps onto the policy input.

    image_keys: one client key per policy view (config.views order); '' = no such camera.
    prompt_key: key of the language instruction (str).
    default_prompt: used when the request has no prompt; '' = the prompt is required.
    state_keys: keys of numeric scalars/vectors concatenated into the state (only read when the policy
      was trained with config.policy.use_state); their total length must be config.policy.state_dim.
    resize_images: resize (keeping aspect ratio, zero padding, as openpi's resize_with_pad) images whose
      size differs from config.image_size; False = such images are refused.
    """
    name: str = "libero"
    image_keys: tuple[str, ...] = ("observation/image", "observation/wrist_image")
    prompt_key: str = "prompt"
    default_prompt: str = ""
    state_keys: tuple[str, ...] = ("observation/state",)
    resize_images: bool = True

    def to_dict(self) -> dict:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in dataclasses.fields(self)}


PRESETS = {
    # openpi examples/libero client.
    "libero": RobotConfig(),
    # openpi examples/droid client (exterior camera 1 as the head view).
    "droid": RobotConfig(name="droid",
                         image_keys=("observation/exterior_image_1_left", "observation/wrist_image_left"),
                         state_keys=("observation/joint_position", "observation/gripper_position")),
    # openpi examples/aloha_real client (nested "images" dict, CHW images).
    "aloha": RobotConfig(name="aloha", image_keys=("images/cam_high", "images/cam_left_wrist"),
                         state_keys=("state",)),
}


def load_robot_config(spec: str | None, num_views: int) -> RobotConfig:
    """A preset name, a JSON file path, or ''/None (the 'libero' preset); checked against the policy."""
    spec = spec or "libero"
    if spec in PRESETS:
        robot = PRESETS[spec]
    elif os.path.isfile(spec):
        with open(spec) as f:
            try:
                fields = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"--robot_config file {spec} is not valid JSON: {e}") from e
        if not isinstance(fields, dict):
            raise ValueError(f"--robot_config file {spec} must hold a JSON object")
        known = {f.name for f in dataclasses.fields(RobotConfig)} | {"base"}
        unknown = sorted(set(fields) - known)
        if unknown:
            raise ValueError(f"--robot_config file {spec}: unknown field(s) {unknown}; known: {sorted(known)}")
        base_name = fields.pop("base", "libero")
        if base_name not in PRESETS:
            raise ValueError(f"--robot_config file {spec}: base {base_name!r} is not a preset {sorted(PRESETS)}")
        base = PRESETS[base_name]
        fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
        robot = dataclasses.replace(base, **{"name": os.path.basename(spec), **fields})
    else:
        raise ValueError(f"--robot_config={spec!r} is neither a preset ({sorted(PRESETS)}) nor an existing file")
    if len(robot.image_keys) != num_views or not all(isinstance(k, str) for k in robot.image_keys):
        raise ValueError(f"robot config {robot.name!r}: image_keys needs {num_views} strings (one per policy "
                         f"view, '' for a missing camera), got {list(robot.image_keys)}")
    if not any(robot.image_keys):
        raise ValueError(f"robot config {robot.name!r}: image_keys names no camera at all")
    return robot


def lookup(obs: Mapping[str, Any], key: str):
    """obs[key], else the nested path key.split('/'); KeyError when neither exists."""
    if key in obs:
        return obs[key]
    node: Any = obs
    for part in key.split("/"):
        if not isinstance(node, Mapping) or part not in node:
            raise KeyError(key)
        node = node[part]
    return node


def resize_with_pad(image: np.ndarray, size: int) -> np.ndarray:
    """uint8[H, W, 3] -> uint8[size, size, 3]: bilinear resize keeping the aspect ratio, zero padding
    centred (what openpi_client.image_tools.resize_with_pad does, so robots see the same pictures)."""
    h, w = image.shape[:2]
    if (h, w) == (size, size):
        return image
    ratio = max(w / size, h / size)
    new_w, new_h = max(1, int(w / ratio)), max(1, int(h / ratio))
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), resample=Image.BILINEAR))
    out = np.zeros((size, size, 3), np.uint8)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    out[top: top + new_h, left: left + new_w] = resized
    return out


class ObservationMapper:
    """Turns one decoded request into the policy's single-example observation.

    tokenizer: has encode(text, max_len) -> (int32[L], bool[L]). state_norm: None, or a function
    float32[D] -> normalized float32[D] (the checkpoint's state statistics). prompt_format: the text the
    tokenizer reads (data.tokenizer.policy_prompt); 'pi05' writes the normalized state into it, so the
    state keys are read then even without a state token (use_state).
    __call__ returns {'images': uint8[V, S, S, 3], 'image_mask': bool[V], 'tokens': int32[L],
    'token_mask': bool[L], ('state': float32[D])} and the request's seed (int or None).
    """

    def __init__(self, robot: RobotConfig, *, image_size: int, max_text_len: int, tokenizer,
                 use_state: bool = False, state_dim: int = 0, state_norm=None, prompt_format: str = "plain"):
        self.robot = robot
        self.image_size = int(image_size)
        self.max_text_len = int(max_text_len)
        self.tokenizer = tokenizer
        self.use_state = bool(use_state)
        self.state_dim = int(state_dim)
        self.state_norm = state_norm
        self.prompt_format = prompt_format
        self.reads_state = self.use_state or prompt_format == "pi05"

    def required_keys(self) -> list[str]:
        keys = [k for k in self.robot.image_keys if k]
        if not self.robot.default_prompt:
            keys.append(self.robot.prompt_key)
        if self.reads_state:
            keys += list(self.robot.state_keys)
        return keys

    def _get(self, obs, key):
        try:
            return lookup(obs, key)
        except KeyError:
            raise RequestError(f"observation is missing {key!r} (robot config {self.robot.name!r} needs "
                               f"{self.required_keys()}; the request has {sorted(map(str, obs))})") from None

    def _image(self, key: str, value) -> np.ndarray:
        if not isinstance(value, np.ndarray):
            raise RequestError(f"{key!r} must be a uint8 image array [H, W, 3], got {type(value).__name__}")
        if value.dtype != np.uint8:
            raise RequestError(f"{key!r} has dtype {value.dtype}; images must be uint8 [H, W, 3] (convert "
                               "with openpi_client.image_tools.convert_to_uint8)")
        if value.ndim == 3 and value.shape[0] == 3 and value.shape[-1] != 3:
            value = np.transpose(value, (1, 2, 0))                         # CHW -> HWC
        if value.ndim != 3 or value.shape[-1] != 3 or min(value.shape[:2]) < 1:
            raise RequestError(f"{key!r} has shape {list(value.shape)}; expected an RGB image [H, W, 3] "
                               "(or [3, H, W])")
        if value.shape[:2] != (self.image_size, self.image_size):
            if not self.robot.resize_images:
                raise RequestError(f"{key!r} is {value.shape[0]}x{value.shape[1]}; this policy takes "
                                   f"{self.image_size}x{self.image_size} (resize_images is off)")
            value = resize_with_pad(np.ascontiguousarray(value), self.image_size)
        return value

    def _prompt(self, obs) -> str:
        try:
            value = lookup(obs, self.robot.prompt_key)
        except KeyError:
            if self.robot.default_prompt:
                return self.robot.default_prompt
            self._get(obs, self.robot.prompt_key)                           # raises the missing-key error
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                raise RequestError(f"{self.robot.prompt_key!r} is bytes that are not UTF-8 text") from None
        if isinstance(value, np.ndarray) and value.ndim == 0 and value.dtype.kind == "U":
            value = str(value)
        if not isinstance(value, str):
            raise RequestError(f"{self.robot.prompt_key!r} must be a string, got {type(value).__name__}")
        return value

    def _state(self, obs) -> np.ndarray:
        parts = []
        for key in self.robot.state_keys:
            value = np.asarray(self._get(obs, key))
            if value.dtype.kind not in "fiub" or value.ndim > 1:
                raise RequestError(f"{key!r} must be a number or a 1-D numeric array, got dtype {value.dtype} "
                                   f"shape {list(value.shape)}")
            parts.append(value.astype(np.float32).reshape(-1))
        state = np.concatenate(parts) if parts else np.zeros((0,), np.float32)
        if state.shape[0] != self.state_dim:
            raise RequestError(f"state from {list(self.robot.state_keys)} has {state.shape[0]} values; the "
                               f"policy takes {self.state_dim} (config.policy.state_dim)")
        if not np.all(np.isfinite(state)):
            raise RequestError(f"state from {list(self.robot.state_keys)} has non-finite values")
        return np.asarray(self.state_norm(state) if self.state_norm else state, np.float32)

    def __call__(self, obs) -> tuple[dict, int | None]:
        if not isinstance(obs, Mapping):
            raise RequestError(f"a request must be a dict of observations, got {type(obs).__name__}")
        images, present = [], []
        for key in self.robot.image_keys:
            if key:
                images.append(self._image(key, self._get(obs, key)))
                present.append(True)
            else:
                images.append(np.zeros((self.image_size, self.image_size, 3), np.uint8))
                present.append(False)
        state = self._state(obs) if self.reads_state else None
        text = policy_prompt(self._prompt(obs), state, self.prompt_format)
        tokens, token_mask = self.tokenizer.encode(text, self.max_text_len)
        out = {"images": np.stack(images), "image_mask": np.asarray(present, bool),
               "tokens": np.asarray(tokens, np.int32), "token_mask": np.asarray(token_mask, bool)}
        if self.use_state:
            out["state"] = state
        seed = None
        if SEED_KEY in obs:
            seed = obs[SEED_KEY]
            if isinstance(seed, np.generic):
                seed = seed.item()
            if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 31:
                raise RequestError(f"{SEED_KEY!r} must be an int in [0, 2**31), got {seed!r}")
        return out, seed
