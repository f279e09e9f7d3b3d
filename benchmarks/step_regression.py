"""The tiny training step of this tree against an earlier revision, measured in one run.

Runs ``train_bench.py --sections tiny`` of a git revision (checked out in a temporary worktree, its own
package imported from there) and of this tree, alternating ``--rounds`` times so that a load change on a
shared machine hits both, and prints the median step time of each and the ratio (this tree / the revision).
Example (the baseline of issue 25, the commit before blockwise attention, remat policies and activation
constraints landed):
  python benchmarks/step_regression.py --against a48d35d --rows full:off full:on --rounds 3
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROW = re.compile(r"^\| (\w+) \| (\w+) \| (\w+) \| ([\d.]+) \| ([\d.]+) \|")


def step_times(tree: Path, rows, steps: int, warmup: int) -> dict:
    """{stage:remat: median step seconds} of ``train_bench.py --sections tiny`` run from ``tree``."""
    env = dict(os.environ, PYTHONPATH=str(tree))  # that tree's xdyna_jax, not the installed one
    where = subprocess.run([sys.executable, "-c", "import xdyna_jax; print(xdyna_jax.__file__)"], env=env,
                           cwd=tree, capture_output=True, text=True, check=True).stdout.strip()
    if not Path(where).resolve().is_relative_to(tree.resolve()):
        raise RuntimeError(f"{tree}: python imports xdyna_jax from {where}, not from that tree")
    cmd = [sys.executable, str(tree / "benchmarks" / "train_bench.py"), "--sections", "tiny", "--tiny", *rows,
           "--steps", str(steps), "--warmup", str(warmup)]
    out = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True, check=True).stdout
    found = {f"{m[1]}:{m[2]}": float(m[5]) for m in map(ROW.match, out.splitlines()) if m}
    missing = [r for r in rows if r not in found]
    if missing:
        raise RuntimeError(f"{tree}: no table row for {missing} in:\n{out[-2000:]}")
    return found


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--against", required=True, help="the baseline git revision")
    ap.add_argument("--rows", nargs="+", default=["full:off", "full:on"], help="tiny rows, stage:remat")
    ap.add_argument("--rounds", type=int, default=3, help="alternating runs of each tree (median over rounds)")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args(argv)
    rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", "--quiet", f"{args.against}^{{commit}}"],
                         capture_output=True, text=True)
    if rev.returncode != 0:
        ap.error(f"--against {args.against}: not a commit of {ROOT}")
    with tempfile.TemporaryDirectory(prefix="step_regression_") as d:
        base = Path(d) / "base"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(base), args.against],
                       check=True, capture_output=True)
        try:
            runs = {"base": [], "this": []}
            for i in range(args.rounds):
                for name, tree in (("base", base), ("this", ROOT)):
                    runs[name].append(step_times(tree, args.rows, args.steps, args.warmup))
                    print(f"round {i + 1} {name}: {runs[name][-1]}", flush=True)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base)], check=False)
    print(f"\n| row | {args.against} step s | this tree step s | × |\n|---|---:|---:|---:|")
    for row in args.rows:
        b = statistics.median(r[row] for r in runs["base"])
        t = statistics.median(r[row] for r in runs["this"])
        print(f"| {row} | {b:.3f} | {t:.3f} | {t / b:.2f} |")


if __name__ == "__main__":
    main()
