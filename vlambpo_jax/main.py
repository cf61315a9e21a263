"""Command-line entry point: runs the pipeline stages a config names, resumably, in a workdir.

  python -m vlambpo_jax.main --config=configs/tabletop.py[:smoke] --workdir=DIR [--config.a.b=value]

Finished stages are skipped on rerun; an interrupted stage resumes from its newest checkpoint.
SIGTERM (e.g. TPU preemption) or Ctrl-C makes the running stage checkpoint and exit cleanly.
An error the user can fix (vlambpo_jax.errors.UserError: bad data, a checkpoint from another config, a
missing stage output) ends the command with one line on stderr; its traceback goes to <workdir>/error.log.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import sys
import time
import traceback
from typing import NoReturn

import jax
from absl import app, flags
from absl import logging as absl_logging

from vlambpo_jax import cli, pipeline
from vlambpo_jax.atomic_file import write_text_atomic
from vlambpo_jax.errors import UserError
from vlambpo_jax.train import sharding
from vlambpo_jax.train.metrics import MetricWriter
from vlambpo_jax.train.preemption import PreemptionGuard

FLAGS = flags.FLAGS
cli.define_config(FLAGS)
flags.DEFINE_string("workdir", None, "Directory for all outputs: datasets, checkpoints, metrics "
                    "(metrics.jsonl + TensorBoard under <workdir>/<stage>), videos and reports. "
                    "Rerunning with the same workdir resumes.")
flags.DEFINE_list("stages", None, "Run only these stages (comma separated), overriding config.stages.")
flags.DEFINE_bool("print_config", False, "Print the resolved config and exit without computing.")
flags.DEFINE_string("jax_cache_dir", None, "Persistent XLA compilation cache (default: "
                    "<workdir>/jax_cache). Cuts repeated compile times a lot on CPU.")
flags.mark_flags_as_required(["config"])  # --workdir too, unless --print_config


def _setup_jax(cache_dir: str) -> None:
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
    write_text_atomic(path, text)  # two runs sharing a workdir (parallel lanes) each read a whole file


# Errors of the machine the user can fix: a full disk, a read-only or foreign workdir.
USER_OS_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def _log_traceback(workdir) -> str:
    """Appends the exception being handled to <workdir>/error.log (error.process<i>.log on other
    processes); returns the file's path, or a note when it cannot be written either."""
    name = "error.log" if jax.process_index() == 0 else f"error.process{jax.process_index()}.log"
    path = workdir / name
    try:
        with path.open("a") as f:
            f.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')}\n{traceback.format_exc()}\n")
    except OSError:
        return "not saved: the workdir is not writable"
    return str(path)


def _exit_with_error(message: str, status: int) -> NoReturn:
    """Prints `error: message` and ends the process at once. os._exit skips the interpreter's teardown,
    where orbax's background threads would otherwise add walls of asyncio tracebacks, and a process
    that stops here must not wait at a barrier for peers that will never come."""
    print(f"error: {' '.join(message.split())}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _check_writable(workdir) -> None:
    """Creates workdir and writes and removes a file in it, or fails with one line. The file is named per
    OS process: two local runs on one workdir (stages in parallel lanes) both have process index 0."""
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        probe = workdir / f".write_probe{jax.process_index()}_{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        cli.fail(f"cannot write the workdir {workdir}: {e.strerror or e}")


def _run(config, workdir, guard) -> dict:
    """pipeline.run_stages; any failure ends the process with one `error:` line."""
    try:
        return pipeline.run_stages(
            config, workdir,
            make_writer=lambda stage: MetricWriter(workdir / stage, stage, config.log, config),
            preemption=guard)
    except UserError as e:  # bad data, a checkpoint from another config, a missing stage output
        _exit_with_error(f"{e} (traceback: {_log_traceback(workdir)})", 2)
    except Exception as e:  # noqa: BLE001 - a bug: keep its traceback on stderr, then the one line
        if isinstance(e, OSError) and e.errno in USER_OS_ERRORS:
            _exit_with_error(f"cannot write {e.filename or workdir}: {e.strerror} (traceback: "
                             f"{_log_traceback(workdir)})", 2)
        traceback.print_exc()
        _exit_with_error(f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''} "
                         f"(traceback above and in {_log_traceback(workdir)})", 1)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS["verbosity"].present:
        absl_logging.set_verbosity(absl_logging.WARNING)  # tfds/orbax INFO lines drown the progress
    config = FLAGS.config
    if FLAGS.stages:
        with config.unlocked():
            config.stages = tuple(FLAGS.stages)
    cli.checked(config)
    if FLAGS.print_config:
        print(config)
        return
    if not FLAGS.workdir:
        cli.fail("flag --workdir must have a value: the directory for all outputs (--print_config needs none)")

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    d = config.distributed
    sharding.maybe_initialize_distributed(d.enabled, d.coordinator, d.num_processes, d.process_id)
    try:
        sharding.check_processes_agree(config.to_json_best_effort(sort_keys=True))
    except RuntimeError as e:
        cli.fail(str(e))
    workdir = cli.workdir_path(FLAGS.workdir)
    _check_writable(workdir)
    _setup_jax(FLAGS.jax_cache_dir or str(workdir / "jax_cache"))
    if jax.process_index() == 0:
        _note_config(workdir, config)

    guard = PreemptionGuard()
    start = time.time()
    results = _run(config, workdir, guard)
    sharding.barrier("vlambpo_jax_exit")
    if jax.process_index() == 0:
        _print_outcome(results, workdir, guard, time.time() - start)
    sharding.shutdown_distributed()
    # Every checkpoint and metrics file is closed by now. Ending here, rather than in the interpreter's
    # teardown, keeps native threads of TensorFlow's readers from aborting the exit ("terminate called
    # ... exception not rethrown", status -6) after a run that succeeded.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _print_outcome(results: dict, workdir, guard, seconds: float) -> None:
    if guard.requested:
        print(f"stopped by {guard.signal_name} after {seconds:.1f} s; rerun the same command to resume")
        return
    print(f"done in {seconds:.1f} s; outputs in {workdir}")
    for stage, summary in results.items():
        brief = {k: v for k, v in summary.items() if isinstance(v, (int, float, str, bool))}
        print(f"  {stage}: {json.dumps(brief, default=str)[:300]}")


def run() -> None:
    # TensorFlow (used only to read tfrecord RLDS) is chatty at start-up; keep its logs to errors.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    app.run(main, flags_parser=lambda argv: cli.parse(FLAGS, argv))


if __name__ == "__main__":
    run()
