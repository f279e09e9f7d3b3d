"""Meshes from ``jax.experimental.mesh_utils``: one slice (``create_device_mesh``) and several
(``create_hybrid_device_mesh``, ``mesh.dcn_*``), the ICI x DCN shape arithmetic and its named errors.
Multi-slice layouts are checked on stand-in device objects carrying ``slice_index``/``process_index``."""
from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from xdyna_jax.sharding import MeshConfig, device_grid, make_mesh, mesh_shape

needs8 = pytest.mark.skipif(jax.device_count() < 8, reason="needs XLA_FLAGS=--xla_force_host_platform_device_count=8")


@dataclasses.dataclass(frozen=True)
class FakeDevice:
    """What mesh_utils reads of a device; a CPU platform has no physical topology (laid out in order)."""

    id: int
    slice_index: int
    process_index: int = 0
    platform: str = "cpu"
    device_kind: str = "cpu"


@dataclasses.dataclass(frozen=True)
class HostDevice:
    """A device with no ``slice_index`` (GPU hosts): its process is its slice."""

    id: int
    process_index: int
    platform: str = "cpu"
    device_kind: str = "cpu"


def fake_slices(*sizes, platform="cpu"):
    out, i = [], 0
    for s, n in enumerate(sizes):
        out += [FakeDevice(i + k, s, platform=platform) for k in range(n)]
        i += n
    return out


def ids(grid):
    return np.vectorize(lambda d: d.id)(grid)


def slice_of(grid):
    return np.vectorize(lambda d: d.slice_index)(grid)


@needs8
def test_one_slice_is_todays_layout_on_cpu():
    devs = jax.devices()[:8]
    for cfg, shape in ((MeshConfig(data=2, fsdp=4), (2, 4, 1)), (MeshConfig(data=1, fsdp=4, tensor=2), (1, 4, 2)),
                       (MeshConfig(data=-1, tensor=2), (4, 1, 2))):
        mesh = make_mesh(cfg, devs)
        assert mesh.devices.shape == shape
        assert (mesh.devices == np.asarray(devs).reshape(shape)).all()  # CPU: no topology, the order given


def test_shape_arithmetic_ici_times_dcn():
    assert mesh_shape(MeshConfig(data=-1, dcn_data=2), 16) == ((8, 1, 1), (2, 1, 1))
    assert mesh_shape(MeshConfig(data=2, fsdp=-1, dcn_fsdp=2), 16) == ((2, 4, 1), (1, 2, 1))
    assert mesh_shape(MeshConfig(data=1, fsdp=2, tensor=2, dcn_data=2, dcn_fsdp=2), 16) == ((1, 2, 2), (2, 2, 1))
    assert mesh_shape(MeshConfig(), 8) == ((8, 1, 1), (1, 1, 1))


@pytest.mark.parametrize("cfg, n, match", [
    (MeshConfig(dcn_data=3), 8, r"dcn_data x dcn_fsdp x dcn_tensor = 3 slices do not divide the 8 devices"),
    (MeshConfig(data=3, fsdp=1, dcn_data=2), 8, r"mesh \{'data': 6, 'fsdp': 1, 'tensor': 1\} needs 6 devices, 8 are"),
    (MeshConfig(data=-1, fsdp=3, dcn_fsdp=2), 8, r"4 devices per slice are not divisible by 3"),
    (MeshConfig(data=-1, fsdp=-1), 8, "at most one axis may be -1"),
])
def test_shape_errors_are_named(cfg, n, match):
    with pytest.raises(ValueError, match=match):
        mesh_shape(cfg, n)


@pytest.mark.parametrize("field, value", [("dcn_data", 0), ("dcn_tensor", -1), ("fsdp", 0), ("data", -2),
                                          ("dcn_fsdp", True)])
def test_bad_sizes_are_refused_naming_the_field(field, value):
    with pytest.raises(ValueError, match=f"mesh.{field}="):
        MeshConfig(**{field: value})


def test_hybrid_mesh_puts_each_slice_in_one_block():
    devs = fake_slices(4, 4)
    grid = device_grid(MeshConfig(data=1, fsdp=4, dcn_data=2), devs)  # data 1 x 2 slices, fsdp 4 within each
    assert grid.shape == (2, 4, 1)
    assert (slice_of(grid)[:, :, 0] == [[0] * 4, [1] * 4]).all()  # the data axis crosses DCN, fsdp stays on ICI
    grid = device_grid(MeshConfig(data=2, fsdp=2, dcn_fsdp=2), devs)
    assert grid.shape == (2, 4, 1)
    assert (slice_of(grid)[:, :, 0] == [[0, 0, 1, 1], [0, 0, 1, 1]]).all()
    assert sorted(ids(grid).ravel()) == list(range(8))


def test_hybrid_mesh_by_process_where_devices_have_no_slice_index():
    devs = [HostDevice(i, i // 4) for i in range(8)]
    grid = device_grid(MeshConfig(data=1, fsdp=4, dcn_data=2), devs)
    assert (np.vectorize(lambda d: d.process_index)(grid)[:, :, 0] == [[0] * 4, [1] * 4]).all()
    # one slice_index for all (GPU hosts): the processes are the slices
    devs = [FakeDevice(i, 0, process_index=i // 4) for i in range(8)]
    grid = device_grid(MeshConfig(data=1, fsdp=4, dcn_data=2), devs)
    assert (np.vectorize(lambda d: d.process_index)(grid)[:, :, 0] == [[0] * 4, [1] * 4]).all()
    # ... and a GPU-style mesh of several hosts with no dcn_* stays one mesh in the given order
    assert (ids(device_grid(MeshConfig(data=2, fsdp=4), devs)) == np.arange(8).reshape(2, 4, 1)).all()


@pytest.mark.parametrize("cfg, devs, match", [
    (MeshConfig(data=1, fsdp=2, dcn_data=4), fake_slices(4, 4),
     r"dcn_data x dcn_fsdp x dcn_tensor = 4 slices, but the devices form 2 by slice_index, 1 by process_index"),
    (MeshConfig(data=-1, fsdp=4), fake_slices(4, 4, platform="tpu"), r"the devices span 2 slices; set mesh.dcn_data"),
    (MeshConfig(data=1, fsdp=-1, dcn_data=2), fake_slices(3, 5), r"slice 0 \(slice_index\) has 3 devices, the mesh "
                                                                 r"needs data x fsdp x tensor = 4 per slice"),
])
def test_slice_errors_are_named(cfg, devs, match):
    with pytest.raises(ValueError, match=match):
        device_grid(cfg, devs)


@needs8
def test_dcn_on_one_cpu_process_is_refused():
    with pytest.raises(ValueError, match=r"= 2 slices, but the devices form 1 by process_index"):
        make_mesh(MeshConfig(data=-1, dcn_data=2), jax.devices()[:8])
