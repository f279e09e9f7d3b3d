"""The tiny world: a procedural stand-in for X-Dyna's human + natural-scene video data.

A clip is a pure function of ``(seed, split, index)``. What it draws:

* a **background** of one of four kinds (``BACKGROUNDS``): ``water`` (bands of colour flowing along a
  direction, rippled), ``flicker`` (a still pattern under a light whose brightness and warm/cool tint
  oscillate, with a flickering light spot), ``clouds`` (a smooth noise field drifting over a sky
  gradient) and ``still`` (a textured pattern that does not move). The first three are the "lively"
  backgrounds whose motion X-Dyna claims to keep; ``still`` teaches that not everything moves;
* a **figure** (absent in scene clips) whose limbs follow its OpenPose-18 skeleton: a shirt (torso and
  upper arms) and trousers (legs) in colours and a texture (plain, stripes, checks, dots) that move
  with the body, skin-coloured forearms, hands and head; a face patch with eyes whose pupils look
  around and blink and a mouth that opens and closes, so the S-Face condition carries signal;
* its **conditions**: the no-head skeleton render (``data/render.py``) and the S-Face maps
  (``data/sface.py``) from the face's 68 landmarks, which follow the eyes' and mouth's opening.

Held-out split by construction: a figure's identity (shirt colour, trouser colour, texture, skin) is
one of ``N_FIGURES`` discrete ids; ``test`` clips use only ids with ``id % TEST_EVERY == 0`` and
``train`` clips never do. Every random stream is seeded with ``[seed, SPLIT_TAG[split], index]``, so
no train clip shares a stream with a test clip whatever the seeds. Test clips are for
self-reenactment: their reference (frame 0) is the clip's first frame (a copy of frame 1); train clips
take the reference at another phase of the same motion, as X-Dyna does.
"""
from __future__ import annotations

import colorsys

import numpy as np

from xdyna_jax.data.render import render_frame
from xdyna_jax.data.sface import sface_condition
from xdyna_jax.sampling.synthetic import figure_pose

BACKGROUNDS = ("water", "flicker", "clouds", "still")
MOVING = ("water", "flicker", "clouds")
BACKGROUND_P = (0.25, 0.2, 0.25, 0.3)
SPLIT_TAG = {"train": 0, "test": 1}
TEXTURES = ("plain", "stripes", "checks", "dots")
N_SHIRT, N_TROUSER, N_SKIN = 12, 8, 5
N_FIGURES = N_SHIRT * N_TROUSER * len(TEXTURES) * N_SKIN     # 1920 discrete identities
TEST_EVERY = 5                                                  # ids 0, 5, 10, ... are held out


# --- identities -------------------------------------------------------------------------------------

def figure_identity(fid: int) -> dict:
    """The discrete look of figure ``fid``: shirt/trouser hues on a 12/8-step wheel, texture, skin tone."""
    fid, shirt = divmod(int(fid), N_SHIRT)
    fid, trouser = divmod(fid, N_TROUSER)
    skin, texture = divmod(fid, len(TEXTURES))
    rgb = lambda h, s, v: np.array(colorsys.hsv_to_rgb(h % 1.0, s, v)) * 255  # noqa: E731
    return {"shirt": rgb(shirt / N_SHIRT, 0.75, 0.9), "trouser": rgb(trouser / N_TROUSER + 0.04, 0.6, 0.45),
            "texture": TEXTURES[texture], "skin": rgb(0.07, 0.25 + 0.1 * skin, 0.95 - 0.12 * skin)}


def split_figures(split: str) -> np.ndarray:
    """The figure ids a split may draw (disjoint: the test ids are the multiples of TEST_EVERY)."""
    ids = np.arange(N_FIGURES)
    held = ids % TEST_EVERY == 0
    return ids[held] if split == "test" else ids[~held]


# --- backgrounds ------------------------------------------------------------------------------------

def _smooth_noise(rng, cells: int, height: int, width: int) -> np.ndarray:
    import cv2

    return cv2.resize(rng.uniform(0, 1, (cells, cells)), (width, height), interpolation=cv2.INTER_CUBIC)


def background(rng: np.random.Generator, kind: str, frames: int, height: int, width: int) -> np.ndarray:
    """(frames, H, W, 3) float in [0, 255] of one background ``kind``."""
    import cv2

    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64) / max(height, width)
    c1, c2 = rng.uniform(30, 230, 3), rng.uniform(30, 230, 3)
    out = []
    if kind == "water":  # bands flow along a direction at 2-5 % of the image per frame, with ripples
        ang = rng.uniform(0, 2 * np.pi)
        d = np.cos(ang) * xx + np.sin(ang) * yy
        n = -np.sin(ang) * xx + np.cos(ang) * yy
        freq, speed = rng.uniform(3, 7), rng.uniform(0.02, 0.05)
        for k in range(frames):
            phase = d * freq - speed * freq * k + 0.15 * np.sin(2 * np.pi * (3 * n + 0.1 * k))
            s = 0.5 + 0.5 * np.sin(2 * np.pi * phase)
            out.append(c1 + (c2 - c1) * (s ** 2)[..., None])
    elif kind == "clouds":  # a noise field larger than the frame slides at 1-3 px per frame
        pad = int(0.5 * max(height, width))
        field = _smooth_noise(rng, 6, height + 2 * pad, width + 2 * pad)
        sky = c1 * 0.6 + np.array([40, 60, 120]) * (1 - yy[..., None])
        v = rng.uniform(1, 3) * np.array([np.cos(a := rng.uniform(0, 2 * np.pi)), np.sin(a)])
        for k in range(frames):
            m = np.float32([[1, 0, -pad + v[0] * k], [0, 1, -pad + v[1] * k]])
            f = cv2.warpAffine(field, m, (width, height), borderMode=cv2.BORDER_REFLECT)
            cover = np.clip((f - 0.35) * 2.5, 0, 1)[..., None]
            out.append(sky * (1 - cover) + 235 * cover)
    else:  # flicker and still share a static pattern of soft blobs
        pattern = c1 + (c2 - c1) * _smooth_noise(rng, 5, height, width)[..., None]
        if kind == "still":
            return np.broadcast_to(pattern, (frames, height, width, 3)).copy()
        sx, sy, rad = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.15, 0.3)
        spot = np.exp(-((xx - sx) ** 2 + (yy - sy) ** 2) / (2 * rad ** 2))[..., None]
        w, ph = rng.uniform(0.6, 1.6), rng.uniform(0, 2 * np.pi)
        for k in range(frames):
            level = 0.75 + 0.25 * np.sin(w * k + ph)
            tint = np.array([1.0 + 0.1 * np.sin(0.7 * w * k), 1.0, 1.0 - 0.1 * np.sin(0.7 * w * k)])
            glow = 90 * spot * (0.5 + 0.5 * np.sin(2.3 * w * k + 2 * ph))
            out.append(np.clip(pattern * level * tint + glow, 0, 255))
    return np.stack(out)


# --- the figure -------------------------------------------------------------------------------------

def world_pose(t: float, legs: float, bob: float) -> np.ndarray:
    """(18, 2) joints in [0, 1] units: ``figure_pose``'s waving arms and sway, plus stepping legs
    (knee and ankle swing ``legs``) and a vertical bob ``bob``."""
    p = figure_pose(t).copy()
    s = np.sin(2 * np.pi * t)
    for knee, ankle, side in ((9, 10, 1), (12, 13, -1)):
        p[knee, 0] += legs * 0.5 * side * s
        p[ankle, 0] += legs * side * s
        p[ankle, 1] -= legs * 0.5 * max(0.0, side * s)
    p[:, 1] += bob * np.sin(4 * np.pi * t)
    return p


def face68(cx: float, cy: float, r: float, eye_open: float, mouth_open: float) -> np.ndarray:
    """68 iBUG-ordered points of a round face of radius ``r``; lids and lips follow the openings in [0, 1]."""
    ring = lambda ex, ey, ax, ay, n: [(ex + ax * np.cos(a), ey + ay * np.sin(a))  # noqa: E731
                                      for a in np.linspace(np.pi, -np.pi, n, endpoint=False)]
    jaw = [(np.cos(a), -np.sin(a) * 0.2 + (1 - abs(np.cos(a)))) for a in np.linspace(np.pi * 1.05, -0.05 * np.pi, 17)]
    brows = [(x, -0.55) for x in np.linspace(-0.7, -0.2, 5)] + [(x, -0.55) for x in np.linspace(0.2, 0.7, 5)]
    nose = [(0.0, y) for y in np.linspace(-0.35, 0.1, 4)] + [(x, 0.2) for x in np.linspace(-0.2, 0.2, 5)]
    eh = 0.02 + 0.1 * eye_open
    mh = 0.03 + 0.17 * mouth_open
    pts = (jaw + brows + nose + ring(-0.4, -0.3, 0.17, eh, 6) + ring(0.4, -0.3, 0.17, eh, 6)
           + ring(0, 0.5, 0.32, mh, 12) + ring(0, 0.5, 0.22, 0.7 * mh, 8))
    return np.array(pts, np.float64) * r + np.array([cx, cy])


def _texture(kind: str, xx, yy, scale: float, rng_phase: float) -> np.ndarray:
    """(H, W) multiplier in [0.55, 1.05] in figure-local coordinates (so the texture moves with the body)."""
    p = 2 * np.pi / scale
    if kind == "stripes":
        return 0.8 + 0.25 * np.sign(np.sin(p * yy + rng_phase))
    if kind == "checks":
        return 0.8 + 0.25 * np.sign(np.sin(p * xx + rng_phase) * np.sin(p * yy))
    if kind == "dots":
        return 1.0 - 0.45 * ((np.sin(p * xx) * np.sin(p * yy + rng_phase)) > 0.6)
    return np.ones_like(xx)


def draw_figure(img: np.ndarray, joints: np.ndarray, look: dict, size: float, t: float,
                motion: dict) -> tuple[np.ndarray, np.ndarray]:
    """Draw the figure over ``img`` (uint8, in place); returns its 68 face landmarks and its exact (H, W) bool
    mask (every pixel the figure covers)."""
    import cv2

    h, w = img.shape[:2]
    pt = lambda j: (int(round(joints[j][0])), int(round(joints[j][1])))  # noqa: E731
    limb = max(2, int(round(0.045 * size)))
    shirt, trouser, skin = (np.zeros((h, w), np.uint8) for _ in range(3))
    torso = np.array([pt(2), pt(5), pt(11), pt(8)], np.int32)
    cv2.fillConvexPoly(shirt, torso, 1)
    for a, b in ((2, 3), (5, 6), (2, 5)):
        cv2.line(shirt, pt(a), pt(b), 1, limb + 1)
    for a, b in ((8, 9), (9, 10), (11, 12), (12, 13), (8, 11)):
        cv2.line(trouser, pt(a), pt(b), 1, limb + 2)
    for a, b in ((3, 4), (6, 7), (1, 0)):
        cv2.line(skin, pt(a), pt(b), 1, limb)
    for j in (4, 7):
        cv2.circle(skin, pt(j), limb, 1, -1)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    tex = _texture(look["texture"], xx - joints[1][0], yy - joints[1][1], max(4.0, 0.08 * size), motion["tex_phase"])
    out = img.astype(np.float64)
    out = np.where(shirt[..., None] > 0, np.clip(look["shirt"] * tex[..., None], 0, 255), out)
    out = np.where(trouser[..., None] > 0, look["trouser"], out)
    out = np.where(skin[..., None] > 0, look["skin"], out)
    img[:] = np.clip(out, 0, 255).astype(np.uint8)
    # the head: a skin disc above the nose joint, with eyes that look around and blink, and a talking mouth
    r = 0.11 * size
    cx, cy = joints[0][0], joints[0][1] - 0.3 * r
    cv2.circle(img, (int(round(cx)), int(round(cy))), int(round(r)), tuple(float(c) for c in look["skin"]), -1)
    head = np.zeros((h, w), np.uint8)
    cv2.circle(head, (int(round(cx)), int(round(cy))), int(round(r)), 1, -1)
    mask = (shirt | trouser | skin | head) > 0
    blink = float(np.clip(np.cos(2 * np.pi * (t * motion["blink_rate"] + motion["blink_phase"])) * 4 - 2.6, 0, 1))
    eye_open = 1.0 - blink
    mouth_open = 0.5 + 0.5 * np.sin(2 * np.pi * (motion["talk_rate"] * t + motion["talk_phase"]))
    gaze = 0.08 * r * np.array([np.sin(2 * np.pi * (motion["gaze_rate"] * t)), 0.5 * np.cos(2 * np.pi * t)])
    lmk = face68(cx, cy, r, eye_open, mouth_open)
    for ex in (-0.4, 0.4):
        c = (int(round(cx + ex * r)), int(round(cy - 0.3 * r)))
        ax = (max(1, int(round(0.2 * r))), max(1, int(round((0.03 + 0.13 * eye_open) * r))))
        cv2.ellipse(img, c, ax, 0, 0, 360, (245, 245, 245), -1)
        if eye_open > 0.3:
            cv2.circle(img, (int(round(c[0] + gaze[0])), int(round(c[1] + gaze[1]))),
                       max(1, int(round(0.09 * r))), (25, 25, 60), -1)
    cv2.ellipse(img, (int(round(cx)), int(round(cy + 0.5 * r))),
                (max(1, int(round(0.3 * r))), max(1, int(round((0.03 + 0.17 * mouth_open) * r)))),
                0, 0, 360, (140, 25, 35), -1)
    return lmk, mask


# --- clips ------------------------------------------------------------------------------------------

def world_clip(seed: int, index: int, frames: int, height: int, width: int, scene_ratio: float,
               split: str = "train", truth: bool = False) -> dict:
    """One clip: the loader's layout (``frames (1+F,H,W,3)``, ``pose (F,H,W,3)``, ``face (F,H,W,6)``,
    ``is_scene``) plus what was drawn: ``background`` (a BACKGROUNDS name) and ``figure`` (id, -1 for none).

    ``truth``: also ``masks (1+F, H, W)`` bool, the exact figure pixels of every frame, and ``plates
    (1+F, H, W, 3)`` uint8, the background alone (what each frame shows without the figure). The draws are
    the same either way."""
    if split not in SPLIT_TAG:
        raise ValueError(f"split={split!r}: expected one of {sorted(SPLIT_TAG)}")
    rng = np.random.default_rng([seed, SPLIT_TAG[split], index])
    is_scene = bool(rng.uniform() < scene_ratio)
    kind = BACKGROUNDS[rng.choice(len(BACKGROUNDS), p=BACKGROUND_P)]
    bg = background(rng, kind, frames + 1, height, width)
    plates = np.clip(bg, 0, 255).astype(np.uint8)
    if is_scene:  # no figure: an empty skeleton and an all-black face condition
        out = {"frames": plates, "pose": np.zeros((frames, height, width, 3), np.uint8),
               "face": np.zeros((frames, height, width, 6), np.uint8), "is_scene": np.bool_(True),
               "background": kind, "figure": -1}
        if truth:
            out.update(masks=np.zeros((frames + 1, height, width), bool), plates=plates.copy())
        return out
    fid = int(rng.choice(split_figures(split)))
    look = figure_identity(fid)
    motion = {"tex_phase": rng.uniform(0, 2 * np.pi), "blink_rate": rng.uniform(0.5, 1.5), "blink_phase": rng.uniform(),
              "talk_rate": rng.uniform(1, 3), "talk_phase": rng.uniform(), "gaze_rate": rng.uniform(0.5, 2)}
    phase, speed = rng.uniform(0, 1), rng.uniform(0.04, 0.1) * rng.choice([-1, 1])
    legs, bob = rng.uniform(0, 0.05), rng.uniform(0, 0.015)
    scale = rng.uniform(0.75, 1.0)
    centre = np.array([rng.uniform(0.4, 0.6), rng.uniform(0.47, 0.53)])
    drift = rng.uniform(-0.008, 0.008, 2)
    t_ref = rng.uniform(0, 1)
    times = [t_ref] + [phase + speed * k for k in range(frames)]
    dim = np.array([width, height], np.float64)
    size = scale * min(height, width)
    out_frames, poses, faces, masks = [], [], [], []
    for k, t in enumerate(times):
        if k == 0 and split == "test":
            continue  # the reference is frame 1 itself (self-reenactment)
        at = centre + drift * max(k - 1, 0)
        joints = ((world_pose(t, legs, bob) - 0.5) * scale + at) * dim
        img = plates[k].copy()
        lmk, mask = draw_figure(img, joints, look, size, t, motion)
        out_frames.append(img)
        masks.append(mask)
        if k > 0:
            poses.append(render_frame(np.concatenate([joints, np.ones((18, 1))], axis=1), None, height, width))
            faces.append(sface_condition(img, lmk))
    if split == "test":
        out_frames.insert(0, out_frames[0].copy())
        masks.insert(0, masks[0].copy())
    out = {"frames": np.stack(out_frames), "pose": np.stack(poses), "face": np.stack(faces),
           "is_scene": np.bool_(False), "background": kind, "figure": fid}
    if truth:  # a test clip's reference is its frame 1: its plate too
        out.update(masks=np.stack(masks), plates=np.concatenate([plates[1:2], plates[1:]]) if split == "test" else plates)
    return out
