"""Reading and writing official state dicts as ``{key: np.ndarray}``.

Formats: ``.safetensors`` (read with safetensors' numpy backend, no torch needed) and torch pickles
``.ckpt`` / ``.pth`` / ``.pt`` / ``.bin`` (torch is imported only for those, and loaded with
``weights_only=True`` so a pickle cannot run code).

Dtypes are kept exactly: float16 stays float16, and bfloat16 becomes ``ml_dtypes.bfloat16`` (the
numpy bfloat16 that JAX itself uses), so nothing is rounded or widened here; the converters cast to
the model's param dtype.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from xdyna_jax.cli import DAMAGED_ZIP, PICKLE, SAFETENSORS, TORCH_ZIP, UserError, atomic_file, sniff

PICKLE_SUFFIXES = (".ckpt", ".pth", ".pt", ".bin")
# the kinds torch.load is tried on (a cut-short zip too: torch then says how it is damaged)
TORCH_KINDS = (TORCH_ZIP, PICKLE, DAMAGED_ZIP)


class PortingError(UserError):
    """A checkpoint does not fit the model (or cannot be read); the message names what and where."""


def read_state_dict(path: str | Path, select: str | None = None, mmap: bool = False) -> dict[str, np.ndarray]:
    """Read an official state dict from a file.

    Unwraps a ``"state_dict"`` wrapper, strips a leading ``"module."`` (DistributedDataParallel) from
    keys, and with ``select`` returns that sub-dict (``"image_proj"`` of an IP-Adapter ``.bin``).
    A ``select`` key that is absent is an error; a file that holds nothing but tensors is returned as is.
    ``mmap``: a torch pickle's tensors are views of the mapped file, read from disk only where used (copy what
    you keep; the mapping goes with the last view).
    """
    return unwrap(read_raw(path, mmap=mmap), select=select, where=str(path))


def read_raw(path: str | Path, mmap: bool = False) -> Any:
    """The file's top-level object as stored (tensors still torch tensors for pickles)."""
    path = Path(path)
    if path.is_dir():
        raise PortingError(f"{path}: is a directory (expected a checkpoint file)")
    if not path.is_file():
        raise PortingError(f"{path}: no such file")
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    if path.suffix in PICKLE_SUFFIXES:
        return _read_pickle(path, mmap)
    raise PortingError(f"{path}: unknown checkpoint format {path.suffix!r} "
                       f"(expected .safetensors or one of {', '.join(PICKLE_SUFFIXES)}); it looks like {sniff(path)}")


def unwrap(raw: Mapping[str, Any], select: str | None = None, where: str = "state dict") -> dict[str, np.ndarray]:
    """The dict-level unwrapping of ``read_state_dict``, usable on an in-memory dict."""
    if not isinstance(raw, Mapping):
        raise PortingError(f"{where}: expected a dict of tensors, found {type(raw).__name__}")
    if "state_dict" in raw and isinstance(raw["state_dict"], Mapping):
        raw = raw["state_dict"]
    if select is not None:
        if select not in raw or not isinstance(raw[select], Mapping):
            raise PortingError(f"{where}: no {select!r} sub-dict (top-level keys: {sorted(raw)[:10]})")
        raw = raw[select]
    out: dict[str, np.ndarray] = {}
    for k, v in raw.items():
        if not isinstance(k, str):
            raise PortingError(f"{where}: non-string key {k!r}")
        # only a leading prefix: "motion_modules." must never be touched
        name = k[len("module."):] if k.startswith("module.") else k
        if name in out:
            raise PortingError(f"{where}: key {name!r} occurs both with and without the 'module.' prefix")
        try:
            out[name] = to_numpy(v)
        except TypeError as e:
            raise PortingError(f"{where}: key {k!r}: {e}") from e
    return out


def to_numpy(v: Any) -> np.ndarray:
    """A torch tensor or array-like -> numpy, dtype kept (bfloat16 via ``ml_dtypes``)."""
    if isinstance(v, np.ndarray):
        return v
    if type(v).__module__.startswith("torch"):
        import torch

        if not isinstance(v, torch.Tensor):
            raise TypeError(f"expected a tensor, found {type(v).__name__}")
        t = v.detach().cpu().contiguous()
        if t.dtype == torch.bfloat16:
            import ml_dtypes

            # numpy has no bfloat16; reinterpret the bits instead of rounding through float32
            return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        return t.numpy()
    if hasattr(v, "__array__"):
        return np.asarray(v)
    raise TypeError(f"expected a tensor, found {type(v).__name__}")


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    kind = sniff(path)
    if kind != SAFETENSORS:  # say what it is instead of the library's "header too small"
        raise PortingError(f"{path}: cannot read as a safetensors file: it looks like {kind}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise PortingError(f"{path}: cannot read safetensors file, damaged or truncated ({e})") from e


def _read_pickle(path: Path, mmap: bool = False) -> Any:
    kind = sniff(path)
    if kind not in TORCH_KINDS:
        hint = " (give it a .safetensors name)" if kind == SAFETENSORS else ""
        raise PortingError(f"{path}: not a torch checkpoint: it looks like {kind}{hint}")
    try:
        import torch
    except ImportError as e:
        raise PortingError(f"{path}: reading torch pickles needs torch installed "
                           f"(or convert the file to .safetensors)") from e
    if kind == DAMAGED_ZIP:  # torch would only say "failed finding central directory"
        raise PortingError(f"{path}: damaged or truncated torch checkpoint (its zip archive is incomplete)")
    # torch maps only zip-format files (torch.save's default since 1.6); a legacy pickle is read whole
    mmap = mmap and kind == TORCH_ZIP
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        if "weights only load failed" not in str(e).lower():
            raise PortingError(f"{path}: damaged or truncated torch checkpoint ({_first_line(e)})") from e
        # a real checkpoint with pickled objects besides tensors: name them, never advise unsafe loading
        why = next((ln.split("WeightsUnpickler error:", 1)[1].split(" was not")[0].strip()
                    for ln in str(e).splitlines() if "WeightsUnpickler error:" in ln), _first_line(e))
        raise PortingError(f"{path}: torch.load(weights_only=True) failed: the file holds Python objects besides "
                           f"tensors and plain containers ({why}); unpickling those could run code, so it is "
                           f"not loaded. Re-save its tensors alone (a state dict) as .safetensors") from e
    except (RuntimeError, EOFError, KeyError, ValueError, OSError, AttributeError, IndexError) as e:
        # what torch raises for cut-short zips / pickles and stray bytes, by version
        raise PortingError(f"{path}: damaged or truncated torch checkpoint ({type(e).__name__}: "
                           f"{_first_line(e)})") from e


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0][:200] if lines else type(e).__name__


def write_safetensors(state: Mapping[str, np.ndarray], path: str | Path, metadata: Mapping[str, str] | None = None):
    """Write ``state`` to ``path`` (written under a temporary name, renamed when complete)."""
    from safetensors.numpy import save_file

    with atomic_file(path) as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in state.items()}, str(tmp),
                  metadata=dict(metadata) if metadata else None)


def find_diffusers_weights(folder: str | Path) -> Path:
    """The weight file of a diffusers model folder (safetensors preferred, as diffusers does)."""
    folder = Path(folder)
    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    raise PortingError(f"{folder}: no diffusion_pytorch_model.safetensors or .bin in this folder")
