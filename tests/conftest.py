"""Test-wide setup: CPU only, fast XLA compiles, a persistent XLA compilation cache, optional emulated
devices.

Set VLAMBPO_TEST_DEVICES=N to emulate N CPU devices (sharding tests spawn their own subprocesses
with this set, so the default run keeps one device).
"""
import os
import sys
import tempfile

# The repository root, so tests can `import configs.*` like the CLI run from the root does.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

os.environ["JAX_PLATFORMS"] = "cpu"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# XLA:CPU at optimisation level 0 without LLVM's expensive passes: the suite is mostly compiling small
# programs, and compiles take half the time or less (measured on the whole suite); the code runs slower,
# a net loss only for a conv-net fit, which tests/test_wm_probe.py runs at the default level. Set in the
# environment, so the pipelines the tests start as subprocesses compile the same way.
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_backend_optimization_level" not in _flags:
    _flags += " --xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
_n = int(os.environ.get("VLAMBPO_TEST_DEVICES", "1"))
if _n > 1:
    _flags += f" --xla_force_host_platform_device_count={_n}"
os.environ["XLA_FLAGS"] = _flags.strip()

import jax  # noqa: E402  (must come after the environment above)

jax.config.update("jax_compilation_cache_dir",
                  os.environ.get("VLAMBPO_TEST_JAX_CACHE",
                                 os.path.join(tempfile.gettempdir(), "vlambpo_jax_test_cache")))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
