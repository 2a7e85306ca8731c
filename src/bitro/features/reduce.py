"""PCA of cell embeddings to 128 dimensions (paper §3.2), per sample or with one basis per fold.

- ``sample`` scope (the paper's): each sample gets its own PCA, so feature axes differ between samples.
- ``cohort`` scope: one basis fitted on the training samples of a fold, applied to every
  sample of that fold, so all samples share one feature space.

Large inputs use randomised SVD (Halko et al.), which scikit-learn's ``PCA`` selects with
``svd_solver="randomized"``; a fit on more than ``max_fit_cells`` cells uses a seeded subsample of them.
A sample with fewer cells (or embedding dimensions) than components gets zero columns for the missing
components, so every features file is N × ``n_components``.
"""

from __future__ import annotations

import mmap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bitro._atomic import atomic_path
from bitro.errors import InputError
from bitro.io.validate import require_file

#: Inputs with more cells than this use randomised SVD.
RANDOMIZED_ABOVE = 20_000


@dataclass(frozen=True)
class PCABasis:
    """A fitted PCA basis: ``features = (x − mean) · componentsᵀ``, zero-padded to ``n_components``."""

    mean: np.ndarray
    components: np.ndarray
    explained_variance_ratio: np.ndarray
    n_components: int
    info: dict[str, Any] = field(default_factory=dict)

    def transform(self, x: np.ndarray, *, chunk: int = 65_536) -> np.ndarray:
        """Project ``x`` (n × d) to n × ``n_components`` float32, in chunks of rows.

        A memory-mapped ``x`` (``embeddings.npy``) is read once, front to back, and the pages of the rows
        already projected are handed back as it goes, so that a 10⁶-cell slide's 2.5 GB of embeddings
        never sit in memory at once.
        """
        source = x
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.mean.shape[0]:
            raise ValueError(f"expected n × {self.mean.shape[0]} embeddings, got {x.shape}")
        out = np.zeros((len(x), self.n_components), dtype=np.float32)
        components = self.components.astype(np.float32)
        mean = self.mean.astype(np.float32)
        for start in range(0, len(x), chunk):
            block = x[start : start + chunk].astype(np.float32) - mean
            out[start : start + chunk, : len(components)] = block @ components.T
            _release_pages(source, start + chunk)
        return out


def _release_pages(array: np.ndarray, rows: int) -> None:
    """Drop the mapped pages of the first ``rows`` rows of a C-ordered read-only ``numpy.memmap`` from
    this process (the file is unchanged; reading them again maps them again)."""
    mapping = getattr(array, "_mmap", None)
    if mapping is None or not array.flags.c_contiguous or getattr(array, "mode", "r") != "r":
        return
    end = array.offset % mmap.ALLOCATIONGRANULARITY + min(rows, len(array)) * array.strides[0]
    end -= end % mmap.PAGESIZE
    if end > 0:
        mapping.madvise(mmap.MADV_DONTNEED, 0, end)


def fit_pca(
    x: np.ndarray, *, n_components: int = 128, seed: int = 0, max_fit_cells: int = 500_000
) -> PCABasis:
    """Fit a PCA basis on embeddings ``x`` (n × d)."""
    # scikit-learn is imported here, not with the module: train and predict read bases without fitting one.
    from sklearn.decomposition import PCA

    x = np.asarray(x)
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"expected a non-empty n × d array, got shape {x.shape}")
    rng = np.random.default_rng(seed)
    fit_rows = x if len(x) <= max_fit_cells else x[np.sort(rng.choice(len(x), max_fit_cells, replace=False))]
    fit_rows = fit_rows.astype(np.float32)
    fitted = min(n_components, fit_rows.shape[0], fit_rows.shape[1])
    solver = "randomized" if len(fit_rows) > RANDOMIZED_ABOVE and fitted < min(fit_rows.shape) else "full"
    pca = PCA(n_components=fitted, svd_solver=solver, random_state=seed)
    pca.fit(fit_rows)
    return PCABasis(
        mean=pca.mean_.astype(np.float64),
        components=pca.components_.astype(np.float64),
        explained_variance_ratio=pca.explained_variance_ratio_.astype(np.float64),
        n_components=n_components,
        info={"solver": solver, "n_fit_cells": len(fit_rows), "n_fitted_components": fitted, "seed": seed},
    )


def fit_cohort_pca(
    train: Sequence[np.ndarray],
    *,
    n_components: int = 128,
    seed: int = 0,
    max_fit_cells: int = 500_000,
) -> PCABasis:
    """One basis from the training samples' embeddings only, each sample contributing in proportion."""
    if not train:
        raise ValueError("a cohort PCA needs at least one training sample")
    rng = np.random.default_rng(seed)
    total = sum(len(x) for x in train)
    share = min(1.0, max_fit_cells / max(total, 1))
    parts = []
    for x in train:
        take = len(x) if share >= 1.0 else max(1, round(len(x) * share))
        rows = np.arange(len(x)) if take >= len(x) else np.sort(rng.choice(len(x), take, replace=False))
        parts.append(np.asarray(x)[rows])
    return fit_pca(np.concatenate(parts), n_components=n_components, seed=seed, max_fit_cells=max_fit_cells)


def write_basis(basis: PCABasis, path: str | Path) -> None:
    """Write a basis as ``.npz`` (mean, components, explained_variance_ratio, n_components)."""
    with atomic_path(path) as tmp:
        np.savez(
            tmp,
            mean=basis.mean,
            components=basis.components,
            explained_variance_ratio=basis.explained_variance_ratio,
            n_components=basis.n_components,
        )


def read_basis(path: str | Path) -> PCABasis:
    """Read a basis written by :func:`write_basis`."""
    path = require_file(path, "PCA basis")
    try:
        with np.load(path) as data:
            return PCABasis(
                mean=data["mean"],
                components=data["components"],
                explained_variance_ratio=data["explained_variance_ratio"],
                n_components=int(data["n_components"]),
            )
    except (OSError, KeyError, ValueError) as exc:
        raise InputError(path, f"is not a PCA basis written by bitro ({exc})") from exc
