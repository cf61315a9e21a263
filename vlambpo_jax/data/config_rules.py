"""Checks of config.data, in the (key, check) form of vlambpo_jax.config_checks.RULES.

Each check takes the value and returns None when fine, else a phrase saying what is allowed. Cross-field
checks take the whole config (CROSS_RULES). The data layer also checks these when it builds a loader.
"""
from __future__ import annotations

from typing import Any, Callable

from vlambpo_jax.data.rlds_reader import ACTION_PADS
from vlambpo_jax.data.standardize import EMPTY_VIEW_RULES, LAYOUTS


def _one_of(*choices):
    return lambda v: None if v in choices else "must be one of " + ", ".join(repr(c) for c in choices)


def _int_at_least(lo):
    return lambda v: None if isinstance(v, int) and not isinstance(v, bool) and v >= lo else f"must be an int >= {lo}"


def _bool(v):
    return None if isinstance(v, bool) else "must be True or False"


def _dims(v):
    try:
        ok = all(isinstance(d, int) for d in v)
    except TypeError:
        ok = False
    return None if ok else "must be a tuple of ints (dims left unnormalized)"


RULES: list[tuple[str, Callable[[Any], str | None]]] = [
    ("data.layout", _one_of(*LAYOUTS)),
    ("data.empty_view_rule", _one_of(*EMPTY_VIEW_RULES)),
    ("data.action_pad", _one_of(*ACTION_PADS)),
    ("data.norm_mode", _one_of("zscore", "percentile")),
    ("data.batch_size", _int_at_least(1)),
    ("data.shuffle_buffer", _int_at_least(0)),
    ("data.episode_buffer", _int_at_least(1)),
    ("data.max_text_len", _int_at_least(3)),
    ("data.state_dim", _int_at_least(1)),
    ("data.inspect_batches", _int_at_least(0)),
    ("data.prefetch", _int_at_least(0)),
    ("data.skip_bad_episodes", _bool),
    ("data.drop_first_zero_action", _bool),
    ("data.binarize_gripper", _bool),
    ("data.norm_skip_action_dims", _dims),
    ("data.norm_skip_state_dims", _dims),
]


def _cross(config) -> list[tuple[str, Any, str]]:
    """(key, value, problem) for checks that involve several fields."""
    d, out = config.data, []
    if len(tuple(d.image_keys)) != len(tuple(config.views)):
        out.append(("data.image_keys", tuple(d.image_keys),
                    f"must name one observation key per view in config.views ({len(tuple(config.views))})"))
    if not 0 <= d.gripper_dim < config.action_dim:
        out.append(("data.gripper_dim", d.gripper_dim, f"must be in [0, action_dim={config.action_dim})"))
    for key, dim in (("data.norm_skip_action_dims", config.action_dim), ("data.norm_skip_state_dims", d.state_dim)):
        bad = [x for x in config.data[key.split(".")[1]] if not -dim <= x < dim]
        if bad:
            out.append((key, bad, f"dims must be in [-{dim}, {dim})"))
    return out


def problems(config) -> list[tuple[str, Any, str]]:
    """Every (key, value, what is allowed) that is wrong in config.data; empty when fine."""
    out = []
    for key, check in RULES:
        value = config.data.get(key.split(".", 1)[1])
        problem = check(value)
        if problem:
            out.append((key, value, problem))
    return out + (_cross(config) if not out else [])
