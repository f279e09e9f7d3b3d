"""The one error path of every command-line tool (``porting``, ``data``, ``sample.py``, ``train.py``, eval).

* ``UserError``: an expected failure caused by the input (a file, an option, the destination). ``run``
  prints it as ONE line, ``error: <what> (<which file or option>): <what was expected>``, and returns exit
  code 2. ``config.ConfigError`` and ``OSError`` (permissions, disk full) are treated the same way. Any
  other exception is a bug and keeps its traceback.
* ``ArgumentParser``: argparse whose usage errors become ``UserError`` too (same one line, code 2);
  sub-parsers made with ``add_subparsers`` inherit it.
* Parse-time validators for ``type=``: ``int_range``, ``float_range``, ``even_int``.
* ``check_output_path``: a destination is usable (nothing in the way, writable) before any work starts.
* ``atomic_file`` / ``atomic_dir``: write to a temporary name in the same directory, rename when complete;
  on any failure the temporary (and any parent folder made for it) is removed, so nothing is half written.
* ``sniff``: what kind of file a path looks like, for messages ("looks like a PNG image").

New command: build its parser with ``cli.ArgumentParser``, raise ``UserError`` for bad input, and end the
module with ``sys.exit(cli.run(main))``; its bad-input table goes in the tests (``tests/cli_table.py``).
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import secrets
import shutil
import sys
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

from xdyna_jax.config import ConfigError

EXIT_USER_ERROR = 2


class UserError(ValueError):
    """An expected failure caused by the input; the message names the file or option and what was expected."""


EXPECTED = (UserError, ConfigError, OSError)


def one_line(err: BaseException) -> str:
    """The message of an expected error on one line (multi-line key lists are joined with '; ')."""
    if isinstance(err, OSError) and not isinstance(err, UserError) and err.filename is not None:
        where = f"{err.filename} -> {err.filename2}" if err.filename2 is not None else str(err.filename)
        text = f"{where}: {err.strerror or type(err).__name__}"
    else:
        text = str(err) or type(err).__name__
    parts = [s.strip() for s in text.splitlines() if s.strip()]
    # "header:" then its list items reads as "header: a; b"
    return "".join(p if i == 0 else (" " if parts[i - 1].endswith(":") else "; ") + p for i, p in enumerate(parts))


def run(main: Callable[[Optional[Sequence[str]]], Optional[int]], argv: Optional[Sequence[str]] = None) -> int:
    """Call ``main(argv)``; an expected failure becomes one ``error: ...`` line on stderr and exit code 2."""
    try:
        code = main(argv)
    except EXPECTED as e:
        print(f"error: {one_line(e)}", file=sys.stderr, flush=True)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("error: interrupted (outputs in progress were removed)", file=sys.stderr, flush=True)
        return 130
    return 0 if code is None else int(code)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with usage errors raised as ``UserError`` (one line, exit code 2 through ``run``)."""

    def error(self, message):
        raise UserError(f"{self.prog}: {message} (see {self.prog} --help)")


# ---------------------------------------------------------------- parse-time validators (argparse type=)

def _bounds(lo, hi, lo_open=False) -> str:
    parts = []
    if lo is not None:
        parts.append(f"{'>' if lo_open else '>='} {lo}")
    if hi is not None:
        parts.append(f"<= {hi}")
    return " and ".join(parts)


def int_range(lo: Optional[int] = None, hi: Optional[int] = None) -> Callable[[str], int]:
    """``type=`` for an integer in ``[lo, hi]`` (either bound optional)."""
    want = f"an integer {_bounds(lo, hi)}".rstrip()

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}") from None
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}")
        return value

    parse.__name__ = want
    return parse


def float_range(lo: Optional[float] = None, hi: Optional[float] = None,
                lo_open: bool = False) -> Callable[[str], float]:
    """``type=`` for a finite number in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``)."""
    want = f"a finite number {_bounds(lo, hi, lo_open)}".rstrip()

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}") from None
        bad_lo = lo is not None and (value <= lo if lo_open else value < lo)
        if not math.isfinite(value) or bad_lo or (hi is not None and value > hi):
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}")
        return value

    parse.__name__ = want
    return parse


def even_int(lo: int = 2) -> Callable[[str], int]:
    """``type=`` for an even integer >= ``lo`` (H.264 yuv420p frame sides)."""
    base = int_range(lo)

    def parse(text: str) -> int:
        value = base(text)
        if value % 2:
            raise argparse.ArgumentTypeError(f"expected an even integer >= {lo} (H.264 needs even sides), "
                                             f"got {text!r}")
        return value

    parse.__name__ = f"even integer >= {lo}"
    return parse


# ---------------------------------------------------------------- paths

def check_input_file(path, what: str, option: str = "") -> Path:
    """``path`` is an existing, non-empty regular file; else a ``UserError`` naming it and ``what`` it should be."""
    path = Path(path)
    label = f"{option} {path}" if option else str(path)
    if not path.exists():
        raise UserError(f"{label}: no such file (expected {what})")
    if path.is_dir():
        raise UserError(f"{label}: is a directory (expected {what})")
    if path.stat().st_size == 0:
        raise UserError(f"{label}: empty file, 0 bytes (expected {what})")
    return path


def check_output_path(path, kind: str = "file", option: str = "--out", overwrite: bool = True,
                      suffixes: Sequence[str] = (), hint: str = "") -> Path:
    """Check before any work that ``path`` can be written as a ``kind`` ('file' or 'dir').

    Missing parent folders are allowed (they are made when the output is written), but the nearest
    existing ancestor must be a writable directory; an existing ``path`` must be of the same kind, and
    is refused when ``overwrite`` is false (``hint`` says how to allow it).
    """
    if kind not in ("file", "dir"):
        raise ValueError(f"kind must be 'file' or 'dir', got {kind!r}")
    path = Path(path)
    label = f"{option} {path}" if option else str(path)
    if suffixes and path.suffix.lower() not in suffixes:
        raise UserError(f"{label}: expected a file name ending in {' or '.join(suffixes)}")
    if path.exists() or path.is_symlink():
        if kind == "file" and path.is_dir():
            raise UserError(f"{label}: is a directory (expected a file path)")
        if kind == "dir" and not path.is_dir():
            raise UserError(f"{label}: exists and is not a directory")
        if not overwrite:
            raise UserError(f"{label}: already exists{hint}")
    parent = path.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{label}: cannot be created, {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{label}: cannot write into {parent} (permission denied)")
    return path


def _make_parents(folder: Path) -> list[Path]:
    """mkdir -p ``folder``; returns the folders it created, outermost first (to undo on failure)."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    created = []
    try:
        for d in reversed(missing):
            d.mkdir()
            created.append(d)
    except OSError:
        _remove_empty(created)
        raise
    return created


def _remove_empty(created: list[Path]) -> None:
    for d in reversed(created):
        with contextlib.suppress(OSError):  # not empty (someone else wrote there): keep it
            d.rmdir()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _temp_name(path: Path, tag: str) -> Path:
    # same folder (so the final rename is atomic), hidden, and the same suffix (writers pick formats by it)
    return path.with_name(f".{path.stem}.{tag}-{os.getpid()}-{secrets.token_hex(3)}{path.suffix}")


@contextlib.contextmanager
def atomic_file(path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends normally it is renamed onto ``path``.

    The block must write the file (a writer that refuses to write raises, and nothing is left).
    """
    path = Path(path)
    created = _make_parents(path.absolute().parent)
    tmp = _temp_name(path, "partial")
    try:
        yield tmp
        if not tmp.is_file():
            raise RuntimeError(f"atomic_file: nothing was written to {tmp}")
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        _remove_empty(created)
        raise


@contextlib.contextmanager
def atomic_dir(path, overwrite: bool = False, hint: str = "") -> Iterator[Path]:
    """Yield a fresh empty folder beside ``path``; when the block ends normally it replaces ``path``.

    An existing ``path`` is an error unless ``overwrite`` (then it is removed only after the new one is
    complete). On failure the temporary folder and any parent folders made for it are removed.
    """
    path = Path(path)
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise UserError(f"{path}: already exists{hint}")
    created = _make_parents(path.absolute().parent)
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}-{secrets.token_hex(3)}")
    try:
        tmp.mkdir()  # os.mkdir applies the umask, unlike tempfile.mkdtemp's 0o700
        yield tmp
        if path.exists() or path.is_symlink():
            old = _temp_name(path, "old")
            os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
        else:
            os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        _remove_empty(created)
        raise


@contextlib.contextmanager
def listing_completed(done: list) -> Iterator[list]:
    """For batch commands: an expected error after some outputs were written says which ones are complete."""
    try:
        yield done
    except EXPECTED as e:
        if not done:
            raise
        raise UserError(f"{one_line(e)} (stopped; complete outputs: {', '.join(map(str, done))})") from e


# ---------------------------------------------------------------- what a file looks like

# sniff() results that readers test for (the others are only shown in messages)
SAFETENSORS = "a safetensors file"
TORCH_ZIP = "a torch checkpoint (zip format)"
PICKLE = "a Python pickle (legacy torch.save format or a plain pickle)"
DAMAGED_ZIP = "a damaged or truncated zip archive (a torch checkpoint or .npz cut short?)"
NPZ = "a numpy .npz archive"

_MAGIC = ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
          (b"\x93NUMPY", "a numpy .npy array"), (b"\x89HDF", "an HDF5 file"), (b"GGUF", "a GGUF file"),
          (b"\x1aE\xdf\xa3", "a Matroska/WebM video"), (b"\x1f\x8b", "a gzip file"),
          (b"7z\xbc\xaf", "a 7-zip archive"), (b"%PDF", "a PDF document"))


def sniff(path) -> str:
    """What ``path`` looks like from its first bytes, e.g. 'a safetensors file', 'a PNG image', 'an empty file'."""
    path = Path(path)
    if path.is_dir():
        return "a directory"
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError as e:
        return f"an unreadable file ({e.strerror})"
    if size == 0:
        return "an empty file (0 bytes)"
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if head[4:8] == b"ftyp":
        return "an MP4/QuickTime video"
    if head[:4] == b"RIFF":
        return {b"WEBP": "a WebP image", b"AVI ": "an AVI video"}.get(head[8:12], "a RIFF file")
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return _zip_kind(path)
    if len(head) >= 9 and head[8:9] == b"{":
        n = int.from_bytes(head[:8], "little")
        return SAFETENSORS if 8 + n <= size else "a truncated safetensors file (header cut short)"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return PICKLE
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "binary data of no format known here"
    stripped = text.lstrip()
    if stripped[:1] in ("{", "["):
        return "a JSON text file"
    return "a text file"


def _zip_kind(path: Path) -> str:
    import zipfile

    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError, EOFError):
        return DAMAGED_ZIP
    if any(n.endswith("data.pkl") for n in names):
        return TORCH_ZIP
    if names and all(n.endswith(".npy") for n in names):
        return NPZ
    return "a zip archive"
