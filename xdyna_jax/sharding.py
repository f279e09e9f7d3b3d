"""Meshes and the one logical-axis rule table.

Every parameter carries logical axis names by role (see ``xdyna_jax.models.layers``); ``RULES`` maps
them to the mesh axes ``data``, ``fsdp`` and ``tensor``. A dimension whose size is not divisible by its
mesh axes is replicated instead (small convs such as the 3-channel ControlNet input), and a mesh axis
goes to the first dimension that can take it, so one table serves every model size.

``MeshConfig.rules`` overrides entries of the table by logical name (the others are kept):
``rules_with(cfg.rules)`` is the table of a config. Every function here that places something takes
``rules`` explicitly (default ``RULES``); a mesh carries no table, because meshes are interned by layout
(two configs with one layout and different rules get the same ``Mesh``). Activations follow the same table:
the UNet and ControlNet pin their residual stream with ``constrain`` inside ``activation_sharding(mesh,
rules)`` (the train step's compile enters it).
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
from typing import Any, Mapping, Sequence

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
    # Activations: the channels of the residual stream between blocks (models.blocks.RESIDUAL), whole on
    # every device for the same reason; its batch dim is ``batch``.
    ("act_embed", None),
)


def _axes_value(value, where: str):
    """A rule's mesh side: None, one axis name or a tuple of distinct names (a 1-tuple becomes the name)."""
    if value is None or isinstance(value, str):
        axes = () if value is None else (value,)
    elif isinstance(value, (list, tuple)) and all(isinstance(a, str) for a in value):
        axes = tuple(value)
    else:
        raise ValueError(f"{where}: expected a mesh axis, a list of them or null, got {value!r}")
    bad = [a for a in axes if a not in MESH_AXES]
    if bad:
        raise ValueError(f"{where}: unknown mesh axis {bad[0]!r}; expected one of {list(MESH_AXES)} or null")
    if len(set(axes)) != len(axes):
        raise ValueError(f"{where}: mesh axis repeated in {list(axes)}")
    return None if not axes else axes[0] if len(axes) == 1 else axes


def _rule_overrides(rules) -> tuple[tuple[str, Any], ...]:
    """``mesh.rules`` as a tuple of (logical name, mesh axes) pairs: from a mapping or a list of pairs."""
    if rules is None:
        return ()
    if isinstance(rules, Mapping):
        pairs = list(rules.items())
    elif isinstance(rules, (list, tuple)) and all(isinstance(r, (list, tuple)) and len(r) == 2 for r in rules):
        pairs = [tuple(r) for r in rules]
    else:
        raise ValueError(f"mesh.rules={rules!r}: expected [[logical_name, mesh_axis_or_null], ...] "
                         f"or a mapping {{logical_name: mesh_axis_or_null}}")
    known = [name for name, _ in RULES]
    out, seen = [], set()
    for name, axes in pairs:
        if name not in known:
            raise ValueError(f"mesh.rules: unknown logical axis {name!r}; expected one of {known}")
        if name in seen:
            raise ValueError(f"mesh.rules: logical axis {name!r} is given twice")
        seen.add(name)
        out.append((name, _axes_value(axes, f"mesh.rules[{name}]")))
    return tuple(out)


def rules_with(overrides=()) -> tuple[tuple[str, Any], ...]:
    """``RULES`` with the entries named in ``overrides`` (a ``mesh.rules`` value) replaced, order kept."""
    over = dict(_rule_overrides(overrides))
    return tuple((name, over.get(name, axes)) for name, axes in RULES)


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Mesh shape. ``data``/``fsdp``/``tensor`` are the axis sizes within one slice (ICI; ``-1`` for one
    of them = all remaining devices of a slice); ``dcn_*`` how many slices (multi-slice jobs, linked by the
    data-center network) each axis spans. Each mesh axis has size ICI x DCN: data=4, dcn_data=2 over two
    slices of 4 chips is a data axis of 8, whose halves talk over DCN. ``rules``: overrides of ``RULES``
    by logical name, ``[[embed, null], [batch, [data, fsdp]]]`` or ``{embed: null}``."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    dcn_data: int = 1
    dcn_fsdp: int = 1
    dcn_tensor: int = 1
    rules: Any = ()

    def __post_init__(self):
        for k in ("data", "fsdp", "tensor"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or (v < 1 and v != -1):
                raise ValueError(f"mesh.{k}={v!r}: expected an integer >= 1, or -1 for all remaining devices")
        for k in ("dcn_data", "dcn_fsdp", "dcn_tensor"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"mesh.{k}={v!r}: expected an integer >= 1 (slices along mesh axis {k[4:]})")
        object.__setattr__(self, "rules", _rule_overrides(self.rules))  # normalised: hashable, validated

    @property
    def dcn(self) -> tuple[int, int, int]:
        return (self.dcn_data, self.dcn_fsdp, self.dcn_tensor)


def mesh_shape(cfg: MeshConfig, n_devices: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(ICI shape, DCN shape) of ``cfg`` on ``n_devices``, ``-1`` resolved; the mesh is their product."""
    slices = math.prod(cfg.dcn)
    if n_devices % slices:
        raise ValueError(f"mesh: dcn_data x dcn_fsdp x dcn_tensor = {slices} slices do not divide the "
                         f"{n_devices} devices")
    per_slice = n_devices // slices
    where = " per slice" if slices > 1 else ""
    sizes = [cfg.data, cfg.fsdp, cfg.tensor]
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh: at most one axis may be -1, got {cfg}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if per_slice % known:
            raise ValueError(f"mesh: {per_slice} devices{where} are not divisible by {known} ({cfg})")
        sizes[sizes.index(-1)] = per_slice // known
    if math.prod(sizes) != per_slice:
        full = {a: s * d for a, s, d in zip(MESH_AXES, sizes, cfg.dcn)}
        raise ValueError(f"mesh {full} needs {math.prod(sizes) * slices} devices, {n_devices} are available")
    return tuple(sizes), cfg.dcn


def _slices(devices, attr: str) -> dict:
    groups: dict = {}
    for d in devices:
        groups.setdefault(getattr(d, attr), []).append(d)
    return groups


def device_grid(cfg: MeshConfig, devices: Sequence[Any]) -> np.ndarray:
    """The devices as an array of the mesh's shape, by ``jax.experimental.mesh_utils``: one slice with
    ``create_device_mesh`` (TPU: by the physical torus, axes split where needed; GPU: by device id; CPU and
    other devices without a physical topology: in the order given), several (``dcn_*`` > 1) with
    ``create_hybrid_device_mesh``. Slices are the devices' ``slice_index`` groups (TPU), or their processes
    (GPU hosts, or where the slice_index groups do not number dcn_data x dcn_fsdp x dcn_tensor)."""
    from jax.experimental import mesh_utils

    ici, dcn = mesh_shape(cfg, len(devices))
    n_slices = math.prod(dcn)
    attrs = [a for a in ("slice_index", "process_index") if all(hasattr(d, a) for d in devices)]
    if n_slices == 1:
        # a TPU mesh over several slices would put DCN links inside an ICI axis (GPU hosts keep today's layout)
        found = len(_slices(devices, "slice_index")) if devices[0].platform == "tpu" and "slice_index" in attrs else 1
        if found > 1:
            raise ValueError(f"mesh: the devices span {found} slices; set mesh.dcn_data / dcn_fsdp / dcn_tensor "
                             f"so their product is {found}")
        return mesh_utils.create_device_mesh(ici, list(devices), allow_split_physical_axes=True)
    counts = {a: len(_slices(devices, a)) for a in attrs}
    attr = next((a for a in attrs if counts[a] == n_slices), None)
    if attr is None:
        raise ValueError(f"mesh: dcn_data x dcn_fsdp x dcn_tensor = {n_slices} slices, but the devices form "
                         + (", ".join(f"{n} by {a}" for a, n in counts.items()) or "no slices (no slice_index)"))
    for key, group in _slices(devices, attr).items():
        if len(group) != math.prod(ici):
            raise ValueError(f"mesh: slice {key} ({attr}) has {len(group)} devices, the mesh needs "
                             f"data x fsdp x tensor = {math.prod(ici)} per slice")
    return mesh_utils.create_hybrid_device_mesh(ici, dcn, list(devices), process_is_granule=attr == "process_index",
                                                allow_split_physical_axes=True)


def make_mesh(cfg: MeshConfig = MeshConfig(), devices: Sequence[jax.Device] | None = None) -> Mesh:
    """The ``(data, fsdp, tensor)`` mesh of ``cfg`` over ``devices`` (default: all). Its rule table is
    ``rules_with(cfg.rules)``, passed alongside wherever something is placed."""
    devices = list(jax.devices() if devices is None else devices)
    return Mesh(device_grid(cfg, devices), MESH_AXES)


def _axis_size(mesh: Mesh, axes) -> int:
    if axes is None:
        return 1
    axes = (axes,) if isinstance(axes, str) else axes
    return int(np.prod([mesh.shape[a] for a in axes]))


def logical_to_mesh_spec(logical: P, shape: Sequence[int], mesh: Mesh, rules=None, unfit=None) -> P:
    """Map one logical PartitionSpec to a mesh PartitionSpec by ``rules`` (default ``RULES``). A dim
    whose mesh axes do not divide it, or are taken by an earlier dim, gets ``unfit``: None (replicated) for
    params, ``P.UNCONSTRAINED`` for activations (XLA decides)."""
    table = dict(RULES if rules is None else rules)
    out = []
    used: set[str] = set()
    for name, size in zip(tuple(logical) + (None,) * (len(shape) - len(logical)), shape):
        if name is None:
            out.append(None)
            continue
        if name not in table:
            raise KeyError(f"logical axis {name!r} has no sharding rule; add it to xdyna_jax.sharding.RULES")
        axes = table[name]
        flat = (axes,) if isinstance(axes, str) else tuple(axes or ())
        if axes is None:
            out.append(None)
        elif size % _axis_size(mesh, axes) or used & set(flat):
            out.append(unfit)
        else:
            out.append(axes)
            used |= set(flat)
    return P(*out)


def param_shardings(logical_specs, shapes, mesh: Mesh, rules=None):
    """Pytree of ``NamedSharding`` for params, from ``models.logical_axes`` and ``models.param_shapes``."""
    return jax.tree.map(
        lambda spec, s: NamedSharding(mesh, logical_to_mesh_spec(spec, s.shape, mesh, rules)),
        logical_specs, shapes, is_leaf=lambda x: isinstance(x, P))


def batch_sharding(mesh: Mesh, ndim: int, rules=None) -> NamedSharding:
    """Leading (batch) axis split over the data-parallel axes (the ``batch`` rule), the rest replicated."""
    table = dict(RULES if rules is None else rules)
    return NamedSharding(mesh, P(table["batch"], *([None] * (ndim - 1))))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def shard(tree, shardings):
    """Place a pytree that every process holds in full (params) onto devices with the given shardings."""
    return jax.tree.map(lambda x, s: jax.device_put(x, s), tree, shardings)


def host_local_to_global(batch, mesh: Mesh, rules=None):
    """Assemble each process's slice of a batch (leading axis) into global arrays split over the
    data-parallel axes: the multi-host input path (one process per host under ``jax.distributed``)."""
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(batch_sharding(mesh, np.ndim(x), rules), x), batch)


# --- activations ------------------------------------------------------------------------------------

_ACTIVE: contextvars.ContextVar = contextvars.ContextVar("xdyna_activation_sharding", default=None)


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules=None):
    """Within it, ``constrain`` pins activations onto ``mesh`` by ``rules`` (default ``RULES``).

    Enter it around the trace: the call of a freshly jitted function, or its ``.lower``. A function jitted
    and traced outside keeps its unconstrained trace (JAX's trace cache does not see this context)."""
    token = _ACTIVE.set((mesh, RULES if rules is None else tuple(rules)))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def constrain(x, logical: Sequence[str | None]):
    """``x`` with a sharding constraint from its logical dim names; ``x`` itself outside
    ``activation_sharding`` or on one device. Dims the mesh axes do not divide are left to XLA."""
    active = _ACTIVE.get()
    if active is None or active[0].size == 1:
        return x
    mesh, rules = active
    spec = logical_to_mesh_spec(P(*logical), x.shape, mesh, rules, unfit=P.UNCONSTRAINED)
    return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
