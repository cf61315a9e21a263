"""Command-line entry point: runs the pipeline stages a config names, resumably, in a workdir.

  python -m vlambpo_jax.main --config=configs/tabletop.py[:smoke] --workdir=DIR [--config.a.b=value]

Finished stages are skipped on rerun; an interrupted stage resumes from its newest checkpoint.
SIGTERM (e.g. TPU preemption) or Ctrl-C makes the running stage checkpoint and exit cleanly.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time

from absl import app, flags
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None,
    "Config file and optional argument, e.g. configs/tabletop.py:smoke. Any field can be overridden "
    "with --config.<key>=<value> (e.g. --config.sft.steps=100). Each config file documents its fields.",
    lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for all outputs: datasets, checkpoints, metrics "
                    "(metrics.jsonl + TensorBoard under <workdir>/<stage>), videos and reports. "
                    "Rerunning with the same workdir resumes.")
flags.DEFINE_list("stages", None, "Run only these stages (comma separated), overriding config.stages.")
flags.DEFINE_bool("print_config", False, "Print the resolved config and exit without computing.")
flags.DEFINE_string("jax_cache_dir", None, "Persistent XLA compilation cache (default: "
                    "<workdir>/jax_cache). Cuts repeated compile times a lot on CPU.")
flags.mark_flags_as_required(["config", "workdir"])


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _unknown_override_keys(argv: list[str]) -> list[str]:
    """Names the --config.<key> overrides whose key the config file does not have."""
    spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if spec is None:
        return []
    from vlambpo_jax.config_checks import _MISSING, get, load_config
    config = load_config(spec)
    keys = [a[len("--config."):].split("=", 1)[0] for a in argv if a.startswith("--config.")]
    return [k for k in keys if get(config, k) is _MISSING]


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing, with one-line errors for bad config overrides instead of tracebacks."""
    spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if spec is not None and not os.path.isfile(spec.partition(":")[0]):
        _fail(f"--config: no config file {spec.partition(':')[0]!r} (see configs/ for the shipped ones)")
    try:
        return FLAGS(argv)
    except flags.Error as e:
        lines = [line for line in str(e).splitlines() if line.strip()]
        # A config file that raised: its exception is the last line of the embedded traceback.
        _fail(lines[0] if len(lines) == 1 else f"{lines[0]} {lines[-1]}")
    except Exception as e:  # noqa: BLE001 - ml_collections raises KeyError/AttributeError/TypeError
        try:
            unknown = _unknown_override_keys(argv)
        except Exception:  # noqa: BLE001
            unknown = []
        if unknown:
            _fail(f"config.{unknown[0]}: unknown key; the config file documents the allowed keys "
                  "(--print_config shows them)")
        _fail(f"bad config: {type(e).__name__}: {' '.join(str(e).split())}")


def workdir_path(path: str):
    """A local path made absolute, or a remote one (gs://...) as is, both as etils.epath.Path."""
    from etils import epath
    return epath.Path(path) if "://" in path else epath.Path(os.path.abspath(path))


def _setup_jax(cache_dir: str) -> None:
    import jax
    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def _note_config(workdir, config) -> None:
    """Saves the config; warns when a rerun in the same workdir uses a different one."""
    path = workdir / "config.json"
    text = config.to_json_best_effort(indent=2, sort_keys=True)
    if path.exists() and path.read_text() != text:
        old = json.loads(path.read_text())
        new = json.loads(text)
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        print(f"warning: config differs from the previous run in {workdir} (top-level keys "
              f"{', '.join(changed)}); finished stages keep their old results", file=sys.stderr)
    path.write_text(text)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS["verbosity"].present:
        from absl import logging as absl_logging
        absl_logging.set_verbosity(absl_logging.WARNING)  # tfds/orbax INFO lines drown the progress
    config = FLAGS.config
    if FLAGS.stages:
        with config.unlocked():
            config.stages = tuple(FLAGS.stages)
    from vlambpo_jax.config_checks import ConfigError, validate
    try:
        validate(config)
    except ConfigError as e:
        _fail(str(e))
    if FLAGS.print_config:
        print(config)
        return

    import jax

    from vlambpo_jax import pipeline
    from vlambpo_jax.train import sharding
    from vlambpo_jax.train.metrics import MetricWriter
    from vlambpo_jax.train.preemption import PreemptionGuard

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    d = config.distributed
    sharding.maybe_initialize_distributed(d.enabled, d.coordinator, d.num_processes, d.process_id)
    try:
        sharding.check_processes_agree(config.to_json_best_effort(sort_keys=True))
    except RuntimeError as e:
        _fail(str(e))
    workdir = workdir_path(FLAGS.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    local_cache = os.path.join(os.path.expanduser("~"), ".cache", "vlambpo_jax", "jax_cache")
    _setup_jax(FLAGS.jax_cache_dir or (local_cache if "://" in str(workdir) else str(workdir / "jax_cache")))
    if jax.process_index() == 0:
        _note_config(workdir, config)

    guard = PreemptionGuard()
    start = time.time()
    results = pipeline.run_stages(
        config, workdir,
        make_writer=lambda stage: MetricWriter(workdir / stage, stage, config.log, config),
        preemption=guard)
    sharding.barrier("vlambpo_jax_exit")
    if jax.process_index() != 0:
        return
    if guard.requested:
        print(f"stopped by {guard.signal_name} after {time.time() - start:.1f} s; rerun the same "
              "command to resume")
        return
    print(f"done in {time.time() - start:.1f} s; outputs in {workdir}")
    for stage, summary in results.items():
        brief = {k: v for k, v in summary.items() if isinstance(v, (int, float, str, bool))}
        print(f"  {stage}: {json.dumps(brief, default=str)[:300]}")


def run() -> None:
    # TensorFlow (used only to read tfrecord RLDS) is chatty at start-up; keep its logs to errors.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
    run()
