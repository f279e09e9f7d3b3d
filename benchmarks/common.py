"""Helpers shared by the benchmarks: fake CPU devices, abstract arrays, compiled memory, the device line.

Import this before jax when a benchmark wants fake devices (XLA reads the device count once, when the
backend starts); the jax imports below are inside the functions for that reason.
"""
from __future__ import annotations

import datetime
import os
import re
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


# XLA:CPU's memory analysis stands for a GPU's or TPU's only with three of its defaults changed (measured
# 2026-12-07, RESULTS.md "What XLA:CPU's memory analysis measured"):
#  - its default scheduler orders for concurrency; GPU and TPU compilers schedule for memory;
#  - early in its pipeline it expands the optimization barriers that jax.checkpoint places on a block's
#    recomputation (pass cse_barrier_expander), and a later CSE merges the recomputation back into the
#    forward: remat then keeps every activation (16 remat'd blocks: 280 MB of temporaries with the pass,
#    84 MB without it, 400 MB with no remat). Skipping the pass changes no value;
#  - it computes bf16 dots and convolutions in f32 (pass float-normalization-bf16), so every bf16
#    activation is held in f32 where a GPU or TPU keeps bf16. Without the pass XLA:CPU cannot emit the
#    code (it has no bf16 dot), but its buffer assignment is written before that: ``compile_in_child``
#    reads the figures from there.
CPU_AS_CHIP_SCHEDULER = "--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"
KEEP_REMAT = ("cse_barrier_expander",)
KEEP_BF16 = ("float-normalization-bf16",)


def cpu_as_chip_flags(skip_passes=()) -> str:
    """XLA_FLAGS text for a CPU compile whose memory figures stand for a chip's: the memory scheduler and
    remat kept, plus ``skip_passes`` in XLA's one ``--xla_disable_hlo_passes`` list (a second such flag
    would replace the first)."""
    return f"{CPU_AS_CHIP_SCHEDULER} --xla_disable_hlo_passes={','.join((*KEEP_REMAT, *skip_passes))}"


def assignment_memory(path) -> dict:
    """``memory()``'s figures from XLA's buffer-assignment dump (``*-buffer-assignment.txt``), the table
    ``memory_analysis()`` sums: arguments = parameter allocations, outputs = maybe-live-out allocations,
    aliased = both, temporaries = the preallocated temp allocation (thread-local scratch is not counted)."""
    m = dict(argument=0, output=0, temp=0, alias=0)
    with open(path) as f:
        for line in f:
            if line.startswith("allocation "):
                head = line.split(":", 1)[1]
                size = int(re.search(r"size (\d+)", head).group(1))
                param, live = ", parameter " in head, "maybe-live-out" in head
                m["argument"] += size * param
                m["output"] += size * live
                m["alias"] += size * (param and live)
                m["temp"] += size * ("preallocated-temp" in head)
    m["peak"] = m["argument"] + m["output"] + m["temp"] - m["alias"]
    return m


def compile_in_child(cmd: list, module_re: str, name: str, timeout_min: float, skip_passes=(),
                     on_start=lambda: None) -> tuple[dict, float]:
    """(memory, seconds) of the program that ``cmd`` (a child process) compiles, read from XLA's buffer
    assignment of the first module matching ``module_re``, dumped under ``cpu_as_chip_flags(skip_passes)``;
    the child is stopped once that is written. Why a child: the flags must be set before XLA starts; code
    generation may fail after the assignment (no bf16 dot without float-normalization-bf16) or take long
    (on the sharded full-size step, XLA:CPU's thunk graph pruning grows with the cube of the number of
    collectives: past 20 minutes); and each compile's host memory stays out of the caller."""
    import subprocess
    import tempfile
    import time
    from pathlib import Path

    with tempfile.TemporaryDirectory(prefix="xla_dump_") as d:
        env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_dump_to={d} "
                   f"--xla_dump_hlo_module_re={module_re} {cpu_as_chip_flags(skip_passes)}")
        t0, wall0 = time.perf_counter(), time.time()
        with open(Path(d) / "stderr.txt", "w") as err:
            child = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
        try:
            on_start()  # the caller's own work overlaps the child's compile
            while True:  # the memory-usage report is written right after the buffer assignment
                done = list(Path(d).glob("*-memory-usage-report.txt"))
                if done:  # its write time, not when this loop saw it (on_start may have kept it busy)
                    secs = done[0].stat().st_mtime - wall0
                    break
                if time.perf_counter() - t0 > 60 * timeout_min:
                    raise TimeoutError(f"{name}: no buffer assignment within {timeout_min:g} min")
                if child.poll() is not None:
                    raise RuntimeError(f"{name}: the child compile exited {child.returncode} without a buffer "
                                       f"assignment:\n{(Path(d) / 'stderr.txt').read_text()[-3000:]}")
                time.sleep(1)
            time.sleep(2)
            (path,) = Path(d).glob("*cpu_after_optimizations-buffer-assignment.txt")
            return assignment_memory(path), secs
        finally:
            child.kill()
            child.wait()


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
