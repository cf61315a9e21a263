"""The command-line convention every command shares (main, the tools, the benchmarks):

  --config=FILE[:ARG]        a config file and its optional argument, e.g. configs/tabletop.py:smoke
  --config.a.b=VALUE         override any field the config file defines (repeatable)
  --workdir=DIR              the run's directory

Errors a user can cause (a missing config file, an unknown or renamed field, a value the config
checks refuse) end the command with one line on stderr and exit status 2.
"""
from __future__ import annotations

import os
import sys
from typing import NoReturn

import ml_collections
from absl import flags
from etils import epath
from ml_collections import config_flags

from vlambpo_jax.config_checks import _MISSING, RENAMED, ConfigError, get, load_config, validate

CONFIG_HELP = ("Config file and optional argument, e.g. configs/tabletop.py:smoke. Any field can be "
               "overridden with --config.<key>=<value> (e.g. --config.sft.steps=100). Each config file "
               "documents its fields.")


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def define_config(flag_values: flags.FlagValues, argv: list[str] | None = None) -> None:
    """Defines --config (with its --config.a.b overrides, read from argv, default sys.argv)."""
    config_flags.DEFINE_config_file("config", None, CONFIG_HELP, flag_values=flag_values, lock_config=True,
                                    sys_argv=argv)


def config_spec(argv: list[str]) -> str | None:
    """The FILE[:ARG] of --config=FILE[:ARG] in argv, or None."""
    return next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)


def _bad_override(argv: list[str]) -> str | None:
    """A one-line message for the first --config.<key> override whose key the config file lacks."""
    spec = config_spec(argv)
    if spec is None:
        return None
    config = load_config(spec)
    for arg in argv:
        if arg.startswith("--config."):
            key = arg[len("--config."):].split("=", 1)[0]
            if key in RENAMED:
                return f"config.{key}: renamed; use --config.{RENAMED[key]}"
            if get(config, key) is _MISSING:
                return (f"config.{key}: unknown key; the config file documents the allowed keys "
                        "(--print_config shows them)")
    return None


def parse(flag_values: flags.FlagValues, argv: list[str]) -> list[str]:
    """absl parsing of argv (argv[0] is the program) with one-line errors instead of tracebacks.
    Returns the arguments left over."""
    spec = config_spec(argv)
    if spec is not None and not os.path.isfile(spec.partition(":")[0]):
        fail(f"--config: no config file {spec.partition(':')[0]!r} (see configs/ for the shipped ones)")
    try:
        return flag_values(argv)
    except flags.Error as e:
        lines = [line for line in str(e).splitlines() if line.strip()]
        # A config file that raised: its exception is the last line of the embedded traceback.
        fail(lines[0] if len(lines) == 1 else f"{lines[0]} {lines[-1]}")
    except Exception as e:  # noqa: BLE001 - ml_collections raises KeyError/AttributeError/TypeError
        try:
            message = _bad_override(argv)
        except Exception:  # noqa: BLE001
            message = None
        fail(message or f"bad config: {type(e).__name__}: {' '.join(str(e).split())}")


def checked(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The config, after the config checks; a refused value ends the command with one line."""
    try:
        validate(config)
    except ConfigError as e:
        fail(str(e))
    return config


def emit_json(text: str, out: str = "") -> None:
    """Prints a command's JSON result; also writes it to `out` (a path, local or gs://) when given."""
    if out:
        epath.Path(out).write_text(text)
    print(text)


def workdir_path(path: str) -> epath.Path:
    """The workdir made absolute. A URL (gs://...) fails with one line: stages write their outputs
    (numpy arrays, images, RLDS datasets, tokenizers) through local file APIs, so a bucket is used
    mounted (gcsfuse), as `launch/tpu_pod.py setup --bucket` does on every worker."""
    if "://" in path:
        fail(f"--workdir={path}: a URL cannot be the workdir (the stages write through local file APIs); "
             "mount the bucket (gcsfuse --implicit-dirs BUCKET /mnt/gcs/BUCKET; `launch/tpu_pod.py setup "
             "--bucket=BUCKET` does it on every worker) and pass the mounted path")
    return epath.Path(os.path.abspath(path))


def command_flags(argv: list[str], define=None, *, workdir: bool = True,
                  default_config: str | None = None) -> flags.FlagValues:
    """The flags of a command called as main(argv) (argv without the program name): its own FlagValues
    (so commands can run in one process), --config (required unless default_config is given) and,
    with `workdir`, a required --workdir, plus what `define(flag_values)` adds. Parsed, with one-line
    errors."""
    argv = ["vlambpo_jax"] + list(argv)
    if default_config is not None and config_spec(argv) is None:
        argv.insert(1, f"--config={default_config}")   # so --config.a.b overrides apply to the default
    fv = flags.FlagValues()
    define_config(fv, argv)
    if workdir:
        flags.DEFINE_string("workdir", None, "the run's workdir", flag_values=fv)
    if define is not None:
        define(fv)
    if any(a in ("--help", "-h", "--helpfull") for a in argv[1:]):
        # the command's own docstring (it runs as __main__) and every flag it takes
        print(((sys.modules["__main__"].__doc__ or "").strip() + "\n\nFlags:\n" + fv.get_help()).strip())
        sys.exit(0)
    rest = parse(fv, argv)
    if len(rest) > 1:
        fail(f"unexpected arguments: {' '.join(rest[1:])}")
    for name in ("config",) + (("workdir",) if workdir else ()):
        if fv[name].value is None:
            fail(f"--{name} is required")
    return fv
