"""One process of the two-process training test (``tests/test_training_mesh.py``).

Joins ``jax.distributed`` through train.py's own ``distributed_initialize`` (environment variables set by
the test), trains 2 steps with a checkpoint after each, then, in the same process (no recompile), asks for
3 steps on the same workdir: the second call restores step 2 from the shared checkpoint and continues.
A third call trains on without end until the test sends SIGTERM to one process: both must stop after
the same step, save it and return.
"""
import sys

workdir, overrides = sys.argv[1], sys.argv[2:]

import jax  # noqa: E402

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
import train  # noqa: E402

train.distributed_initialize(jax)
assert jax.process_count() == 2 and jax.device_count() == 8 and jax.local_device_count() == 4

from xdyna_jax.training import config as train_config  # noqa: E402
from xdyna_jax.training import loop  # noqa: E402
from xdyna_jax.world.source import make_source  # noqa: E402

for steps, save_every in ((2, 1), (3, 1), (10**6, 10**6)):
    run = train_config.load(train.DEFAULT_CONFIG, [*overrides, f"train.steps={steps}", f"train.save_every={save_every}"])
    loop.train(run, workdir, out=lambda line: print(f"process {jax.process_index()}: {line}", flush=True), source=make_source)
