"""Do two finished runs give the same numbers? Compares every number two workdirs' stages reported.

  python -m vlambpo_jax.tools.compare_runs --a=DIR_A --b=DIR_B [--rtol=1e-6] [--atol=0]

Reads each stage's summary (<stage>/DONE.json) and every other JSON file in the stage directories
(results, summaries, rounds, wm_agreement, ...), and compares the numbers leaf by leaf, leaving out
wall-clock times. Prints the leaves that differ (or exist in one run only) and a JSON line
{"compared", "differ", "missing"}; exits 1 when anything differs. Use it to check that a change which
should not change behaviour did not. Package versions that differ between the runs' stages (DONE.json
'packages', written since 2026-12-07) are printed as notes: a new install can change the numbers.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from absl import app, flags

from vlambpo_jax.pipeline import DONE_FILE
from vlambpo_jax.stages import STAGES

FLAGS = flags.FLAGS
flags.DEFINE_string("a", None, "the first run's workdir")
flags.DEFINE_string("b", None, "the second run's workdir")
flags.DEFINE_float("rtol", 1e-6, "relative tolerance")
flags.DEFINE_float("atol", 0.0, "absolute tolerance")
flags.mark_flags_as_required(["a", "b"])

# Keys of numbers that differ between identical computations: wall-clock times and rates from them.
TIMING_WORDS = ("second", "time", "sec_per", "per_s")


def _skipped(key: str) -> bool:
    return any(w in key for w in TIMING_WORDS)


def numbers(tree, prefix: str = "") -> dict[str, float]:
    """{'a/b/0': value} for every number (bools included) in a JSON tree; timing keys are left out."""
    out = {}
    if isinstance(tree, dict):
        for k, v in tree.items():
            if not _skipped(str(k)):
                out.update(numbers(v, f"{prefix}{k}/"))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            out.update(numbers(v, f"{prefix}{i}/"))
    elif isinstance(tree, (int, float)):
        out[prefix.rstrip("/")] = float(tree)
    return out


def run_numbers(workdir: Path) -> dict[str, float]:
    out = {}
    for stage in STAGES:
        done = workdir / stage / DONE_FILE
        if done.exists():
            out.update(numbers(json.loads(done.read_text())["summary"], f"{stage}/summary/"))
        for path in sorted((workdir / stage).glob("*.json")):
            if path.name != DONE_FILE:
                out.update(numbers(json.loads(path.read_text(), parse_constant=lambda _: float("nan")),
                                   f"{stage}/{path.name}/"))
    return out


def run_packages(workdir: Path) -> dict[str, str]:
    """{'stage/package': version} from each finished stage's DONE.json (stages written before the
    versions were recorded have none)."""
    out = {}
    for stage in STAGES:
        done = workdir / stage / DONE_FILE
        if done.exists():
            for name, version in json.loads(done.read_text()).get("packages", {}).items():
                out[f"{stage}/{name}"] = version
    return out


def package_differences(a: dict[str, str], b: dict[str, str]) -> list[str]:
    """'stage/package: version_a vs version_b' for the packages both runs recorded at different versions."""
    return [f"{key}: {a[key]} vs {b[key]}" for key in sorted(set(a) & set(b)) if a[key] != b[key]]


def compare(a: dict[str, float], b: dict[str, float], rtol: float, atol: float) -> tuple[list, list]:
    """-> (keys whose values differ, keys in one run only)."""
    differ = []
    for key in sorted(set(a) & set(b)):
        x, y = a[key], b[key]
        if not (x == y or (math.isnan(x) and math.isnan(y)) or abs(x - y) <= atol + rtol * abs(y)):
            differ.append(key)
    return differ, sorted(set(a) ^ set(b))


def main(argv) -> None:
    del argv
    a, b = run_numbers(Path(FLAGS.a)), run_numbers(Path(FLAGS.b))
    differ, missing = compare(a, b, FLAGS.rtol, FLAGS.atol)
    for key in differ:
        print(f"differs: {key}: {a[key]!r} vs {b[key]!r}")
    for key in missing:
        print(f"only in {'a' if key in a else 'b'}: {key}")
    for line in package_differences(run_packages(Path(FLAGS.a)), run_packages(Path(FLAGS.b))):
        print(f"note: installed package differs: {line}")
    print(json.dumps({"compared": len(set(a) & set(b)), "differ": len(differ), "missing": len(missing)}))
    sys.exit(1 if differ or missing else 0)


if __name__ == "__main__":
    app.run(main)
