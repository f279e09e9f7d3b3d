"""Helpers shared by the benchmarks: fake CPU devices, abstract arrays, compiled memory, the device line.

Import this before jax when a benchmark wants fake devices (XLA reads the device count once, when the
backend starts); the jax imports below are inside the functions for that reason.
"""
from __future__ import annotations

import datetime
import os
import sys

GiB = 2.0 ** 30


def fake_cpu_devices(n: int = 8) -> bool:
    """Ask XLA:CPU for ``n`` host devices unless the caller already chose a count. False when jax is
    already imported (too late: the caller keeps the devices it has, e.g. the tests' 8)."""
    if "jax" in sys.modules:
        return False
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={n}".strip()
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    return True


def abstract(shape, dtype, sharding=None):
    import jax

    return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)


def memory(compiled) -> dict:
    """XLA's ``memory_analysis()`` of a compiled program, per device, in bytes; ``peak`` = arguments +
    outputs + temporaries - aliased (donated inputs reused as outputs are counted once)."""
    m = compiled.memory_analysis()
    out = {k: getattr(m, f"{k}_size_in_bytes", 0) for k in ("argument", "output", "temp", "alias")}
    out["peak"] = out["argument"] + out["output"] + out["temp"] - out["alias"]
    return out


def device_line() -> str:
    import jax

    d = jax.devices()[0]
    return (f"device: {jax.device_count()} x {d.device_kind} ({jax.default_backend()}), {os.cpu_count()} host cores, "
            f"jax {jax.__version__}, {datetime.date.today()}")
