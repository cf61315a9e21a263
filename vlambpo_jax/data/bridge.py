"""BridgeData V2 specifics: the RAIL `bridge_dataset` 1.0.0 feature spec and the Bridge transforms.

Two public layouts of Bridge exist:
  * RAIL `bridge_dataset` 1.0.0 (https://rail.eecs.berkeley.edu/datasets/bridge_release/data/tfds/):
    steps/observation/image_0..image_3 (256x256 JPEG; image_0 is the fixed over-the-shoulder camera,
    image_1/2 other fixed cameras, image_3 the wrist camera, present only in some episodes),
    steps/observation/state float32[7], steps/action float32[7] (dx, dy, dz, droll, dpitch, dyaw,
    gripper in [0, 1], 1 = open), steps/language_instruction, steps/language_embedding float32[512],
    reward/discount/is_first/is_last/is_terminal, and episode_metadata (file_path, episode_id,
    has_image_0..3, has_language).
  * OXE `bridge` 0.1.0 (gs://gresearch/robotics/bridge/0.1.0): steps/observation/image (480x640),
    steps/observation/state, steps/observation/natural_language_instruction and an action dict
    (world_vector[3], rotation_delta[3], open_gripper bool, terminate_episode).
The standardization (vlambpo_jax.data.standardize) maps both to 7-dim actions with a binary gripper,
drops a leading all-zero action, and masks views that are empty in an episode.
"""
from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

RAIL_IMAGE_KEYS = ("image_0", "image_1", "image_2", "image_3")
# The textual descriptions below are those of the RAIL release's features.json, kept so the spec of
# datasets written by this project (e.g. the test fixture) matches the release exactly.
_IMAGE_DOC = "Main camera RGB observation."


def rail_bridge_features(image_shape=(256, 256, 3)) -> tfds.features.FeaturesDict:
    """The feature spec of RAIL `bridge_dataset` 1.0.0 (image_shape is (256, 256, 3) in the release)."""
    def scalar(dtype, doc):
        return tfds.features.Scalar(dtype=dtype, doc=doc)

    obs = {k: tfds.features.Image(shape=tuple(image_shape), dtype=np.uint8, encoding_format="jpeg",
                                  doc=_IMAGE_DOC) for k in RAIL_IMAGE_KEYS}
    obs["state"] = tfds.features.Tensor(
        shape=(7,), dtype=np.float32,
        doc="Robot state, consists of [7x robot joint angles, 2x gripper position, 1x door opening angle].")
    steps = tfds.features.Dataset({
        "observation": tfds.features.FeaturesDict(obs),
        "action": tfds.features.Tensor(
            shape=(7,), dtype=np.float32,
            doc="Robot action, consists of [7x joint velocities, 2x gripper velocities, 1x terminate episode]."),
        "discount": scalar(np.float32, "Discount if provided, default to 1."),
        "reward": scalar(np.float32, "Reward if provided, 1 on final step for demos."),
        "is_first": scalar(np.bool_, "True on first step of the episode."),
        "is_last": scalar(np.bool_, "True on last step of the episode."),
        "is_terminal": scalar(np.bool_, "True on last step of the episode if it is a terminal step, True for demos."),
        "language_instruction": tfds.features.Text(doc="Language Instruction."),
        "language_embedding": tfds.features.Tensor(
            shape=(512,), dtype=np.float32,
            doc="Kona language embedding. See https://tfhub.dev/google/universal-sentence-encoder-large/5"),
    })
    meta = {
        "file_path": tfds.features.Text(doc="Path to the original data file."),
        "episode_id": scalar(np.int32, "ID of episode in file_path."),
        "has_language": scalar(np.bool_, "True if language exists in observation, otherwise empty string."),
    }
    for i in range(4):
        meta[f"has_image_{i}"] = scalar(np.bool_, f"True if image{i} exists in observation, otherwise dummy value.")
    return tfds.features.FeaturesDict({"steps": steps, "episode_metadata": tfds.features.FeaturesDict(meta)})


def binarize_gripper(g: np.ndarray, low: float = 0.05, high: float = 0.95) -> np.ndarray:
    """Continuous gripper commands float[T] in [0, 1] (1 = open) -> {0., 1.} float32[T].

    Values >= high are open (1), <= low closed (0). A value in between is a gripper in motion: it takes
    the state of the next decided step (where the motion is heading); in-between values after the last
    decided step keep that last state; if no step is decided at all, values are rounded at 0.5.
    """
    g = np.asarray(g, np.float32)
    decided = np.where(g >= high, 1.0, np.where(g <= low, 0.0, np.nan)).astype(np.float32)
    out = decided.copy()
    nxt = np.nan
    for t in range(len(g) - 1, -1, -1):  # backward pass: fill from the next decided value
        if np.isnan(decided[t]):
            out[t] = nxt
        else:
            nxt = decided[t]
    prev = np.nan
    for t in range(len(g)):  # trailing undecided values: carry the last decided value forward
        if np.isnan(out[t]):
            out[t] = prev
        else:
            prev = out[t]
    still = np.isnan(out)
    out[still] = (g[still] > 0.5).astype(np.float32)
    return out
