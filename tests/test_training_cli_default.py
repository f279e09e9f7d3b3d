"""``python train.py`` with its defaults: the run ends with its summary line and its loss falls (at a shortened
length). A file of its own: it compiles the tiny networks' full-stage step (minutes on 2 cores), so pytest-xdist's
--dist loadfile can run it beside test_training_cli.py's other subprocess runs instead of after them."""
from __future__ import annotations

import subprocess
import sys

import numpy as np

from helpers import REPO_ROOT, cpu_env, records

# one device, the same flags as a user's run (as test_training_cli.py)
ENV = cpu_env(1)


def test_default_run_loss_falls(tmp_path):
    """``python train.py`` (configs/train_tiny.yaml, model init, synthetic data), shortened."""
    done = subprocess.run([sys.executable, str(REPO_ROOT / "train.py"), "--workdir", str(tmp_path), "train.steps=60"],
                          env=ENV, capture_output=True, text=True, timeout=1500)
    assert done.returncode == 0, done.stderr[-2000:]
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("loss: first") and "checkpoints/60" in last
    losses = [r["loss"] for _, r in sorted(records(tmp_path).items())]
    first, final = np.mean(losses[:15]), np.mean(losses[-15:])
    assert final < 0.8 * first, (first, final)
