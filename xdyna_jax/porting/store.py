"""The on-disk form of converted weights: ``DIR/params`` (Orbax) + ``DIR/config.yaml``.

``python -m xdyna_jax.porting convert`` writes it; ``load_converted`` reads it back for sampling,
training or ``export``. The folder is built under a temporary name beside ``DIR`` and renamed into place
when complete, so a failed or interrupted conversion leaves nothing behind.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from xdyna_jax import config as config_lib
from xdyna_jax.cli import atomic_dir

from .io import PortingError

from .convert import MODELS

KINDS = tuple(kind for _, kind in MODELS.values())


def config_class(kind: str):
    from xdyna_jax import models

    by_kind = {k: cfg_name for cfg_name, (_, k) in MODELS.items()}
    if kind not in by_kind:
        raise PortingError(f"unknown model kind {kind!r}; expected one of {KINDS}")
    return getattr(models, by_kind[kind])


def save_params(params, path: Path, force: bool = False) -> None:
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    if path.exists() and not force:
        raise PortingError(f"{path} exists (use --force to overwrite)")
    path.parent.mkdir(parents=True, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:  # writes to a temporary dir, then renames
        ckptr.save(path, params, force=force)


def restore_params(path: Path):
    import orbax.checkpoint as ocp

    path = Path(path).absolute()
    if not path.is_dir():
        raise PortingError(f"{path}: no Orbax checkpoint here (no such directory)")
    if not (path / "_METADATA").is_file():
        raise PortingError(f"{path}: not an Orbax checkpoint (no _METADATA file; expected the params/ folder "
                           f"written by `convert`)")
    try:
        with ocp.StandardCheckpointer() as ckptr:
            return ckptr.restore(path)
    except (OSError, ValueError, KeyError) as e:  # missing / cut-short files, unparsable metadata
        raise PortingError(f"{path}: damaged Orbax checkpoint ({type(e).__name__}: {e})") from e


def save_converted(out: Path, params, cfg, report: str | None = None, force: bool = False) -> None:
    """Write DIR/params, DIR/config.yaml and (optionally) DIR/report.txt, all or nothing."""
    out = Path(out).absolute()
    with atomic_dir(out, overwrite=force, hint=" (use --force to overwrite)") as tmp:
        save_params(params, tmp / "params")
        (tmp / "config.yaml").write_text(yaml.safe_dump(config_lib.to_dict(cfg), sort_keys=False))
        if report is not None:
            (tmp / "report.txt").write_text(report + "\n")


def load_converted(path: str | Path, kind: str, overrides=()) -> tuple[Any, Any]:
    """(params, model config) from a directory written by ``convert``."""
    path = Path(path)
    cfg_file = path / "config.yaml"
    if not cfg_file.is_file():
        raise PortingError(f"{path}: no config.yaml (expected a directory written by `convert`)")
    cfg = config_lib.load(config_class(kind), cfg_file, overrides)
    return restore_params(path / "params"), cfg
