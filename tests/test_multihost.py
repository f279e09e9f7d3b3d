"""Multi-host: two local processes under ``jax.distributed`` run the FSDP-sharded UNet forward."""
import os
import socket
import subprocess
import sys
from pathlib import Path

from helpers import cpu_env

WORKER = Path(__file__).with_name("multihost_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_match_the_unsharded_forward(tmp_path):
    import multihost_worker

    ref = tmp_path / "ref.npy"
    multihost_worker.reference(ref)  # the unsharded forward, compiled once here rather than in each process
    port = str(_free_port())
    env = cpu_env(None)  # the worker sets its device count
    env["PYTHONPATH"] = os.pathsep.join([str(WORKER.parents[1]), env.get("PYTHONPATH", "")])
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(i), port, str(ref)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outs = []
    for p in procs:
        try:
            outs.append(p.communicate(timeout=600)[0])
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
    for i, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"process {i} failed:\n{out[-3000:]}"
        assert f"process {i}: 4 shards" in out, out[-3000:]
