"""Errors of the data layer and the one place that imports TensorFlow.

Every problem with a dataset is raised as `DataError` whose message names the dataset, the episode and
the feature, so a user can find the bad record; readers may instead skip and count bad episodes.
"""
from __future__ import annotations

from vlambpo_jax.errors import UserError

TF_MISSING = ("reading tfrecord RLDS (e.g. the BridgeData V2 release) needs TensorFlow: "
              "pip install 'vlambpo_jax[bridge]'")


class DataError(UserError):
    """Bad or unreadable data. The message names dataset, episode and feature where they are known."""


def where(dataset: str, episode: str | int | None = None, feature: str | None = None) -> str:
    """Formats the location part of an error message: "dataset 'x', episode #3 (...), feature 'a/b'"."""
    parts = [f"dataset '{dataset}'"]
    if episode is not None:
        parts.append(f"episode {episode}" if isinstance(episode, str) else f"episode #{episode}")
    if feature is not None:
        parts.append(f"feature '{feature}'")
    return ", ".join(parts)


def import_tensorflow():
    """Returns the tensorflow module, or raises ImportError with one line saying what to install."""
    try:
        import tensorflow as tf  # noqa: PLC0415  (optional heavy dependency, imported only when needed)
    except ImportError as e:  # the message is the whole story; keep the chain short
        raise ImportError(TF_MISSING) from e
    return tf
