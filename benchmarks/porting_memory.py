"""Peak host memory (RSS) of ``python -m xdyna_jax.porting bundle`` on full-size random official checkpoints.

Writes the official ``pretrained_weights/`` folder once into ``--dir`` (cached between runs): the X-Dyna UNet
checkpoint (a full UNet state dict, the conservative case) over ``animatediff_v15_v1_ipplus.pth``, both
ControlNet checkpoints, IP-Adapter's ``.bin``, and the SD1.5 VAE / text encoder and the IP-Adapter image encoder
as their diffusers / transformers folders, with every config the bundle reads. Shapes: the UNet, ControlNet and
Resampler key lists of ``shared/reference/*.tsv``; the VAE and CLIP encoders from our naming table at SD1.5 size.
Then runs ``bundle`` in a subprocess and reads its peak RSS (``wait4``'s ru_maxrss; a poller also kills it above
``--max-rss-gb`` so a shared machine is not driven out of memory), against the largest input checkpoint and the
converted tree (every converted param, at the config's param dtype). Target: peak <= 1.5 x largest checkpoint
+ converted tree.

  python benchmarks/porting_memory.py                      # the whole official folder: bundle --official DIR
  python benchmarks/porting_memory.py --parts unet         # one part by its flags (needs less free memory)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / "shared" / "reference"
GB = 1e9
PARTS = ("unet", "pose_controlnet", "face_controlnet", "resampler", "vae", "image_encoder", "text_encoder")


def _tsv(name: str) -> dict[str, tuple[int, ...]]:
    path = REFERENCE / f"{name}_keys.tsv"
    if not path.is_file():
        raise SystemExit(f"{path}: missing (the official key lists: shared/reference/*.tsv beside the repo)")
    out = {}
    for line in path.read_text().splitlines():
        key, shape = line.split("\t")
        out[key] = tuple(int(x) for x in re.findall(r"\d+", shape))
    return out


def _random(shapes: dict, seed: int):
    import torch

    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(s, generator=g) for k, s in shapes.items()}


def _bytes(shapes: dict) -> int:
    return sum(4 * math.prod(s) for s in shapes.values())


def write_folder(root: Path) -> dict[str, list[Path]]:
    """The official set under root/pretrained_weights (plus root/configs/x_dyna.yaml); {part: its files}.
    Each file is written once, under a temporary name renamed when complete, so an interrupted run redoes it."""
    import torch
    import yaml
    from safetensors.torch import save_file

    from xdyna_jax.models import ModelsConfig
    from xdyna_jax.porting import official
    from xdyna_jax.porting.convert import official_entries
    from xdyna_jax.porting.official_specs import network_spec

    cfg = ModelsConfig.sd15()
    pw = root / "pretrained_weights"
    files: dict[str, list[Path]] = {}

    def once(path: Path, write) -> Path:
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.partial")
            t0 = time.perf_counter()
            write(tmp)
            os.replace(tmp, path)
            print(f"wrote {path} ({path.stat().st_size / GB:.2f} GB, {time.perf_counter() - t0:.0f} s)", flush=True)
        return path

    def text(path: Path, data) -> None:
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(data if isinstance(data, str) else json.dumps(data, indent=1))

    unet = {k: s for k, s in _tsv("unet").items() if not k.endswith(".pe")}
    init = {k: s for k, s in unet.items() if ".to_q_ff." not in k}  # AnimateDiff's init has no adapter query
    files["unet"] = [
        once(pw / "unet/unet-checkpoint-epoch-5.ckpt", lambda p: torch.save(
            {"state_dict": {f"module.{k}": v for k, v in _random(unet, 1).items()}}, p)),
        once(pw / official.SD / "unet/animatediff_v15_v1_ipplus.pth", lambda p: torch.save(_random(init, 2), p))]
    sd_unet = network_spec("unet", cfg.unet)["config"]
    text(pw / official.SD / "unet/config.json", {**sd_unet, "_class_name": "UNet2DConditionModel", **{
        k: [t.replace("3D", "2D") for t in sd_unet[k]] for k in ("down_block_types", "up_block_types")}})
    cn = _tsv("controlnet")
    face = {**cn, "controlnet_cond_embedding.conv_in.weight": (16, 6, 3, 3)}
    for part, name, init_dir, shapes, seed in (
            ("pose_controlnet", "controlnet/controlnet-checkpoint-epoch-5.ckpt", official.POSE_INIT, cn, 3),
            ("face_controlnet", "controlnet_face/controlnet-face-checkpoint-epoch-2.ckpt", official.FACE_INIT,
             face, 4)):
        files[part] = [once(pw / name, lambda p, s=shapes, r=seed: torch.save(
            {"state_dict": {f"module.{k}": v for k, v in _random(s, r).items()}}, p))]
        text(pw / init_dir / "config.json", network_spec(part, getattr(cfg, part))["config"])
    files["resampler"] = [once(pw / official.IP_ADAPTER / "models/ip-adapter-plus_sd15.bin", lambda p: torch.save(
        {"image_proj": _random(_tsv("resampler"), 5)}, p))]
    for part, folder, name, config in (
            ("vae", official.SD + "/vae", "diffusion_pytorch_model.safetensors",
             network_spec("vae", cfg.vae)["config"]),
            ("image_encoder", official.IP_ADAPTER + "/models/image_encoder", "model.safetensors",
             {**network_spec("image_encoder", cfg.image_encoder)["config"],
              "architectures": ["CLIPVisionModelWithProjection"], "model_type": "clip_vision_model"}),
            ("text_encoder", official.SD + "/text_encoder", "model.safetensors",
             {**network_spec("text_encoder", cfg.text_encoder)["config"], "architectures": ["CLIPTextModel"],
              "model_type": "clip_text_model"})):
        shapes = {e.key: e.shape for e in official_entries(getattr(cfg, part)) if not e.buffer}
        files[part] = [once(pw / folder / name, lambda p, s=shapes: save_file(_random(s, 6), str(p)))]
        text(pw / folder / "config.json", config)
    text(pw / official.SD / "tokenizer/vocab.json", {"<|startoftext|>": 0, "<|endoftext|>": 1})
    text(pw / official.SD / "tokenizer/merges.txt", "#version: 0.2\n")
    text(root / "configs/x_dyna.yaml", yaml.safe_dump({"unet_additional_kwargs": network_spec("unet", cfg.unet)[
        "kwargs"] | {"unet_use_temporal_attention": False, "motion_module_type": "Vanilla"}}))
    return files


FLAGS = {"unet": ("--unet", "--unet-init"), "pose_controlnet": ("--pose-controlnet",),
         "face_controlnet": ("--face-controlnet",), "resampler": ("--ip-adapter",), "vae": ("--vae",),
         "image_encoder": ("--image-encoder",), "text_encoder": ("--text-encoder",)}


def _folder_of(part: str, path: Path) -> Path:
    return path.parent if part in ("vae", "image_encoder", "text_encoder") else path


def measure(cmd: list[str], max_rss: float) -> tuple[float, float, float, bool]:
    """(peak RSS from wait4, peak RSS polled, seconds, killed at the cap) of one child process."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=REPO)
    polled, killed = [0.0], [False]

    def poll():
        status = Path(f"/proc/{proc.pid}/status")
        while proc.returncode is None:
            try:
                kb = next(int(s.split()[1]) for s in status.read_text().splitlines() if s.startswith("VmRSS:"))
            except (OSError, StopIteration, ValueError):  # the child is gone between the check and the read
                return
            polled[0] = max(polled[0], kb * 1024)
            if kb * 1024 > max_rss:
                killed[0] = True
                proc.kill()
                return
            time.sleep(0.05)

    watcher = threading.Thread(target=poll, daemon=True)
    watcher.start()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    watcher.join()
    if proc.returncode != 0 and not killed[0]:
        raise SystemExit(f"{' '.join(cmd)} failed with exit code {proc.returncode}")
    return usage.ru_maxrss * 1024, polled[0], time.perf_counter() - t0, killed[0]


def _tree_bytes(parts) -> int:
    import jax
    import numpy as np

    from xdyna_jax.models import ModelsConfig, xdyna

    shapes = xdyna.param_shapes(ModelsConfig.sd15())
    return sum(int(np.prod(s.shape)) * s.dtype.itemsize for p in parts for s in jax.tree.leaves(shapes[p]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default="/tmp/xdyna_porting_memory", help="cache of the written official folder")
    ap.add_argument("--parts", nargs="+", choices=PARTS, help="convert only these, by their flags (default: the "
                                                               "whole folder with --official)")
    ap.add_argument("--max-rss-gb", type=float, default=None,
                    help="kill the conversion above this RSS (default: MemAvailable - 1 GB at start)")
    args = ap.parse_args(argv)
    root = Path(args.dir)
    free = shutil.disk_usage(root.parent if not root.exists() else root).free
    print(f"disk free at {root}: {free / GB:.1f} GB (the folder needs ~23 GB once)", flush=True)
    files = write_folder(root)
    avail = next(int(s.split()[1]) * 1024 for s in Path("/proc/meminfo").read_text().splitlines()
                 if s.startswith("MemAvailable:"))
    cap = args.max_rss_gb * GB if args.max_rss_gb else avail - 1 * GB
    parts = args.parts or [p for p in PARTS]
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        out = Path(tmp) / "bundle"
        cmd = [sys.executable, "-m", "xdyna_jax.porting", "bundle", "--out", str(out)]
        if args.parts:
            for part in parts:
                for flag, path in zip(FLAGS[part], files[part]):
                    cmd += [flag, str(_folder_of(part, path))]
        else:
            cmd += ["--official", str(root / "pretrained_weights")]
        print("$ " + " ".join(cmd), flush=True)
        peak, polled, secs, killed = measure(cmd, cap)
        on_disk = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) if out.exists() else 0
    largest = max(f.stat().st_size for p in parts for f in files[p])
    tree = _tree_bytes(parts)
    target = 1.5 * largest + tree
    print(json.dumps({"parts": parts, "peak_rss_gb": round(peak / GB, 2), "polled_peak_rss_gb": round(polled / GB, 2),
                      "largest_checkpoint_gb": round(largest / GB, 2), "converted_tree_gb": round(tree / GB, 2),
                      "bundle_on_disk_gb": round(on_disk / GB, 2), "target_gb": round(target / GB, 2),
                      "peak_over_largest_plus_tree": round(peak / (largest + tree), 3),
                      "meets_target": bool(peak <= target and not killed), "killed_at_cap_gb":
                      round(cap / GB, 2) if killed else None, "seconds": round(secs, 1), "mem_available_gb":
                      round(avail / GB, 1)}))
    return 0 if peak <= target and not killed else 1


if __name__ == "__main__":
    sys.exit(main())
