"""Eval room, motion and face control and dynamics: PCK / joint distance / skeleton overlap against
hand-computed values, the similarity-aligned expression distance against a scipy least-squares fit, face
detection and person masks on the example images, optical flow against known translations and a moving
background against a frozen one."""
from __future__ import annotations

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")

from xdyna_jax.eval import pose as P  # noqa: E402

# ---------------------------------------------------------------- pose accuracy


def _body(xy, conf=1.0):
    b = np.zeros((18, 3), np.float32)
    b[:, :2] = xy
    b[:, 2] = conf
    return b


def test_pck_and_joint_distance_hand_computed():
    xy = np.zeros((18, 2))
    xy[:14, 0] = np.linspace(100, 200, 14)  # bounding box 100 wide, 200 high: person size 200
    xy[:14, 1] = np.linspace(50, 250, 14)
    drv = _body(xy)
    drv[14:, 2] = 0.0  # eyes and ears not found: not counted
    gen = drv.copy()
    gen[0, 0] += 10.0                      # hit (threshold 0.1 * 200 = 20 px)
    gen[1, 1] += 19.9                      # hit
    gen[2, 0] += 25.0                      # miss: too far
    gen[3, 2] = 0.0                        # miss: not found in the generated frame
    gen[3, :2] = np.nan
    empty = _body(np.nan, conf=0.0)        # a driving frame without a body counts nothing
    hits, counted = P.pck(np.stack([gen, gen]), np.stack([drv, empty]), alpha=0.1)
    assert counted.sum() == 14 and hits.sum() == 12
    assert not hits[0, 2] and not hits[0, 3] and hits[0, 1]
    px = P.joint_px(np.stack([gen, gen]), np.stack([drv, empty]))
    assert px[0] == pytest.approx((10.0 + 19.9 + 25.0) / 13, rel=1e-5) and np.isnan(px[1])
    # a stricter threshold: 0.05 * 200 = 10 px keeps joint 0 (exactly 10 px) and drops joint 1
    hits, _ = P.pck(gen[None], drv[None], alpha=0.05)
    assert hits.sum() == 11 and hits[0, 0] and not hits[0, 1]


def test_pose_scores_summary_and_skeleton_overlap():
    from xdyna_jax.data.pose import Poses

    xy = np.stack([np.linspace(40, 90, 18), np.linspace(20, 110, 18)], 1)
    body = _body(xy)[None]

    def poses(b):
        t = len(b)
        return Poses(b, np.zeros((t, 2, 21, 3), np.float32), np.zeros((t, 468, 3), np.float32), 128, 128)

    same = P.pose_scores(poses(body), poses(body))
    assert same["pck"] == 1.0 and same["joint_px"][0] == 0 and same["skeleton_iou"][0] == 1.0
    far = body.copy()
    far[..., 0] -= 35.0                      # the whole skeleton moved left, no overlap after 9 px dilation
    moved = P.pose_scores(poses(far), poses(body))
    assert moved["pck"] == 0.0 and moved["joint_px"][0] == pytest.approx(35.0)
    assert moved["skeleton_iou"][0] == 0.0 and moved["pck_per_joint"]["neck"] == 0.0


def test_mask_iou_and_joint_distance_hand_computed():
    from xdyna_jax.data.render import render_frame
    from xdyna_jax.eval.score import joint_distance, mask_iou

    a = np.zeros((40, 40, 3), np.uint8)
    b = a.copy()
    a[5:15, 5:15] = 255
    b[10:20, 10:20] = 255
    assert mask_iou(a, b, dilate=1) == pytest.approx(25 / 175)
    assert mask_iou(a, a, dilate=1) == 1.0 and mask_iou(a * 0, b * 0) == 1.0
    xy = np.stack([np.linspace(40, 160, 18), np.linspace(30, 170, 18)], 1)
    ra, rb = render_frame(_body(xy), None, 200, 200), render_frame(_body(xy + [6.0, 8.0]), None, 200, 200)
    d, n = joint_distance(ra, rb)
    assert n >= 10 and d == pytest.approx(10.0, abs=1.0)


# ---------------------------------------------------------------- face


def _similarity(pts, scale, angle_deg, shift):
    a = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    return scale * pts @ rot.T + shift


def _face(xy):
    f = np.zeros((468, 3))
    f[:, :2] = xy
    f[:, 2] = 1.0
    return f


def test_similarity_alignment_removes_pose_and_scale_only():
    from xdyna_jax.eval.face import expression_distance, similarity_align

    rng = np.random.default_rng(0)
    drv = rng.normal(0, 30, (468, 2)) + 200
    gen = _similarity(drv, 0.6, 25.0, [40.0, -15.0])
    np.testing.assert_allclose(similarity_align(gen, drv), drv, atol=1e-8)
    assert expression_distance(_face(gen)[None], _face(drv)[None])[0] == pytest.approx(0.0, abs=1e-9)
    mirrored = drv * [-1, 1]                  # a mirror image is not a similarity: it must not align away
    assert expression_distance(_face(mirrored)[None], _face(drv)[None])[0] > 0.1
    missing = _face(gen)
    missing[:, 2] = 0
    assert np.isnan(expression_distance(missing[None], _face(drv)[None])[0])


def test_expression_distance_matches_a_scipy_least_squares_fit():
    from scipy.optimize import least_squares

    from xdyna_jax.eval.face import EYE_OUTER, expression_distance

    rng = np.random.default_rng(1)
    drv = rng.normal(0, 25, (468, 2)) + [256, 300]
    drv[EYE_OUTER[0]], drv[EYE_OUTER[1]] = [226, 280], [286, 280]      # inter-ocular distance 60 px
    moved = drv.copy()
    moved[rng.choice(468, 40, replace=False)] += [0.0, 6.0]              # "mouth opens": 40 points move down
    gen = _similarity(moved, 1.4, -12.0, [-30.0, 10.0])

    def residual(p):
        return (_similarity(gen, p[0], p[1], p[2:]) - drv).ravel()

    fit = least_squares(residual, x0=[1.0, 0.0, 0.0, 0.0], xtol=1e-12, ftol=1e-12, gtol=1e-12)
    aligned = _similarity(gen, fit.x[0], fit.x[1], fit.x[2:])
    want = np.linalg.norm(aligned - drv, axis=1).mean() / 60.0
    got = expression_distance(_face(gen)[None], _face(drv)[None])[0]
    assert got == pytest.approx(want, rel=1e-5) and got > 0.01
    bigger = drv.copy()
    bigger[np.argsort(drv[:, 1])[-40:]] += [0.0, 12.0]
    assert expression_distance(_face(bigger)[None], _face(drv)[None])[0] > got  # a larger change scores more


def test_face_detection_finds_the_reference_face_and_none_in_a_blank_frame(examples_dir):
    pytest.importorskip("mediapipe")
    from xdyna_jax.data.files import read_image
    from xdyna_jax.eval.face import detect_faces

    ref = read_image(examples_dir / "reference_1.png")
    assert detect_faces(np.stack([ref, np.full_like(ref, 128)])).tolist() == [True, False]


# ---------------------------------------------------------------- flow and dynamics


def _texture(h, w, seed=0):
    rng = np.random.default_rng(seed)
    t = cv2.GaussianBlur(rng.uniform(0, 255, (h, w)).astype(np.float32), (0, 0), 2.0)
    t = (t - t.min()) / (t.max() - t.min()) * 255
    return np.repeat(t.astype(np.uint8)[..., None], 3, -1)


def _moving(tex, n, dx, dy, size=256):
    """``n`` windows of ``tex`` whose content moves by (dx, dy) px per frame."""
    return np.stack([tex[40 - dy * t:40 - dy * t + size, 40 - dx * t:40 - dx * t + size] for t in range(n)])


def test_flow_measures_a_known_translation():
    from xdyna_jax.eval.flow import flow_magnitudes

    tex = _texture(340, 340)
    mag = flow_magnitudes(_moving(tex, 4, 2, 1))             # 256 px frames: flow size = frame size
    assert mag.shape == (3, 256, 256)
    assert float(np.median(mag[:, 30:-30, 30:-30])) == pytest.approx(np.hypot(2, 1), rel=0.1)
    assert float(flow_magnitudes(_moving(tex, 4, 0, 0)).mean()) < 0.02


def test_frozen_background_scores_clearly_lower_than_a_moving_one():
    from xdyna_jax.eval.flow import flow_magnitudes, region_means

    tex, person = _texture(340, 340), _texture(340, 340, seed=1)
    masks = np.zeros((5, 256, 256), bool)
    masks[:, 80:180, 100:160] = True
    still_bg, moving_bg = _moving(tex, 5, 0, 0), _moving(tex, 5, 2, 0)
    dancing = _moving(person, 5, 0, 2)[:, 80:180, 100:160]  # the "person" moves in both videos
    for video in (still_bg, moving_bg):
        video[:, 80:180, 100:160] = dancing
    still, moving = (region_means(flow_magnitudes(v), masks) for v in (still_bg, moving_bg))
    assert moving["bg"].mean() > 1.5 and still["bg"].mean() < 0.1 * moving["bg"].mean()
    assert still["fg"].mean() > 1.0 and moving["fg"].mean() > 1.0
    none = region_means(flow_magnitudes(still_bg), None)    # no person: all background, fg undefined
    assert np.isnan(none["fg"]).all() and np.isfinite(none["bg"]).all()


def test_dynamics_with_segmentation(examples_dir):
    pytest.importorskip("mediapipe")
    from xdyna_jax.data.video import read_video
    from xdyna_jax.eval.flow import dynamics, person_masks

    frame = read_video(examples_dir / "driving_1.mp4", max_frames=1)
    mask = person_masks(frame)[0]
    h, w = mask.shape
    assert 0.05 < mask.mean() < 0.4 and mask[h // 2, w // 2]        # the dancer stands in the middle
    assert not person_masks(np.full((1, 256, 256, 3), 128, np.uint8)).any()
    tex = _texture(340, 340)
    moving, frozen = dynamics(_moving(tex, 4, 2, 0)), dynamics(_moving(tex, 4, 0, 0))
    assert np.nanmean(moving["bg"]) > 1.5 and np.nanmean(frozen["bg"]) < 0.05
