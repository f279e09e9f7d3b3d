"""The tiny world's recipe (``make tiny-world``): every stage through ``train.py``, resumable, with progress.

``python -m xdyna_jax.world.recipe [--workdir runs/tiny_world] [--out weights/tiny_world]
[--stages vae,full,tune,export] [--vae KEY=VALUE ...] [--full KEY=VALUE ...] [--tune KEY=VALUE ...]``

1. ``vae``: ``train.py --config configs/train_world_vae.yaml --workdir {workdir}/vae --export {workdir}/vae_bundle``;
2. ``full``: ``train.py --config configs/train_world_full.yaml --workdir {workdir}/full --export
   {workdir}/full_bundle train.init={workdir}/vae_bundle models.vae.scaling_factor=S`` (UNet, pose ControlNet,
   Resampler over the stage-1 VAE, on a pre-encoded pool; the bundle holds the EMA of the weights).
   ``S`` = 1 / std of the trained VAE's latent means over training frames (``latent_scale``), the rule that
   gave SD1.5 its 0.18215: the diffusion schedule assumes unit-variance latents;
3. ``tune``: ``train.py --config configs/train_world_tune.yaml --workdir {workdir}/tune --export
   {workdir}/tune_bundle train.init={workdir}/full_bundle models.vae.scaling_factor=S``: the same networks
   trained on with the timesteps drawn toward the clean end, where the full stage's predictions add speckle;
4. ``export``: the tune bundle as bf16 official-named safetensors + ``config.yaml`` in ``--out``.

Each stage runs in its own process (one JAX runtime per stage, as a user would run them) and resumes on
its own workdir: ``train.py`` restarts from the last checkpoint, and a stage whose bundle was written by the
same command from its predecessor's bundle as it is now is skipped (a re-run predecessor makes the stages
after it stale). ``--stages`` run in the order above, whatever order they are named in. Seeds are the
configs' ``train.seed``; the data is a pure function of (seed, step), so a resumed stage sees the batches it
would have seen.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from xdyna_jax import cli
from xdyna_jax import config as config_lib
from xdyna_jax.models.xdyna import ModelsConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIGS = REPO_ROOT / "configs"
STAGES = ("vae", "full", "tune", "export")
PREVIOUS = {"full": "vae", "tune": "full", "export": "tune"}  # the stage whose bundle each one starts from
STAMP = "recipe_done.json"  # written into a bundle folder once its stage has finished and exported


def latent_scale(bundle: Path, frames: int = 64, seed: int = 12345) -> float:
    """1 / std of the VAE encoder's means over ``frames`` training-split frames (clips of a seed no stage uses),
    cached in ``{bundle}/latent_scale.json`` with the reconstruction PSNR of those frames."""
    cache = bundle / "latent_scale.json"
    if cache.is_file():
        return float(json.loads(cache.read_text())["scaling_factor"])
    import jax
    import numpy as np

    from xdyna_jax.models.vae import AutoencoderKL
    from xdyna_jax.porting.bundle import load_bundle

    from xdyna_jax.training import config as train_config

    from .source import synthetic_batch

    run = train_config.load(CONFIGS / "train_world_full.yaml")
    t = run.train
    b = load_bundle(bundle)
    x = synthetic_batch(seed, 0, frames // 2, 1, t.height, t.width, run.data.scene_ratio)["frames"]
    x = np.asarray(x, np.float32).reshape((-1,) + x.shape[2:]) / 127.5 - 1.0
    vae = AutoencoderKL(b.cfg.vae)
    encode = jax.jit(lambda p, v: vae.apply({"params": p}, v, method="encode")[0])
    decode = jax.jit(lambda p, z: vae.apply({"params": p}, z, method="decode"))
    mean = np.concatenate([np.asarray(encode(b.params["vae"], x[i:i + 8])) for i in range(0, len(x), 8)])
    scale = float(f"{1.0 / float(mean.std()):.4g}")  # 4 digits: the same override text on every re-run
    # how well the autoencoder reconstructs these unseen frames (from the latent means), as PSNR over [0, 255]
    rec = np.concatenate([np.asarray(decode(b.params["vae"], mean[i:i + 8])) for i in range(0, len(mean), 8)])
    mse = float(np.mean(np.square((np.clip(rec, -1, 1) - x) * 127.5)))
    psnr = 10 * np.log10(255.0 ** 2 / max(mse, 1e-12))
    cache.write_text(json.dumps({"scaling_factor": scale, "latent_std": float(mean.std()), "frames": len(x),
                                 "reconstruction_psnr_db": round(float(psnr), 2)}) + "\n")
    return scale


def stage_commands(workdir: Path, vae_overrides=(), full_overrides=(), tune_overrides=(),
                   scale: float | None = None) -> dict[str, list[str]]:
    """The ``train.py`` command line of each training stage (``scale``: the denoiser stages' latent scale)."""
    train_py = str(REPO_ROOT / "train.py")
    scaled = [f"models.vae.scaling_factor={scale}"] if scale is not None else []
    return {
        "vae": [sys.executable, train_py, "--config", str(CONFIGS / "train_world_vae.yaml"),
                "--workdir", str(workdir / "vae"), "--export", str(workdir / "vae_bundle"), *vae_overrides],
        "full": [sys.executable, train_py, "--config", str(CONFIGS / "train_world_full.yaml"),
                 "--workdir", str(workdir / "full"), "--export", str(workdir / "full_bundle"),
                 f"train.init={workdir / 'vae_bundle'}", *scaled, *full_overrides],
        "tune": [sys.executable, train_py, "--config", str(CONFIGS / "train_world_tune.yaml"),
                 "--workdir", str(workdir / "tune"), "--export", str(workdir / "tune_bundle"),
                 f"train.init={workdir / 'full_bundle'}", *scaled, *tune_overrides],
    }


def _stamp(bundle: Path) -> dict | None:
    try:
        return json.loads((bundle / STAMP).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _done(bundle: Path, command: list[str], after: dict | None = None) -> bool:
    """True when ``bundle`` was written by exactly this command (same overrides) to its end, from the
    predecessor's bundle as it is now (``after``: that bundle's stamp; a re-run predecessor makes it stale)."""
    stamp = _stamp(bundle)
    return stamp is not None and stamp.get("command") == command[1:] and stamp.get("after") == after


def run_stage(name: str, command: list[str], bundle: Path, out=print, after: dict | None = None) -> float:
    """Run one training stage unless it is done; returns its wall seconds (0 when skipped)."""
    if _done(bundle, command, after):
        out(f"[tiny-world] {name}: done ({bundle}); skipped")
        return 0.0
    out(f"[tiny-world] {name}: {' '.join(command[1:])}")
    t0 = time.perf_counter()
    rc = subprocess.call(command, cwd=REPO_ROOT)
    if rc != 0:
        raise cli.UserError(f"tiny-world stage {name} failed (exit {rc}); re-run to resume from its last checkpoint")
    if not (bundle / "bundle.json").is_file():  # train.py exits 0 after a SIGTERM without exporting
        raise cli.UserError(f"tiny-world stage {name} stopped before its end (no {bundle}); re-run to resume")
    dt = time.perf_counter() - t0
    (bundle / STAMP).write_text(json.dumps({"command": command[1:], "seconds": dt, "after": after}) + "\n")
    out(f"[tiny-world] {name}: finished in {dt / 60:.1f} min -> {bundle}")
    return dt


def export_weights(bundle: Path, out_dir: Path, out=print) -> list[Path]:
    """The bundle as bf16 ``.safetensors`` (official names, ``porting.bundle.EXPORT_NAMES``) + its config.yaml.

    The motion modules' ``pos_encoder.pe`` buffers stay float32: they are the fixed sinusoidal table, which
    the loader checks against its own, and bf16 rounding (up to 2e-3) would fail that check."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from xdyna_jax.porting.bundle import EXPORT_NAMES, load_bundle
    from xdyna_jax.porting.convert import params_to_torch
    from xdyna_jax.porting.io import write_safetensors

    b = load_bundle(bundle)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    files = []
    for part in b.parts:
        state = params_to_torch(jax.tree.map(np.asarray, b.params[part]), getattr(b.cfg, part))
        state = {k: v if k.endswith(".pe") else v.astype(jnp.bfloat16) for k, v in state.items()}
        files.append(tmp / EXPORT_NAMES[part])
        write_safetensors(state, files[-1], metadata={"format": "pt", "source": "xdyna_jax tiny world", "part": part})
    shutil.copy2(bundle / "config.yaml", tmp / "config.yaml")
    shutil.copy2(bundle / "report.txt", tmp / "report.txt")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    total = sum(f.stat().st_size for f in out_dir.iterdir())
    out(f"[tiny-world] export: {len(files)} weight files, {total / 1e6:.1f} MB -> {out_dir}")
    return [out_dir / f.name for f in files]


def read_probe(path: Path) -> dict[int, dict]:
    """{step: probe record} of a metrics.jsonl (the records ``train.eval_every`` writes; the last of a step wins)."""
    out = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            r = json.loads(line) if line.strip() else {}
            if any(k.startswith("probe_") for k in r):
                out[int(r["step"])] = r
    return out


def plot_losses(workdir: Path, png: Path, window: int = 25) -> Path:
    """Each stage's training loss (raw and a running mean over ``window`` logged steps), and the full stage's
    probe (one-step x0 at t = 800 on held-out clips: figure IoU against the static reference's) as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from xdyna_jax.training.loop import read_losses

    fig, axes = plt.subplots(1, 4, figsize=(20, 3.6))
    for ax, stage, what in zip(axes, ("vae", "full", "tune"), ("reconstruction MSE + KL + LPIPS", "v-prediction MSE",
                                                               "v-prediction MSE, t toward the clean end")):
        losses = read_losses(workdir / stage / "metrics.jsonl")
        steps = np.array(sorted(losses))
        if len(steps):
            y = np.array([losses[s] for s in steps])
            ax.plot(steps, y, color="0.75", lw=0.8, label="logged")
            k = min(window, len(y))
            ax.plot(steps[k - 1:], np.convolve(y, np.ones(k) / k, mode="valid"), color="C0", label=f"mean of {k}")
            ax.legend()
        ax.set(title=f"{stage}: {what}", xlabel="step", ylabel="loss", yscale="log")
    offset = max(read_losses(workdir / "full" / "metrics.jsonl"), default=0)  # tune's steps continue full's
    probe = {**read_probe(workdir / "full" / "metrics.jsonl"),
             **{s + offset: r for s, r in read_probe(workdir / "tune" / "metrics.jsonl").items()}}
    ax = axes[3]
    if probe:
        steps = sorted(probe)
        for key, label, color in (("probe_figure_iou_t800", "figure IoU", "C0"), ("probe_lpips_t800", "LPIPS", "C1")):
            ax.plot(steps, [probe[s].get(key, np.nan) for s in steps], "o-", color=color, label=label, ms=3)
        ax.axhline(probe[steps[0]]["probe_static_iou"], color="C0", ls="--", lw=1, label="static figure IoU")
        ax.legend(fontsize=8)
    ax.set(title="one-step x0 at t = 800, held-out clips (full, then tune)", xlabel="step")
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png


def main(argv=None) -> int:
    p = cli.ArgumentParser(prog="python -m xdyna_jax.world.recipe", description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default="runs/tiny_world", help="stage workdirs and bundles go here")
    p.add_argument("--out", default="weights/tiny_world", help="the exported bf16 weights")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}")
    p.add_argument("--vae", action="append", default=[], metavar="KEY=VALUE", help="override of the vae stage")
    p.add_argument("--full", action="append", default=[], metavar="KEY=VALUE", help="override of the full stage")
    p.add_argument("--tune", action="append", default=[], metavar="KEY=VALUE", help="override of the tune stage")
    args = p.parse_args(argv)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    bad = [s for s in stages if s not in STAGES]
    if bad or not stages:
        raise cli.UserError(f"--stages {args.stages}: unknown {bad or 'empty'}; "
                            f"expected a subset of {','.join(STAGES)}")
    stages = sorted(set(stages), key=STAGES.index)  # each stage starts from the one before: run them in order
    workdir = Path(args.workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for i, name in enumerate(stages, 1):
        print(f"[tiny-world] stage {i}/{len(stages)}: {name}", flush=True)
        before = workdir / f"{PREVIOUS[name]}_bundle" if name in PREVIOUS else None
        after = _stamp(before) if before is not None else None
        if before is not None and after is None:
            raise cli.UserError(f"--stages {name}: {before} is not finished (run the {PREVIOUS[name]} stage first)")
        if name == "export":
            export_weights(before, Path(args.out).absolute())
            png = plot_losses(workdir, Path(args.out).absolute() / "loss_curves.png")
            print(f"[tiny-world] loss curves -> {png}", flush=True)
            continue
        scale = None
        if name == "full":
            scale = latent_scale(before)
            info = json.loads((before / "latent_scale.json").read_text())
            print(f"[tiny-world] the trained VAE: latent scale {scale} (1 / std of its latent means), "
                  f"reconstruction PSNR {info.get('reconstruction_psnr_db')} dB on unseen frames", flush=True)
        elif name == "tune":  # the scale the full stage trained with (its bundle's config), whatever set it
            scale = config_lib.load(ModelsConfig, before / "config.yaml").vae.scaling_factor
        cmd = stage_commands(workdir, args.vae, args.full, args.tune, scale)[name]
        run_stage(name, cmd, workdir / f"{name}_bundle", after=after)
    print(f"[tiny-world] all done in {(time.perf_counter() - t0) / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
