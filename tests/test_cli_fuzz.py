"""A fuzz test of the command line: random overrides of every config key, with wrong types, wrong values
and unknown keys. Each must end in a one-line error (exit status 2) or a config the checks accept; none
may raise. It runs main's own parsing and checks in-process (cli.command_flags + cli.checked), so it
covers every key in seconds; accepted configs are not run (the pipeline tests run the shipped ones)."""
import random

import ml_collections
import pytest

from vlambpo_jax import cli
from vlambpo_jax.config_checks import load_config

SPECS = ("configs/tabletop.py:smoke", "configs/bridge.py:smoke")


def _leaves(config, prefix=""):
    for key, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _mutations(value, rng: random.Random):
    """Wrong types and wrong values for a field whose default is `value`: the edge values of its
    type always, plus one of the rest at random."""
    anything = ["abc", "", "1e30", "nan", "None", "()", "(1,'x')", "{'a': 1}", "[[", "True"]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        edges = ["0", "-1", str(value * 1000 + 7)] + (["-inf"] if isinstance(value, float) else [])
    elif isinstance(value, str):
        edges = [value + "_typo", "0"]
    elif isinstance(value, (tuple, list)):
        edges = ["(" + ",".join(["'x'"] * (len(value) + 1)) + ",)", "(-1,)", "()"]
    else:
        edges = ["-1"]
    return edges + [rng.choice(anything)]


def _outcome(argv, capsys):
    """-> ('ok' | 'error', stderr). Anything other than a clean SystemExit(2) propagates and fails."""
    try:
        fv = cli.command_flags(argv)
        cli.checked(fv.config)
    except SystemExit as e:
        err = capsys.readouterr().err
        assert e.code == 2, (argv, e.code, err)
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), (argv, err)
        return "error", lines[0]
    capsys.readouterr()
    return "ok", ""


@pytest.mark.parametrize("spec", SPECS)
def test_random_overrides_of_every_key_end_in_one_line_or_a_valid_config(spec, capsys):
    rng = random.Random(spec)
    config = load_config(spec)
    counts = {"ok": 0, "error": 0}
    for key, value in _leaves(config):
        for bad in _mutations(value, rng):
            kind, _ = _outcome([f"--config={spec}", f"--config.{key}={bad}", "--workdir=/nonexistent"],
                               capsys)
            counts[kind] += 1
        # an unknown key: a typo of this one, or a field below a leaf
        unknown = rng.choice([f"{key}_x", f"{key}.deeper", f"x{key}"])
        kind, line = _outcome([f"--config={spec}", f"--config.{unknown}=1", "--workdir=/x"], capsys)
        assert kind == "error", (unknown, line)
    assert counts["error"] > counts["ok"] > 0, counts
