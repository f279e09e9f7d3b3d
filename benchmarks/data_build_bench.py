"""Dataset build throughput: the local build against ``build --beam`` on N DirectRunner worker processes.

Same inputs, one run: the example driving videos (``../shared/data/xdyna_examples/driving_{1,2,3}.mp4``,
linked ``--videos`` times in turn), the first ``--frames`` frames of each (``--stride`` apart) at their full
896x512, with the real conditions (MediaPipe pose, the skeleton render, S-Face) and JPEG/PNG encoding:
the whole per-video work of ``python -m xdyna_jax.data build``. Prints videos/s of each execution, their
ratio, and the local seconds per video and per frame (the figure docs/DATA.md's at-scale cost uses), and
checks that both wrote the same examples.

    python benchmarks/data_build_bench.py [--videos 6] [--frames 24] [--workers 2]
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT.parent / "shared" / "data" / "xdyna_examples"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--videos", type=int, default=6, help="input videos (the 3 examples, linked in turn)")
    p.add_argument("--frames", type=int, default=24, help="frames kept per video")
    p.add_argument("--stride", type=int, default=1, help="frame_stride of the build")
    p.add_argument("--workers", type=int, default=2, help="DirectRunner worker processes of the Beam build")
    p.add_argument("--examples", type=Path, default=EXAMPLES, help="folder with driving_1..3.mp4")
    args = p.parse_args(argv)

    from xdyna_jax.data import datasets as D
    from xdyna_jax.data.beam import BeamPipeline

    sources = [args.examples / f"driving_{i}.mp4" for i in (1, 2, 3)]
    missing = [str(s) for s in sources if not s.is_file()]
    if missing:
        print(f"error: example videos not found: {missing} (give --examples)", file=sys.stderr)
        return 2
    settings = D.BuildSettings(max_frames=args.frames, frame_stride=args.stride)
    options = f"--direct_num_workers={args.workers} --direct_running_mode=multi_processing"
    with tempfile.TemporaryDirectory(prefix="data_build_bench-") as tmp:
        tmp = Path(tmp)
        (tmp / "human").mkdir()
        for n in range(args.videos):
            (tmp / "human" / f"v{n:03d}.mp4").symlink_to(sources[n % 3])
        rows = []
        for name, out, pipeline in (("local (one process)", "local", None),
                                    (f"--beam, DirectRunner, {args.workers} processes", "beam", BeamPipeline(options))):
            t0 = time.perf_counter()
            with contextlib.redirect_stdout(sys.stderr):  # TFDS prints its own status lines
                report = D.build_dataset(tmp / out, tmp / "human", settings=settings, pipeline=pipeline)
            seconds = time.perf_counter() - t0
            assert not report.skipped and report.videos["human"] == args.videos, report.summary()
            rows.append((name, seconds, report))
        same = _same_examples(D, tmp / "local", tmp / "beam")

    base = rows[0][1]
    frames = rows[0][2].frames
    print(f"device: CPU, {os.cpu_count()} cores ({platform.processor() or platform.machine()}), "
          f"{datetime.date.today()}")
    print(f"command: python benchmarks/data_build_bench.py --videos {args.videos} --frames {args.frames} "
          f"--stride {args.stride} --workers {args.workers}")
    print(f"input: {args.videos} videos x {args.frames} frames (896x512, stride {args.stride}) = {frames} frames; "
          f"conditions: MediaPipe pose + render + S-Face; frames JPEG q95, conditions PNG")
    print("| build | s | videos/s | frames/s | x local |")
    print("|---|---:|---:|---:|---:|")
    for name, seconds, _ in rows:
        print(f"| {name} | {seconds:.1f} | {args.videos / seconds:.3f} | {frames / seconds:.2f} | "
              f"{base / seconds:.2f} |")
    print(f"local per video: {base / args.videos:.2f} s; per frame: {base / frames:.3f} s")
    print(f"same examples (keys and stored bytes): {same}")
    return 0 if same else 1


def _same_examples(D, a: Path, b: Path) -> bool:
    def load(out):
        got = {}
        for split, src in D.open_splits(out).items():
            for i in range(len(src)):
                ex = src[i]
                got[split, ex["video_id"].decode(), int(ex["segment"])] = {
                    k: (list(v) if getattr(v, "dtype", None) == object else v.tolist() if hasattr(v, "tolist") else v)
                    for k, v in ex.items()}
        return got
    return load(a) == load(b)


if __name__ == "__main__":
    sys.exit(main())
