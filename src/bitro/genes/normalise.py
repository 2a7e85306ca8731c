"""Target normalisation: log1p, then a z-score per gene with the training split's statistics (eq. 21).

``y~ = (log1p(y) − μ) / (σ + ε)`` where μ and σ (population standard deviation) come from the training
units of the fold only. The inverse, ``expm1(y~ · (σ + ε) + μ)``, recovers counts or TPM
exactly, which is the space pseudo-cell profiles live in. ``zscore=False`` is the paper's
"w/o Norm." ablation: targets are log1p values only (non-negative, so a Softplus output fits them).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bitro._atomic import atomic_path
from bitro.errors import InputError
from bitro.io.validate import require_file

#: ε of eq. 21: keeps a gene that is constant in training finite (it maps to 0).
EPSILON = 1e-6


@dataclass(frozen=True)
class TargetTransform:
    """log1p + per-gene z-score with fixed statistics.

    Attributes
    ----------
    genes
        Gene names, the column order of every array this transform sees.
    mean, std
        Per-gene statistics of log1p values on the training units.
    zscore
        False for the "w/o Norm." ablation (log1p only).
    space
        What the raw values are: ``counts`` or ``tpm``.
    """

    genes: tuple[str, ...]
    mean: np.ndarray
    std: np.ndarray
    zscore: bool = True
    space: str = "counts"
    epsilon: float = EPSILON
    params: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def fit(
        cls, values: np.ndarray, genes: Sequence[str], *, zscore: bool = True, space: str = "counts"
    ) -> TargetTransform:
        """Statistics from training ``values`` (units × genes, raw counts or TPM)."""
        values = np.asarray(values, dtype=np.float64)
        if values.ndim != 2 or values.shape[1] != len(genes):
            raise ValueError(f"values of shape {values.shape} do not match {len(genes)} genes")
        if values.shape[0] == 0:
            raise ValueError("no training units to fit the target statistics on")
        if (values < 0).any():
            raise ValueError("expression values must be non-negative counts or TPM")
        logged = np.log1p(values)
        return cls(
            genes=tuple(map(str, genes)),
            mean=logged.mean(axis=0),
            std=logged.std(axis=0),
            zscore=zscore,
            space=space,
            params={"n_units": int(values.shape[0])},
        )

    @property
    def scale(self) -> np.ndarray:
        return self.std + self.epsilon

    def forward(self, values: np.ndarray) -> np.ndarray:
        """Model targets from raw values (units × genes)."""
        logged = np.log1p(np.asarray(values, dtype=np.float64))
        return (logged - self.mean) / self.scale if self.zscore else logged

    def to_log1p(self, targets: np.ndarray) -> np.ndarray:
        """log1p values from model outputs."""
        targets = np.asarray(targets, dtype=np.float64)
        return targets * self.scale + self.mean if self.zscore else targets

    def inverse(self, targets: np.ndarray) -> np.ndarray:
        """Raw values (counts or TPM) from model outputs; negative results of a poor fit are clipped to 0."""
        return np.clip(np.expm1(self.to_log1p(targets)), 0.0, None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "genes": list(self.genes),
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "zscore": self.zscore,
            "space": self.space,
            "epsilon": self.epsilon,
            "params": self.params,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TargetTransform:
        genes = tuple(map(str, data["genes"]))
        mean, std = np.asarray(data["mean"], np.float64), np.asarray(data["std"], np.float64)
        if mean.shape != (len(genes),) or std.shape != (len(genes),):
            raise ValueError("statistics do not match the gene list")
        return cls(
            genes=genes,
            mean=mean,
            std=std,
            zscore=bool(data["zscore"]),
            space=str(data["space"]),
            epsilon=float(data.get("epsilon", EPSILON)),
            params=dict(data.get("params", {})),
        )


def write_transform(transform: TargetTransform, path: str | Path) -> None:
    """Write the statistics as JSON."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(transform.to_dict(), indent=1))


def read_transform(path: str | Path) -> TargetTransform:
    """Read statistics written by :func:`write_transform`."""
    path = require_file(path, "target statistics")
    try:
        return TargetTransform.from_dict(json.loads(path.read_text()))
    except (KeyError, ValueError, TypeError) as exc:
        raise InputError(path, f"is not a bitro target statistics file ({exc})") from exc
