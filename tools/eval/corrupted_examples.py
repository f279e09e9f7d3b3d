"""Corrupted copies of the X-Dyna example driving videos, for the measured table of ``docs/EVAL.md``.

Writes ``OUT/generated/driving_N_<blur|noise|shift|frozen>.mp4`` and ``OUT/driving/...`` (the clean clip
under each name; ``xdyna_jax/eval/corrupt.py``), then score them with the eval CLI:

    PYTHONPATH=. .venv/bin/python tools/eval/corrupted_examples.py --out /tmp/corrupt --frames 32 --stride 4
    PYTHONPATH=. .venv/bin/python -m xdyna_jax.eval --generated /tmp/corrupt/generated \
        --driving /tmp/corrupt/driving --out /tmp/corrupt/eval
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from xdyna_jax.eval.corrupt import write_corrupted_copies  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--examples", type=Path, default=ROOT.parent / "shared" / "data" / "xdyna_examples")
    p.add_argument("--videos", type=int, nargs="+", default=[1, 2], help="which driving_N.mp4")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--frames", type=int, default=32)
    p.add_argument("--stride", type=int, default=4)
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"))
    args = p.parse_args()
    names = write_corrupted_copies([args.examples / f"driving_{n}.mp4" for n in args.videos], args.out,
                                   args.frames, args.stride, tuple(args.size) if args.size else None)
    print(f"{len(names)} pairs in {args.out}/generated and {args.out}/driving")


if __name__ == "__main__":
    main()
