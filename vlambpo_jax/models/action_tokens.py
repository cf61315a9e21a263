"""Action chunks as text tokens, and the world model's vocabulary.

As in the paper, each of the k x 7 action values is min-max scaled per dimension with the dataset
statistics to an integer bin in [0, 256] (257 bins) and written into the prompt as one token each.
With the byte tokenizer (the tiny default) the vocabulary extends the byte tokenizer's (0 pad, 1 bos,
2 eos, 3 + byte) with the 257 action-bin tokens and the two answer tokens "Yes" / "No" of the reward
question. With a Hugging Face tokenizer (BAGEL's Qwen2) the question and answers are its own tokens,
and actions are continuous only (the config refuses 'bins').
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from vlambpo_jax.data.tokenizer import ByteTokenizer

NUM_BINS = 257                       # integer bins 0..256
ACTION_OFFSET = ByteTokenizer.vocab_size      # 259: id of bin 0
YES_ID = ACTION_OFFSET + NUM_BINS             # 516
NO_ID = YES_ID + 1                            # 517
VOCAB_SIZE = NO_ID + 1                        # 518
QUESTION_PREFIX = "Is the task '"
QUESTION_SUFFIX = "' completed? Answer:"


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """The world model's fixed ids: the reward question around the instruction and its two answers."""
    prefix_ids: np.ndarray   # int32[P]: QUESTION_PREFIX
    suffix_ids: np.ndarray   # int32[S]: QUESTION_SUFFIX
    yes_id: int
    no_id: int
    size: int                # the embedding table needs at least this many rows
    action_bins: bool        # whether the action-bin tokens exist (action_encoding 'bins')


def vocabulary(tokenizer) -> Vocabulary:
    """The world model's vocabulary over its tokenizer (data/tokenizer.py:load_wm_tokenizer)."""
    prefix, suffix = tokenizer.text_ids(QUESTION_PREFIX), tokenizer.text_ids(QUESTION_SUFFIX)
    if isinstance(tokenizer, ByteTokenizer):
        return Vocabulary(prefix, suffix, YES_ID, NO_ID, VOCAB_SIZE, action_bins=True)
    answers = []
    for word in (" Yes", " No"):
        ids = tokenizer.text_ids(word)
        if len(ids) != 1 or tokenizer.decode(ids).strip() != word.strip():
            raise ValueError(f"world-model tokenizer {getattr(tokenizer, 'path', '')!r}: the reward answer "
                             f"{word!r} must be one token of its own, got ids {ids.tolist()}")
        answers.append(int(ids[0]))
    return Vocabulary(prefix, suffix, answers[0], answers[1], int(tokenizer.vocab_size), action_bins=False)


def _range(amin, amax):
    amin = jnp.asarray(amin, jnp.float32)
    amax = jnp.asarray(amax, jnp.float32)
    return amin, jnp.maximum(amax - amin, 1e-8)


def actions_to_bins(actions, amin, amax):
    """actions float[..., D] in env units, per-dim amin / amax float[D] -> int32[..., D] in [0, 256]
    (values outside [amin, amax] are clipped)."""
    lo, span = _range(amin, amax)
    x = jnp.clip((jnp.asarray(actions, jnp.float32) - lo) / span, 0.0, 1.0)
    return jnp.round(x * (NUM_BINS - 1)).astype(jnp.int32)


def bins_to_actions(bins, amin, amax):
    """int[..., D] bins -> float32[..., D] bin centres in env units (inverse of actions_to_bins up to
    half a bin: |error| <= (amax - amin) / 512)."""
    lo, span = _range(amin, amax)
    return lo + jnp.asarray(bins, jnp.float32) / (NUM_BINS - 1) * span


def bins_to_token_ids(bins):
    """int[B, k, D] bins -> int32[B, k * D] vocabulary ids (time-major, then dimension)."""
    b = jnp.asarray(bins, jnp.int32)
    if b.ndim != 3:
        raise ValueError(f"action bins must be [B, k, D], got shape {b.shape}")
    return (b + ACTION_OFFSET).reshape(b.shape[0], -1)


def normalize_actions(actions, amin, amax):
    """float[..., D] -> float32[..., D] in [-1, 1] (the 'continuous' action encoding)."""
    lo, span = _range(amin, amax)
    return jnp.clip(2.0 * (jnp.asarray(actions, jnp.float32) - lo) / span - 1.0, -1.0, 1.0)
