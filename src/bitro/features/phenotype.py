"""Cell phenotypes: K-means on cell features, fitted on the training samples of a fold (Appendix C).

The centroids of a fold depend on its training samples only: the fit takes the training
samples' features and nothing else, and every cell (training, validation or test) is then labelled by
its nearest centroid. Above ``minibatch_above`` cells the fit is scikit-learn's ``MiniBatchKMeans``;
below, ``KMeans`` with several restarts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bitro._atomic import atomic_path
from bitro.errors import ConfigError, InputError
from bitro.io.validate import require_file

MINIBATCH_ABOVE = 100_000


@dataclass(frozen=True)
class Phenotypes:
    """K centroids in feature space and the training samples they were fitted on."""

    centroids: np.ndarray
    train_samples: tuple[str, ...]
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def k(self) -> int:
        return len(self.centroids)

    def assign(self, features: np.ndarray, *, chunk: int = 65_536) -> np.ndarray:
        """Nearest-centroid label (int16) of each row of ``features``."""
        features = np.asarray(features, dtype=np.float32)
        centroids = self.centroids.astype(np.float32)
        norms = (centroids**2).sum(axis=1)
        labels = np.empty(len(features), dtype=np.int16)
        for start in range(0, len(features), chunk):
            block = features[start : start + chunk]
            # ‖x − c‖² = ‖x‖² − 2x·c + ‖c‖²; ‖x‖² is the same for every centroid.
            labels[start : start + chunk] = np.argmin(norms - 2.0 * block @ centroids.T, axis=1)
        return labels


def fit_phenotypes(
    features: Mapping[str, np.ndarray],
    train: Sequence[str],
    *,
    k: int = 8,
    seed: int = 0,
    minibatch_above: int = MINIBATCH_ABOVE,
) -> Phenotypes:
    """Fit K-means on the cells of the ``train`` samples.

    Parameters
    ----------
    features
        Per-sample cell features (n_cells × d), by sample id; samples not in ``train`` are not read.
    train
        The fold's training samples.
    k
        Number of phenotypes (the paper uses 8).
    seed
        Seed of the initialisation.
    minibatch_above
        Use ``MiniBatchKMeans`` when the training cells exceed this.
    """
    # scikit-learn is imported here, not with the module: train and predict only assign to the centroids.
    from sklearn.cluster import KMeans, MiniBatchKMeans

    train = tuple(sorted(train))
    missing = [s for s in train if s not in features]
    if missing:
        raise ValueError(f"training samples without features: {missing}")
    x = np.concatenate([np.asarray(features[s], dtype=np.float32) for s in train])
    if len(x) < k:
        raise ConfigError("training.phenotypes_k", f"{len(x)} training cells cannot make {k} phenotypes")
    if len(x) > minibatch_above:
        model: KMeans | MiniBatchKMeans = MiniBatchKMeans(
            n_clusters=k, batch_size=4096, n_init=3, random_state=seed
        )
    else:
        model = KMeans(n_clusters=k, n_init=4, random_state=seed)
    model.fit(x)
    # Order phenotypes by size (largest first), so ids are comparable between runs.
    sizes = np.bincount(model.predict(x), minlength=k)
    order = np.argsort(-sizes, kind="stable")
    info = {
        "n_train_cells": len(x),
        "algorithm": type(model).__name__,
        "seed": seed,
        "inertia": float(model.inertia_),
    }
    return Phenotypes(model.cluster_centers_[order].astype(np.float64), train, info)


def write_phenotypes(phenotypes: Phenotypes, path: str | Path) -> None:
    """Write ``phenotypes.npz``: centroids and the training samples."""
    with atomic_path(path) as tmp:
        np.savez(
            tmp, centroids=phenotypes.centroids, train_samples=np.asarray(phenotypes.train_samples, dtype=str)
        )


def read_phenotypes(path: str | Path) -> Phenotypes:
    """Read ``phenotypes.npz``."""
    path = require_file(path, "phenotype centroids")
    try:
        with np.load(path) as data:
            return Phenotypes(data["centroids"], tuple(str(s) for s in data["train_samples"]))
    except (OSError, KeyError, ValueError) as exc:
        raise InputError(path, f"is not a phenotype file written by bitro ({exc})") from exc
