"""What every per-slide output records about itself: the values' space, the model's level, its source."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

#: Spaces a prediction can be written in: amounts that add up (eq. 10 needs them).
SPACES: tuple[str, ...] = ("counts", "tpm")
#: Levels a model is trained on: ST spots, or bulk slides.
TRAINED_LEVELS: tuple[str, ...] = ("spot", "bulk")

Space = Literal["counts", "tpm"]
TrainedLevel = Literal["spot", "bulk"]


def check_space(space: str) -> str:
    """``space`` when it is one of :data:`SPACES`; a ``ValueError`` otherwise."""
    if space not in SPACES:
        raise ValueError(f"space must be one of {SPACES}, got {space!r}")
    return space


def check_level(level: str) -> str:
    """``level`` when it is one of :data:`TRAINED_LEVELS`; a ``ValueError`` otherwise."""
    if level not in TRAINED_LEVELS:
        raise ValueError(f"trained_level must be one of {TRAINED_LEVELS}, got {level!r}")
    return level


def _plain(value: Any, where: str) -> Any:
    """``value`` as nested dicts, lists, strings and finite numbers; ``None`` entries are dropped."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{where}.{k}") for k, v in value.items() if v is not None}
    if isinstance(value, np.ndarray):
        return _plain(value.tolist(), where)
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{where} is {value}: only finite numbers can be recorded")
        return value
    raise TypeError(f"{where} is a {type(value).__name__}; record strings, numbers, lists and dicts only")


def plain_record(model: Mapping[str, Any] | None) -> dict[str, Any]:
    """A free-form description of a model, checked to survive h5ad and JSON (no ``None``, no NaN)."""
    record = _plain(dict(model or {}), "model")
    json.dumps(record, allow_nan=False)
    return record


def gene_names(genes: Sequence[str], n_columns: int) -> list[str]:
    """``genes`` as a list of unique strings, one per column; a ``ValueError`` otherwise."""
    names = [str(g) for g in genes]
    if len(names) != n_columns:
        raise ValueError(f"{len(names)} gene names for {n_columns} columns")
    if len(set(names)) != len(names):
        duplicated = sorted({g for g in names if names.count(g) > 1})
        raise ValueError(f"duplicated gene names: {duplicated[:5]}")
    return names


def amounts(values: Any, n_rows: int, what: str) -> np.ndarray:
    """``values`` as a float32 (rows × genes) array of non-negative amounts (NaN allowed: not predicted)."""
    array = np.asarray(values.toarray() if hasattr(values, "toarray") else values, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] != n_rows:
        raise ValueError(f"{what} must be ({n_rows}, genes), got shape {array.shape}")
    if np.isinf(array).any():
        raise ValueError(f"{what} holds ±inf")
    if (array[np.isfinite(array)] < 0).any():
        raise ValueError(f"{what} holds negative values: write counts or TPM, not log or z-scored values")
    return array.astype(np.float32)


def bitro_uns(
    *,
    sample_id: str,
    space: str,
    trained_level: str,
    unit: str,
    model: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """``uns["bitro"]`` of a per-slide output: what its rows are and which model predicted them."""
    return {
        "sample_id": str(sample_id),
        "space": check_space(space),
        "trained_level": check_level(trained_level),
        "unit": unit,
        "model": plain_record(model),
    }
