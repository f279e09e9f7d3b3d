"""Meshes and the one logical-axis rule table.

Every parameter carries logical axis names by role (see ``xdyna_jax.models.layers``); ``RULES`` maps
them to the mesh axes ``data``, ``fsdp`` and ``tensor``. A dimension whose size is not divisible by its
mesh axes is replicated instead (small convs such as the 3-channel ControlNet input), and a mesh axis
goes to the first dimension that can take it, so one table serves every model size.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# logical name -> mesh axis (or tuple of axes, or None = replicated)
RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    # FSDP: every big kernel stores one slice of its model-width dim per device (gathered for use).
    ("embed", "fsdp"),
    ("conv_in", "fsdp"),
    ("conv_out", "fsdp"),  # gets fsdp only where the input dim has none (3 channels; a resnet's conv2)
    ("vocab", "fsdp"),  # rows of embedding tables (CLIP token / position embeddings)
    # Tensor parallelism, Megatron-style: the inner dims of a pair of layers are split, the residual
    # stream between blocks is not. q/k/v split by heads and to_out on its input; the feed-forward
    # splits GEGLU/fc1 on its output and net_2/fc2 on its input; one sum per pair.
    ("heads", "tensor"),
    ("mlp", "tensor"),
    # A resnet is such a pair too: conv1 splits its output channels, conv2 its input. GroupNorm norm2
    # in between stays local, since with groups % tensor == 0 (32 groups) no group straddles devices.
    # Plain conv outputs (conv_out) are the residual stream that GroupNorm and the next layer read whole,
    # so they are never split over tensor: that would cost an all-gather after every conv.
    ("conv_mid", "tensor"),
    ("conv_h", None),
    ("conv_w", None),
    ("norm", None),
)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Mesh shape; ``-1`` for one axis means "all remaining devices"."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1


def make_mesh(cfg: MeshConfig = MeshConfig(), devices: Sequence[jax.Device] | None = None) -> Mesh:
    devices = list(jax.devices() if devices is None else devices)
    sizes = [cfg.data, cfg.fsdp, cfg.tensor]
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh: at most one axis may be -1, got {cfg}")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"mesh: {len(devices)} devices are not divisible by {known} ({cfg})")
        sizes[sizes.index(-1)] = len(devices) // known
    if int(np.prod(sizes)) != len(devices):
        raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} devices, "
                         f"{len(devices)} are available")
    grid = np.asarray(devices).reshape(sizes)
    return Mesh(grid, MESH_AXES)


def _axis_size(mesh: Mesh, axes) -> int:
    if axes is None:
        return 1
    axes = (axes,) if isinstance(axes, str) else axes
    return int(np.prod([mesh.shape[a] for a in axes]))


def logical_to_mesh_spec(logical: P, shape: Sequence[int], mesh: Mesh, rules=RULES) -> P:
    """Map one logical PartitionSpec to a mesh PartitionSpec, replicating non-divisible dims."""
    table = dict(rules)
    out = []
    used: set[str] = set()
    for name, size in zip(tuple(logical) + (None,) * (len(shape) - len(logical)), shape):
        axes = table.get(name) if name is not None else None
        if name is not None and name not in table:
            raise KeyError(f"logical axis {name!r} has no sharding rule; add it to xdyna_jax.sharding.RULES")
        flat = (axes,) if isinstance(axes, str) else tuple(axes or ())
        if axes is None or size % _axis_size(mesh, axes) or used & set(flat):
            out.append(None)
        else:
            out.append(axes)
            used |= set(flat)
    return P(*out)


def param_shardings(logical_specs, shapes, mesh: Mesh, rules=RULES):
    """Pytree of ``NamedSharding`` for params, from ``models.logical_axes`` and ``models.param_shapes``."""
    return jax.tree.map(
        lambda spec, s: NamedSharding(mesh, logical_to_mesh_spec(spec, s.shape, mesh, rules)),
        logical_specs, shapes, is_leaf=lambda x: isinstance(x, P))


def batch_sharding(mesh: Mesh, ndim: int, rules=RULES) -> NamedSharding:
    """Leading (batch) axis split over the data-parallel axes, the rest replicated."""
    return NamedSharding(mesh, P(dict(rules)["batch"], *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def shard(tree, shardings):
    """Place a pytree that every process holds in full (params) onto devices with the given shardings."""
    return jax.tree.map(lambda x, s: jax.device_put(x, s), tree, shardings)


def host_local_to_global(batch, mesh: Mesh, rules=RULES):
    """Assemble each process's slice of a batch (leading axis) into global arrays split over the
    data-parallel axes: the multi-host input path (one process per host under ``jax.distributed``)."""
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(batch_sharding(mesh, np.ndim(x), rules), x), batch)
