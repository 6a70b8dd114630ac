"""Device mesh and the logical-axis -> mesh-axis rules.

The model names its axes (``embed``, ``mlp``, ``heads``, ...); one rule table
in the config places them on mesh axes (``data``, ``fsdp``, ``tensor``). A new
parallelism layout is a config change: no model code moves.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from siammae_jax.models.definition import Rules

MESH_AXES = ("data", "fsdp", "tensor")
# Batch dimension of inputs: split over every data-parallel axis.
BATCH_AXES = ("data", "fsdp")


def mesh_shape(shape: dict[str, int], num_devices: int) -> tuple[int, int, int]:
    """Sizes of (data, fsdp, tensor) on ``num_devices`` (-1: all remaining).

    Raises:
      ValueError: an unknown axis, more than one -1, or sizes that do not
        multiply to the number of devices.
    """
    unknown = set(shape) - set(MESH_AXES)
    if unknown:
        raise ValueError(
            f"mesh has unknown axes {sorted(unknown)}; allowed: {list(MESH_AXES)}."
        )
    sizes = [int(shape.get(a, 1)) for a in MESH_AXES]
    if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh={dict(shape)}: sizes must be positive, one may be -1.")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise ValueError(
                f"mesh={dict(shape)} does not divide {num_devices} devices."
            )
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ValueError(
            f"mesh={dict(shape)} needs {math.prod(sizes)} devices, "
            f"{num_devices} are present."
        )
    return tuple(sizes)


def make_mesh(
    shape: dict[str, int], devices: Sequence[jax.Device] | None = None
) -> Mesh:
    """A mesh with axes ``data``, ``fsdp``, ``tensor`` (see ``mesh_shape``)."""
    devices = jax.devices() if devices is None else devices
    sizes = mesh_shape(shape, len(devices))
    grid = np.asarray(devices).reshape(sizes)
    return Mesh(grid, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3)


def check_rules(rules: Rules) -> None:
    """Raises ValueError when a rule targets an axis the mesh does not have."""
    for logical, mesh_axes in rules:
        axes = (mesh_axes,) if isinstance(mesh_axes, str) else (mesh_axes or ())
        for axis in axes:
            if axis not in MESH_AXES:
                raise ValueError(
                    f"sharding rule ({logical!r}, {mesh_axes!r}) names mesh axis "
                    f"{axis!r}; allowed: {list(MESH_AXES)}."
                )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Inputs: leading (batch) dimension over the data-parallel axes."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def barrier(name: str) -> None:
    """Waits for every process (nothing to wait for with one)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
