"""The one place bitro imports HistomicsTK (``requirements/histomicstk.txt``, installed with ``--no-deps``).

HistomicsTK is imported lazily, by the functions that use it, so ``bitro --help`` and the jobs that do not
use it never load it. ``HISTOMICSTK_MODULES`` lists every module bitro imports from it; the env
consistency test imports each one, so an install that lacks one of their dependencies fails there, not in
a pipeline job.

HistomicsTK's Xu SNMF stain estimation runs on ``nimfa`` 1.4.0, which still calls ``np.mat`` and
``np.Inf`` (removed in NumPy 2). :func:`nimfa_snmf_ready` gives nimfa's two modules that use them a view
of NumPy with those two names restored (``np.asmatrix``, ``np.inf``); NumPy itself is left untouched.
"""

from __future__ import annotations

import contextlib
import importlib
import sys
import types
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np

HISTOMICSTK_MODULES: tuple[str, ...] = (
    "histomicstk.preprocessing.color_deconvolution",
    "histomicstk.features",
    "histomicstk.segmentation.nuclear",
    "histomicstk.segmentation.label",
)
"""Every HistomicsTK module bitro imports."""

INSTALL_HINT = (
    "HistomicsTK is not installed: pip install --no-deps -r requirements/histomicstk.txt "
    "(make install does it)"
)

_NIMFA_MODULES = ("nimfa.methods.factorization.snmf", "nimfa.utils.linalg")


def histomicstk(module: str) -> Any:
    """Import one of :data:`HISTOMICSTK_MODULES`, with the install command in the error if it is missing."""
    if module not in HISTOMICSTK_MODULES:
        raise ValueError(f"{module} is not one of the HistomicsTK modules bitro uses: {HISTOMICSTK_MODULES}")
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"{INSTALL_HINT} ({exc})") from exc


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence the warnings HistomicsTK 1.4 and nimfa 1.4 raise on every call under NumPy 2 and
    scikit-image 0.26 (``weighted_centroid``, ``np.matrix``): thousands per slide, none actionable here."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        # Fractal dimension of a tiny object and statistics of a constant region; they come out NaN or
        # poorly conditioned, and bitro maps NaN to 0.
        warnings.simplefilter("ignore", np.exceptions.RankWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def _numpy_with_removed_aliases() -> types.ModuleType:
    view = types.ModuleType("numpy", "NumPy as nimfa 1.4 expects it: np.mat and np.Inf restored")
    view.__getattr__ = lambda name: getattr(np, name)  # type: ignore[method-assign]
    view.mat = np.asmatrix  # type: ignore[attr-defined]
    view.Inf = np.inf  # type: ignore[attr-defined]
    return view


def nimfa_snmf_ready() -> None:
    """Make nimfa's sparse NMF run under NumPy 2 (idempotent); raises ImportError if nimfa is missing."""
    try:
        importlib.import_module("nimfa")
    except ImportError as exc:
        raise ImportError(f"{INSTALL_HINT} ({exc})") from exc
    for name in _NIMFA_MODULES:
        module = sys.modules[name]
        if not hasattr(module.np, "mat"):
            module.np = _numpy_with_removed_aliases()
