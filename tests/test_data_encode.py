"""encode.py + ``build --vae/--image-encoder`` + ``LoaderConfig.encoded``: the stored VAE posteriors
and CLIP hidden states equal what diffusers' ``AutoencoderKL`` and transformers' CLIP vision model
compute on the stored frames (tiny models saved as real diffusers / transformers folders), and the
loader returns them aligned with the clip it samples."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

for _mod in ("tensorflow_datasets", "array_record", "av", "cv2", "torch", "diffusers", "transformers"):
    pytest.importorskip(_mod)

import torch  # noqa: E402
import transformers  # noqa: E402

from data_fakes import fake_conditions, make_folder  # noqa: E402
from official_weights import official_weights  # noqa: E402
from test_clip import VISION_HF, clip_weights, torch_model  # noqa: E402
from test_vae import CFG as VAE_CFG, diffusers_config  # noqa: E402
from xdyna_jax.data import datasets as D  # noqa: E402
from xdyna_jax.data.encode import EncodeError, frame_encoders, vae_inputs  # noqa: E402
from xdyna_jax.data.loader import LoaderConfig, VideoClipLoader  # noqa: E402
from xdyna_jax.models import CLIPVisionConfig  # noqa: E402
from xdyna_jax.models.clip_preprocess import clip_pixel_values  # noqa: E402
from xdyna_jax.porting import load_clip_vision, load_vae  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
F16 = dict(rtol=2e-3, atol=2e-3)  # the fields are stored as float16


def oracles(tmp: Path):
    """(diffusers VAE, transformers CLIP vision model), random non-zero weights, saved as folders."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL(**diffusers_config(VAE_CFG)).eval()
    sd = official_weights({k: tuple(v.shape) for k, v in vae.state_dict().items()}, seed=3)
    vae.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=True)
    vae.save_pretrained(tmp / "vae")
    clip = torch_model("CLIPVisionModelWithProjection", clip_weights(CLIPVisionConfig.tiny(), seed=4), **VISION_HF)
    clip.save_pretrained(tmp / "image_encoder")
    return vae, clip


def vae_reference(vae, frames):
    x = torch.from_numpy(np.ascontiguousarray(vae_inputs(frames).transpose(0, 3, 1, 2)))
    with torch.no_grad():
        dist = vae.encode(x).latent_dist
    return np.concatenate([dist.mean.numpy(), dist.logvar.numpy()], axis=1).transpose(0, 2, 3, 1)


def clip_reference(clip, frames):
    proc = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    pix = proc(images=list(frames), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        return clip(pix, output_hidden_states=True).hidden_states[-2].numpy()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("enc")
    make_folder(root / "human", n_videos=2, corrupt=True, n_frames=9)
    make_folder(root / "scene", n_videos=1, corrupt=False, n_frames=7)
    vae, clip = oracles(root)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]), JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-m", "xdyna_jax.data", "build", "--human", root / "human", "--scene",
                        root / "scene", "--out", root / "out", "--conditions", "data_fakes:fake_conditions",
                        "--set", "frame_codec=png", "--set", "segment_frames=5", "--vae", root / "vae",
                        "--image-encoder", root / "image_encoder", "--encode-batch", "4"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "videos: 3 (human 2, scene 1)" in r.stdout and "skipped files: 1" in r.stdout
    return root, vae, clip


def test_stored_encodings_match_torch_models(built):
    root, vae, clip = built
    src = D.open_splits(root / "out")
    n = 0
    for split in ("human", "scene"):
        for i in range(len(src[split])):
            ex = src[split][i]
            frames = np.stack([D.decode_image(b) for b in ex["frames"]])
            t = int(ex["num_frames"])
            assert ex["vae_moments"].dtype == ex["clip_hidden"].dtype == np.float16
            assert ex["vae_moments"].shape == (t, 24, 32, 8) and ex["clip_hidden"].shape == (t, 17, 32)
            np.testing.assert_allclose(ex["vae_moments"], vae_reference(vae, frames), **F16)
            np.testing.assert_allclose(ex["clip_hidden"], clip_reference(clip, frames), **F16)
            n += t
    assert n == 9 + 10 + 7  # every frame of every segment (human videos of 9 and 10 frames, 2 segments each)


def test_beam_build_encodes_on_its_workers_as_the_local_build(built):
    """``build --beam --vae --image-encoder`` in a worker process, which loads the encoders from the
    paths: the same stored encodings as the local build of the fixture."""
    pytest.importorskip("apache_beam", reason="apache_beam is not installed (the `beam` extra)")
    from test_data_beam import assert_same_dataset

    root, _, _ = built
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests")]), JAX_PLATFORMS="cpu")
    r = subprocess.run([sys.executable, "-m", "xdyna_jax.data", "build", "--human", root / "human", "--scene",
                        root / "scene", "--out", root / "beam", "--conditions", "data_fakes:fake_conditions",
                        "--set", "frame_codec=png", "--set", "segment_frames=5", "--vae", root / "vae",
                        "--image-encoder", root / "image_encoder", "--encode-batch", "4", "--beam",
                        "--beam-options", "--direct_num_workers=1 --direct_running_mode=multi_processing"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert_same_dataset(root / "beam", root / "out")


def test_loader_returns_encodings_aligned_with_the_clip(built):
    root, vae, clip = built
    cfg = LoaderConfig(data_dir=str(root / "out"), clip_length=3, stride=2, batch_size=2, num_threads=2,
                       encoded=("vae_moments", "clip_hidden"), shuffle=True, seed=5)
    with VideoClipLoader(cfg, 0, 1) as ld:
        for _ in range(ld.steps_per_epoch * 2):
            batch = next(ld)
            assert batch["vae_moments"].shape == (2, 4, 24, 32, 8) and batch["clip_hidden"].shape == (2, 17, 32)
            for b in range(2):
                np.testing.assert_allclose(batch["vae_moments"][b], vae_reference(vae, batch["frames"][b]), **F16)
                np.testing.assert_allclose(batch["clip_hidden"][b], clip_reference(clip, batch["frames"][b][:1])[0],
                                           **F16)


def test_loader_refuses_missing_fields_and_resizing(tmp_path, built):
    make_folder(tmp_path / "h", n_videos=2, corrupt=False, n_frames=4)
    D.build_dataset(tmp_path / "out", tmp_path / "h", settings=D.BuildSettings(frame_codec="png"),
                    conditions_fn=fake_conditions)
    with VideoClipLoader(LoaderConfig(data_dir=str(tmp_path / "out"), encoded=("vae_moments",), clip_length=2),
                         0, 1) as ld:
        with pytest.raises(D.DatasetError, match="field 'vae_moments' is not in this dataset"):
            ld.load_batch(0, 0)
    with pytest.raises(ValueError, match="LoaderConfig.size must be None"):
        LoaderConfig(data_dir="x", encoded=("clip_hidden",), size=(32, 32))
    with pytest.raises(ValueError, match="unknown field"):
        LoaderConfig(data_dir="x", encoded=("latents",))


def test_frame_size_not_divisible_is_reported_and_skipped(tmp_path, built):
    root = built[0]
    vae = load_vae(root / "vae")
    feats, fn = frame_encoders(vae=vae)
    frames = np.zeros((2, 47, 64, 3), np.uint8)
    with pytest.raises(EncodeError, match="47x64.*multiples of 2"):
        fn("v.mp4", frames, {})
    # in a build, such a video is skipped whole and reported; the others are kept
    make_folder(tmp_path / "h", n_videos=2, corrupt=False, n_frames=4)

    def picky(video_id, frames, conds):
        if video_id == "v1.mp4":
            raise EncodeError("no thanks")
        return fn(video_id, frames, conds)

    report = D.build_dataset(tmp_path / "out", tmp_path / "h", settings=D.BuildSettings(segment_frames=2),
                             conditions_fn=fake_conditions, extra_features=feats, extra_fn=picky)
    assert report.videos == {"human": 1, "scene": 0} and report.frames == 4
    assert [s["file"] for s in report.skipped] == [str(tmp_path / "h" / "v1.mp4")]
    assert "EncodeError: no thanks" in report.skipped[0]["reason"]
    src = D.open_splits(tmp_path / "out")["human"]
    assert len(src) == 2 and {src[i]["video_id"] for i in range(2)} == {b"v0.mp4"}


def test_frame_encoders_arguments():
    with pytest.raises(ValueError, match="give vae"):
        frame_encoders()
    clip = (None, CLIPVisionConfig.tiny())
    with pytest.raises(ValueError, match="batch_size"):
        frame_encoders(clip=clip, batch_size=0)
    assert clip_pixel_values(np.zeros((40, 60, 3), np.uint8)).shape == (1, 224, 224, 3)  # default stays 224


def test_load_clip_folder_config(built):
    params, cfg = load_clip_vision(built[0] / "image_encoder")
    assert cfg == CLIPVisionConfig.tiny(hidden_act="quick_gelu")  # transformers' default activation
