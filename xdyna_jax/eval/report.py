"""What ``python -m xdyna_jax.eval`` writes into ``--out``.

* ``metrics.json``: ``{<generated file name>: {metric: number}, ..., "mean": {...}}``; NaN is written as
  ``null`` (a metric that does not apply, e.g. FVD of a video shorter than 16 frames);
* ``report.md``: the protocol, a table of the main metrics (one row per video and the mean), per-joint PCK;
* ``details.json``: the protocol and, per video, every per-frame series and the per-joint PCK;
* ``plots/<stem>.png``: PSNR, SSIM, LPIPS and pose error over time;
* ``worst_frames.png``: a contact sheet of the worst frames (highest LPIPS, else lowest SSIM), driving frame
  above the generated one.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from xdyna_jax.extras import require

TABLE = (("frames", "frames", "{:.0f}"), ("l1", "L1", "{:.4f}"), ("psnr", "PSNR dB", "{:.2f}"),
         ("ssim", "SSIM", "{:.4f}"), ("lpips", "LPIPS", "{:.4f}"), ("fid_frames", "FD frames", "{:.2f}"),
         ("fvd", "FVD", "{:.1f}"), ("pose_pck", "PCK", "{:.3f}"), ("pose_joint_px", "joint px", "{:.1f}"),
         ("pose_iou", "skel IoU", "{:.3f}"), ("face_det_rate", "Face-Det", "{:.2f}"),
         ("face_expr", "expr", "{:.3f}"), ("flow_fg", "flow fg", "{:.2f}"), ("flow_bg", "flow bg", "{:.2f}"),
         ("flow_fg_drv", "drv fg", "{:.2f}"), ("flow_bg_drv", "drv bg", "{:.2f}"),
         ("ref_lpips", "ref LPIPS", "{:.4f}"))
PLOTS = (("psnr", "PSNR (dB)"), ("ssim", "SSIM"), ("lpips", "LPIPS"), ("pose_joint_px", "pose error (px)"))


def clean(x):
    """JSON-ready: numpy scalars/arrays to Python, NaN/inf to None."""
    if isinstance(x, dict):
        return {str(k): clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)):
        return [clean(v) for v in np.asarray(x).tolist()] if isinstance(x, np.ndarray) else [clean(v) for v in x]
    if isinstance(x, (np.integer, np.bool_)):
        return x.item()
    if isinstance(x, (float, np.floating)):
        return float(x) if math.isfinite(x) else None
    return x


def write_json(path: Path, data) -> None:
    path.write_text(json.dumps(clean(data), indent=1, allow_nan=False) + "\n")


def markdown(rows: dict[str, dict], protocol: dict, pck_joints: dict[str, dict]) -> str:
    cols = [c for c in TABLE if any(c[0] in r for r in rows.values())]
    lines = ["# Evaluation report", "", "## Protocol", ""]
    lines += [f"- **{k}**: {v}" for k, v in protocol.items()]
    lines += ["", "## Scores", "", "Higher is better for PSNR, SSIM, PCK, skeleton IoU and Face-Det; lower for "
              "L1, LPIPS, the Fréchet distances, joint px and expr. Flow: px per frame at 256 px; compare the "
              "generated (fg, bg) with the driving (drv fg, drv bg).", ""]
    lines.append("| video | " + " | ".join(c[1] for c in cols) + " |")
    lines.append("|---|" + "---:|" * len(cols))
    for name, row in rows.items():
        cells = []
        for key, _, fmt in cols:
            v = row.get(key)
            cells.append("–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else fmt.format(v))
        label = "**mean**" if name == "mean" else f"`{name}`"
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if pck_joints:
        joints = list(next(iter(pck_joints.values())))
        lines += ["", "## Per-joint PCK", "", "| video | " + " | ".join(joints) + " |",
                  "|---|" + "---:|" * len(joints)]
        for name, pj in pck_joints.items():
            lines.append(f"| `{name}` | " + " | ".join("–" if pj[j] is None else f"{pj[j]:.2f}" for j in joints)
                         + " |")
    lines += ["", "Per-frame curves: `plots/`; worst frames: `worst_frames.png`; per-frame values: `details.json`.", ""]
    return "\n".join(lines)


def plot_series(path: Path, name: str, series: dict) -> bool:
    """PSNR / SSIM / LPIPS / pose error over time; False when none of them was computed."""
    panels = [(k, label) for k, label in PLOTS if k in series]
    if not panels:
        return False
    mpl = require("matplotlib", "the report's plots")
    mpl.use("Agg")  # files only: no display
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 1.8 * len(panels)), sharex=True, squeeze=False)
    for ax, (k, label) in zip(axes[:, 0], panels):
        y = np.asarray(series[k], np.float64)
        ax.plot(np.arange(len(y)), y, marker=".", lw=1)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("compared frame")
    axes[0, 0].set_title(name)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return True


def contact_sheet(path: Path, worst: list, per_row: int = 6) -> bool:
    """``worst`` = [(name, badness, metric, value, frame, driving thumb, generated thumb)], worst first;
    False when empty."""
    if not worst:
        return False
    cv2 = require("cv2", "the report's contact sheet")
    tiles = []
    for name, _, metric, value, t, drv, gen in worst:
        tile = np.concatenate([drv, gen], axis=0)
        bar = np.full((34, tile.shape[1], 3), 255, np.uint8)
        for i, text in enumerate((Path(name).stem, f"#{t} {metric} {value:.3f}")):
            scale = 0.4
            while scale > 0.2 and cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] > tile.shape[1] - 4:
                scale -= 0.02  # shrink long names to the tile's width
            cv2.putText(bar, text, (2, 14 + 16 * i), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
        tiles.append(np.concatenate([bar, tile], axis=0))
    h = max(t.shape[0] for t in tiles)
    w = max(t.shape[1] for t in tiles)
    tiles = [np.pad(t, ((0, h - t.shape[0]), (0, w - t.shape[1]), (0, 0)), constant_values=255) for t in tiles]
    tiles += [np.full((h, w, 3), 255, np.uint8)] * (-len(tiles) % per_row)
    rows = [np.concatenate(tiles[i:i + per_row], axis=1) for i in range(0, len(tiles), per_row)]
    sheet = np.concatenate(rows, axis=0)
    title = np.full((22, sheet.shape[1], 3), 255, np.uint8)
    cv2.putText(title, "worst frames: driving (top) / generated (bottom)", (3, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                (0, 0, 0), 1, cv2.LINE_AA)
    if not cv2.imwrite(str(path), np.concatenate([title, sheet], axis=0)[..., ::-1]):
        raise OSError(f"{path}: OpenCV could not write the PNG")
    return True


def write_report(out: Path, results: dict, mean: dict, protocol: dict, worst_count: int = 12) -> list[Path]:
    """Write every output into the folder ``out``; returns the files written."""
    rows = {name: r.entry for name, r in results.items()}
    rows["mean"] = mean
    write_json(out / "metrics.json", rows)
    write_json(out / "details.json", {"protocol": protocol, "videos": {
        name: {"per_frame": r.series, "pck_per_joint": r.pck_per_joint} for name, r in results.items()}})
    pck = {name: r.pck_per_joint for name, r in results.items() if r.pck_per_joint}
    (out / "report.md").write_text(markdown(rows, protocol, pck))
    written = [out / "metrics.json", out / "report.md", out / "details.json"]
    (out / "plots").mkdir()
    for name, r in results.items():
        p = out / "plots" / f"{Path(name).stem}.png"
        if plot_series(p, name, r.series):
            written.append(p)
    worst = sorted(((name, *w) for name, r in results.items() for w in r.worst), key=lambda w: -w[1])
    if contact_sheet(out / "worst_frames.png", worst[:worst_count]):
        written.append(out / "worst_frames.png")
    return written
