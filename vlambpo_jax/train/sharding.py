"""Device mesh, parameter sharding rules (FSDP), batch sharding and multi-host start-up.

The mesh has two axes: `data` (pure data parallelism) and `fsdp` (data parallel too, but parameters
and optimizer state are also split over it). Batches are split over both axes together.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
from typing import Any, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

log = logging.getLogger(__name__)

DATA_AXES = ("data", "fsdp")


def make_mesh(data: int = -1, fsdp: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ('data', 'fsdp') mesh over `devices` (default all); one size may be -1 for "the rest"."""
    devices = list(devices if devices is not None else jax.devices())
    n = len(devices)
    if data == -1 and fsdp == -1:
        raise ValueError("config.mesh: at most one of data, fsdp may be -1")
    if data == -1:
        data = n // fsdp
    if fsdp == -1:
        fsdp = n // data
    if data * fsdp != n or data < 1 or fsdp < 1:
        raise ValueError(f"config.mesh: data={data} x fsdp={fsdp} must multiply to the {n} devices")
    # Auto axis types: shardings are hints to XLA, so ordinary jnp code runs unchanged on the mesh.
    return Mesh(np.asarray(devices).reshape(data, fsdp), DATA_AXES,
                axis_types=(jax.sharding.AxisType.Auto,) * 2)


def _fsdp_spec(shape: tuple[int, ...], fsdp: int, min_size: int) -> P:
    """Splits the largest axis that `fsdp` divides, for arrays of at least `min_size` elements."""
    if fsdp == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
        return P()
    for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):
        if shape[axis] % fsdp == 0:
            spec = [None] * len(shape)
            spec[axis] = "fsdp"
            return P(*spec)
    return P()


def _path_name(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def param_specs(params: Any, mesh: Mesh, min_size: int = 2 ** 16,
                rules: Sequence[tuple[str, tuple]] = ()) -> Any:
    """PartitionSpecs for a parameter (or optimizer-state) tree.

    rules: (regex, spec) pairs tried first, in order, against the '/'-joined path of each leaf,
    e.g. ("vlm/.*embedding", (None, "fsdp")) or (".*", ()) to replicate everything.
    """
    fsdp = mesh.shape["fsdp"]
    compiled = [(re.compile(pattern), spec) for pattern, spec in rules]

    def spec_for(path, leaf):
        shape = tuple(np.shape(leaf))
        name = _path_name(path)
        for pattern, spec in compiled:
            if pattern.fullmatch(name) or pattern.search(name):
                return P(*spec)
        return _fsdp_spec(shape, fsdp, min_size)

    return jax.tree_util.tree_map_with_path(spec_for, params)


def param_shardings(params: Any, mesh: Mesh, min_size: int = 2 ** 16,
                    rules: Sequence[tuple[str, tuple]] = ()) -> Any:
    """NamedShardings matching `param_specs`."""
    return jax.tree_util.tree_map(lambda s: NamedSharding(mesh, s),
                                  param_specs(params, mesh, min_size, rules))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over every device."""
    return NamedSharding(mesh, P(DATA_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def shard_batch(local_batch: Any, mesh: Mesh) -> Any:
    """Assembles global arrays from this process's part of the batch (leading axis)."""
    sharding = batch_sharding(mesh)
    return jax.tree_util.tree_map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch)


def maybe_initialize_distributed(enabled: str = "auto", coordinator: str = "",
                                 num_processes: int = 0, process_id: int = -1) -> bool:
    """Starts jax.distributed when asked, or when the environment names the processes.

    enabled: 'auto' (JAX_COORDINATOR_ADDRESS, or GKE's TPU_WORKER_HOSTNAMES, in the environment), 'yes'
      (JAX finds the rest itself on a Cloud TPU VM, from its metadata), 'no'.
    Returns whether the runtime is multi-process.
    """
    if enabled == "no":
        return False
    coordinator = coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS", "")
    on_tpu_pod = bool(os.environ.get("TPU_WORKER_HOSTNAMES", "").count(","))
    if enabled == "auto" and not (coordinator or on_tpu_pod):
        return False
    kwargs = {}
    if coordinator:
        kwargs["coordinator_address"] = coordinator
    num_processes = num_processes or int(os.environ.get("JAX_NUM_PROCESSES", "0"))
    process_id = process_id if process_id >= 0 else int(os.environ.get("JAX_PROCESS_ID", "-1"))
    if num_processes:
        kwargs["num_processes"] = num_processes
    if process_id >= 0:
        kwargs["process_id"] = process_id
    jax.distributed.initialize(**kwargs)
    log.warning("jax.distributed: process %d of %d, %d local / %d global devices",
                jax.process_index(), jax.process_count(), jax.local_device_count(),
                jax.device_count())
    return jax.process_count() > 1


def check_processes_agree(fingerprint: str) -> None:
    """Raises when the processes run different configs or see different device counts."""
    if jax.process_count() == 1:
        return
    digest = hashlib.sha256(f"{fingerprint}|{jax.local_device_count()}".encode()).digest()[:8]
    mine = np.frombuffer(digest, np.int32)
    everyone = np.asarray(multihost_utils.process_allgather(mine))
    if not (everyone == everyone[0]).all():
        bad = [i for i in range(len(everyone)) if not (everyone[i] == everyone[0]).all()]
        raise RuntimeError(f"processes {bad} disagree with process 0 on the config or the local device "
                           "count; start every process with the same command and config")


def to_host(tree: Any) -> Any:
    """Arrays -> numpy, the whole global value on every process: a replicated array from this process's
    own copy, an array split over devices this process cannot address gathered from the others (a
    collective: every process must call it)."""
    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            if x.is_fully_replicated:
                return np.asarray(x.addressable_data(0))
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)
    return jax.tree.map(get, tree)


def barrier(name: str = "exit") -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def shutdown_distributed() -> None:
    """Leaves jax.distributed together with the other processes. Left to the interpreter's exit, process
    0 (which hosts the coordination service) could go first, and a peer still shutting down then aborts."""
    if jax.process_count() > 1:
        jax.distributed.shutdown()


class DataParallel:
    """Runs a train step on the config's mesh: state sharded by the FSDP rules, batches split over all
    devices of all processes, the step jitted with explicit shardings and a donated state.

    With one device everything is a no-op placement, so single-device numbers are unchanged.
    """

    def __init__(self, mesh_config):
        self.mesh = make_mesh(mesh_config.data, mesh_config.fsdp)
        self.min_size = int(mesh_config.fsdp_min_size)
        self.rules = tuple((str(r[0]), tuple(r[1])) for r in mesh_config.rules)
        self.batch_sharding = batch_sharding(self.mesh)

    def place(self, state: Any) -> tuple[Any, Any]:
        """-> (state on the mesh, its shardings). Leaves are copied, so a state whose fields share
        arrays (params and their EMA at step 0) can be donated."""
        shardings = param_shardings(state, self.mesh, self.min_size, self.rules)
        state = jax.tree.map(lambda x: jax.numpy.array(x, copy=True), state)
        return jax.device_put(state, shardings), shardings

    def on_mesh(self, tree: Any) -> Any:
        """Leaves already on this mesh stay as they are; the rest (numpy, single-device arrays, which
        must hold the same values on every process) become arrays replicated over the mesh."""
        devices = set(self.mesh.devices.flat)

        def put(x):
            if isinstance(x, jax.Array) and x.sharding.device_set == devices:
                return x
            return jax.device_put(np.asarray(x), replicated(self.mesh))

        return jax.tree.map(put, tree)

    def local_rows(self, global_batch: Any) -> Any:
        """This process's contiguous block of rows of a batch every process built identically."""
        n, i = jax.process_count(), jax.process_index()
        first = jax.tree.leaves(global_batch)[0].shape[0]
        if first % self.mesh.size:
            raise ValueError(f"the global batch ({first}) must be divisible by the number of devices "
                             f"({self.mesh.size}); change the batch size or config.mesh")
        rows = first // n
        return jax.tree.map(lambda x: np.asarray(x)[i * rows:(i + 1) * rows], global_batch)

    def shard(self, batch: Any, is_global: bool) -> Any:
        """A batch (global: identical on every process; else this process's share) -> global arrays."""
        local = self.local_rows(batch) if is_global else batch
        return shard_batch(local, self.mesh)

    def jit_step(self, step_fn, state_shardings: Any):
        """step_fn(state, batch) -> (state, metrics), compiled for the mesh with the state donated."""
        return jax.jit(step_fn, in_shardings=(state_shardings, self.batch_sharding),
                       out_shardings=(state_shardings, replicated(self.mesh)), donate_argnums=0)
