"""Checks shared by the readers; each raises one ``InputError`` naming the file and the problem."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from bitro.errors import InputError, MissingInputError

_SHOW = 5


def _preview(items: Sequence[Any]) -> str:
    """Return the first few ``items`` joined by commas, with a count of the rest."""
    shown = ", ".join(str(item) for item in items[:_SHOW])
    rest = len(items) - _SHOW
    return shown + (f" … and {rest} more" if rest > 0 else "")


def require_file(path: str | Path, what: str = "required file") -> Path:
    """Return ``path`` as a ``Path`` if it is a file.

    Raises
    ------
    MissingInputError
        ``path`` does not exist or is not a file.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(path, what)
    return path


def require_dir(path: str | Path, what: str = "input directory") -> Path:
    """Return ``path`` as a ``Path`` if it is a directory; raise ``MissingInputError`` otherwise."""
    path = Path(path)
    if not path.is_dir():
        raise MissingInputError(path, what)
    return path


def read_json(path: str | Path, what: str = "JSON file") -> dict[str, Any]:
    """Read a JSON object.

    Returns
    -------
    dict
        The parsed object.

    Raises
    ------
    MissingInputError, InputError
        The file is missing, is not valid JSON, or does not hold an object.
    """
    path = require_file(path, what)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(path, f"is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise InputError(path, f"expected a JSON object, found {type(data).__name__}")
    return data


def positive_number(value: Any) -> float | None:
    """Return ``value`` as a positive finite float, or ``None`` when it is missing or not one."""
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def check_unique(names: Iterable[Any], path: str | Path, what: str) -> None:
    """Raise ``InputError`` naming ``path`` when ``names`` has duplicates.

    ``what`` describes the names (e.g. ``"gene names (var_names)"``).
    """
    series = pd.Series(list(names), dtype=object)
    dupes = series[series.duplicated()].unique().tolist()
    if dupes:
        raise InputError(path, f"duplicated {what}: {_preview(dupes)}")


def check_counts(matrix: Any, path: str | Path, what: str = "counts") -> None:
    """Raise ``InputError`` when a dense or sparse matrix holds NaN, infinite or negative values."""
    values = matrix.data if sp.issparse(matrix) else np.asarray(matrix)
    if values.size == 0:
        return
    if not np.issubdtype(values.dtype, np.number) or np.issubdtype(values.dtype, np.complexfloating):
        raise InputError(path, f"{what} are not real numbers (dtype {values.dtype})")
    if np.issubdtype(values.dtype, np.floating):
        n_bad = int(np.count_nonzero(~np.isfinite(values)))
        if n_bad:
            raise InputError(path, f"{what} contain {n_bad} NaN or infinite value(s)")
    n_neg = int(np.count_nonzero(values < 0))
    if n_neg:
        raise InputError(path, f"{what} contain {n_neg} negative value(s)")


def check_spatial(obsm: Any, n_obs: int, path: str | Path) -> np.ndarray:
    """Return ``obsm["spatial"]`` as a float64 (n, 2) array.

    Raises
    ------
    InputError
        ``spatial`` is missing, has the wrong shape, or holds non-finite values.
    """
    if "spatial" not in obsm:
        raise InputError(path, 'obsm["spatial"] (spot x, y in level-0 pixels) is missing')
    try:
        xy = np.asarray(obsm["spatial"], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(path, f'obsm["spatial"] is not numeric ({exc})') from exc
    if xy.ndim != 2 or xy.shape[0] != n_obs or xy.shape[1] < 2:
        raise InputError(path, f'obsm["spatial"] has shape {xy.shape}, expected ({n_obs}, 2)')
    xy = xy[:, :2]
    if not np.isfinite(xy).all():
        raise InputError(path, 'obsm["spatial"] contains NaN or infinite coordinates')
    return np.ascontiguousarray(xy)


def check_inside_image(
    xy: np.ndarray,
    dimensions: tuple[int, int],
    path: str | Path,
    image_path: str | Path,
    labels: Sequence[Any] | None = None,
    what: str = "spots",
) -> None:
    """Raise ``InputError`` naming ``path`` when points ``xy`` (level-0 px) lie outside the image.

    ``dimensions`` is the image's level-0 (width, height); ``labels`` name the points in the message.
    """
    width, height = dimensions
    outside = (xy[:, 0] < 0) | (xy[:, 1] < 0) | (xy[:, 0] >= width) | (xy[:, 1] >= height)
    if outside.any():
        idx = np.flatnonzero(outside)
        names = [labels[i] for i in idx] if labels is not None else idx.tolist()
        raise InputError(
            path,
            f"{len(idx)} of {len(xy)} {what} lie outside the image {Path(image_path).name} "
            f"({width}×{height} px): {_preview(names)}",
        )


def check_subset(needed: Iterable[Any], available: Iterable[Any], path: str | Path, what: str) -> None:
    """Raise ``InputError`` naming ``path`` when items of ``needed`` are not in ``available``."""
    have = set(available)
    missing = [item for item in needed if item not in have]
    if missing:
        raise InputError(path, f"{len(missing)} {what}: {_preview(missing)}")


def check_integer_counts(matrix: Any, path: str | Path, what: str = "counts", *, way_out: str = "") -> None:
    """Raise ``InputError`` when a matrix that must hold raw counts holds non-integer values.

    Normalised values (log1p, CPM) in place of counts are the usual cause: the message says so, shows a
    value, and adds ``way_out`` (where the raw counts may be).
    """
    values = matrix.data if sp.issparse(matrix) else np.asarray(matrix)
    if values.size == 0 or not np.issubdtype(values.dtype, np.floating):
        return
    fractional = values[values != np.round(values)]
    if fractional.size:
        example = float(fractional[0])
        raise InputError(
            path,
            f"{what} must be raw integer counts, but {fractional.size} value(s) are not integers (e.g. "
            f"{example:.4g}): normalised (log1p, CPM) values cannot be used as counts"
            + (f"; {way_out}" if way_out else ""),
        )


def check_not_empty(n: int, path: str | Path, what: str) -> None:
    """Raise ``InputError`` when a sample has no ``what`` (spots, cells) at all."""
    if n == 0:
        raise InputError(path, f"holds no {what}: an empty sample cannot be trained on or scored")


def check_not_all_zero(matrix: Any, path: str | Path, what: str = "counts") -> None:
    """Raise ``InputError`` when every value of an expression matrix is zero (nothing was measured)."""
    values = matrix.data if sp.issparse(matrix) else np.asarray(matrix)
    if values.size and not np.any(values):
        raise InputError(path, f"every one of its {what} is zero: the sample measured nothing")
    if sp.issparse(matrix) and matrix.nnz == 0 and np.prod(matrix.shape) > 0:
        raise InputError(path, f"every one of its {what} is zero: the sample measured nothing")
