"""The processes, the device mesh, and where every array lives on it.

One 2-D mesh with axes `data` and `fsdp`. The batch is split over both axes (every device sees its
own images); parameters and optimizer state are split over `fsdp` only, one dimension per tensor,
so a model too large for one device's memory fits on `fsdp` of them. Sharded `jit` with
`NamedSharding` is the only mechanism (no `pmap`).
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
MESH_AXES = (DATA_AXIS, FSDP_AXIS)
BATCH_AXES = (DATA_AXIS, FSDP_AXIS)
# Below this many elements a tensor is replicated: splitting it saves little memory and costs a
# collective per use.
DEFAULT_FSDP_MIN_SIZE = 2 ** 18
MULTIHOST_MODES = ("auto", "on", "off")


def parse_mesh_spec(spec: str) -> dict[str, int]:
    """`'data=-1,fsdp=2'` -> `{'data': -1, 'fsdp': 2}`; both axes must be named, -1 at most once."""
    sizes: dict[str, int] = {}
    for part in spec.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep or name not in MESH_AXES:
            raise ValueError(f"mesh spec {spec!r}: each entry must be `axis=size` with axis in "
                             f"{MESH_AXES}, got {part!r}")
        if name in sizes:
            raise ValueError(f"mesh spec {spec!r}: axis {name!r} given twice")
        try:
            sizes[name] = int(value)
        except ValueError as err:
            raise ValueError(f"mesh spec {spec!r}: size of {name!r} is not an integer") from err
        if sizes[name] == 0 or sizes[name] < -1:
            raise ValueError(f"mesh spec {spec!r}: size of {name!r} must be positive or -1")
    missing = [axis for axis in MESH_AXES if axis not in sizes]
    if missing:
        raise ValueError(f"mesh spec {spec!r} does not size the axes {missing}")
    if list(sizes.values()).count(-1) > 1:
        raise ValueError(f"mesh spec {spec!r}: only one axis may be -1")
    return sizes


def resolve_mesh_shape(spec: str, num_devices: int) -> tuple[int, int]:
    """The (data, fsdp) sizes for `num_devices`, filling in the axis given as -1."""
    sizes = parse_mesh_spec(spec)
    known = math.prod(size for size in sizes.values() if size != -1)
    if -1 in sizes.values():
        if num_devices % known:
            raise ValueError(f"mesh spec {spec!r} does not divide the {num_devices} devices")
        sizes = {axis: (num_devices // known if size == -1 else size)
                 for axis, size in sizes.items()}
    shape = tuple(sizes[axis] for axis in MESH_AXES)
    if math.prod(shape) != num_devices:
        raise ValueError(f"mesh spec {spec!r} needs {math.prod(shape)} devices, "
                         f"{num_devices} are available")
    return shape  # type: ignore[return-value]


def make_mesh(spec: str, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The (data, fsdp) mesh over `devices` (default: all devices of all processes)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = resolve_mesh_shape(spec, len(devices))
    # create_device_mesh orders devices so that `fsdp` neighbours share the fastest links.
    return Mesh(mesh_utils.create_device_mesh(shape, devices), MESH_AXES)


def fsdp_partition_spec(shape: Sequence[int], fsdp_size: int,
                        min_size: int = DEFAULT_FSDP_MIN_SIZE) -> PartitionSpec:
    """Where one parameter-like tensor of `shape` is split over `fsdp`.

    Tensors with fewer than `min_size` elements, or no dimension divisible by `fsdp_size`, are
    replicated; otherwise the largest divisible dimension is split (the last one on ties, usually
    the output features, so a kernel's input layout stays whole).
    """
    if fsdp_size == 1 or math.prod(shape) < min_size:
        return PartitionSpec()
    by_size = sorted(range(len(shape)), key=lambda d: (shape[d], d), reverse=True)
    for dim in by_size:
        if shape[dim] % fsdp_size == 0:
            spec: list[str | None] = [None] * len(shape)
            spec[dim] = FSDP_AXIS
            return PartitionSpec(*spec)
    return PartitionSpec()


def fsdp_shardings(tree: Any, mesh: Mesh, min_size: int = DEFAULT_FSDP_MIN_SIZE) -> Any:
    """A NamedSharding per leaf of `tree` (arrays or ShapeDtypeStructs), by `fsdp_partition_spec`.

    Applied to parameters and to the optimizer state alike: Adam's moments have their parameter's
    shape and therefore land on the same devices as it.
    """
    fsdp_size = mesh.shape[FSDP_AXIS]
    return jax.tree.map(
        lambda leaf: NamedSharding(mesh, fsdp_partition_spec(np.shape(leaf), fsdp_size, min_size)),
        tree)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over every device of the mesh."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def check_global_batch_size(global_batch_size: int, mesh: Mesh) -> None:
    """The batch must split evenly over the devices and over the processes."""
    devices = mesh.devices.size
    if global_batch_size % devices:
        raise ValueError(f"global batch size {global_batch_size} is not divisible by the "
                         f"{devices} devices of the mesh {dict(mesh.shape)}")
    if global_batch_size % jax.process_count():
        raise ValueError(f"global batch size {global_batch_size} is not divisible by the "
                         f"{jax.process_count()} processes")


def place(tree: Any, shardings: Any) -> Any:
    """Puts host arrays (numpy, identical on every process) onto the mesh."""
    return jax.tree.map(
        lambda x, s: jax.make_array_from_callback(np.shape(x), s,
                                                  lambda index: np.asarray(x)[index]),
        tree, shardings)


def _multihost_environment() -> str | None:
    """'TPU VM' or 'SLURM' when this process is one of several of such a job, else None."""
    if importlib.util.find_spec("libtpu") is not None:
        return "TPU VM"
    if "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return "SLURM"
    return None


def initialize_distributed(mode: str = "auto", coordinator_address: str | None = None,
                           num_processes: int | None = None, process_id: int | None = None
                           ) -> None:
    """Starts `jax.distributed` when the job has several processes; call before any JAX work.

    Explicit flags (coordinator, count, id) always initialise. Otherwise `mode`: 'on' calls
    `jax.distributed.initialize()` and lets JAX read the cluster (Cloud TPU metadata, SLURM
    variables, ...); 'auto' does that only on a TPU VM (libtpu installed: single-host slices
    initialise as one process) or in a SLURM job with SLURM_NTASKS > 1; 'off' never.
    """
    if mode not in MULTIHOST_MODES:
        raise ValueError(f"multihost mode {mode!r}; expected one of {MULTIHOST_MODES}")
    explicit = (coordinator_address, num_processes, process_id)
    if any(value is not None for value in explicit):
        if any(value is None for value in explicit):
            raise ValueError("--coordinator_address, --num_processes and --process_id go "
                             "together; give all three or none")
        jax.distributed.initialize(coordinator_address=coordinator_address,
                                   num_processes=num_processes, process_id=process_id)
    elif mode == "on" or (mode == "auto" and _multihost_environment()):
        logging.info("jax.distributed.initialize() (%s)", _multihost_environment() or "forced")
        jax.distributed.initialize()
    logging.info("process %d of %d, %d local / %d global devices", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())
