"""Virtual samples as the model sees them, and patient folds for the benchmark."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bitro.demo.virtual import VirtualUnitSet
from bitro.errors import ConfigError
from bitro.features.graph import knn_graphs
from bitro.features.phenotype import Phenotypes
from bitro.folds.samples import SampleData

#: Neighbours of the kNN graph within each unit (the workflow's ``features.graph_k``).
GRAPH_K = 8


def sample_data(sample: VirtualUnitSet, phenotypes: Phenotypes | None = None) -> SampleData:
    """``sample`` as :class:`SampleData`: kNN graphs within units, offsets from unit centres, targets.

    ST targets are the spot counts (row = unit), bulk targets the slide's TPM (one row).
    """
    sizes = np.diff(sample.cell_offsets)
    unit = np.repeat(np.arange(sample.n_units), sizes)
    graph = knn_graphs(sample.cell_xy_um[:, 0], sample.cell_xy_um[:, 1], unit, k=GRAPH_K)
    rows = graph.cell_index.astype(np.int64)
    features = sample.features[rows]
    centres = sample.unit_xy_um[graph.unit_ids]
    unit_of_cell = np.repeat(np.arange(len(graph.unit_ids)), np.diff(graph.cell_offsets))
    labels = (
        phenotypes.assign(features).astype(np.int64) if phenotypes is not None else np.full(len(rows), -1)
    )
    return SampleData(
        sample_id=sample.sample_id,
        level=sample.level,
        features=features,
        offsets_um=(sample.cell_xy_um[rows] - centres[unit_of_cell]).astype(np.float32),
        phenotype=labels,
        cell_rows=rows,
        graph=graph,
        unit_xy_um=centres,
        targets=np.asarray(sample.counts, dtype=np.float64),
        space="tpm" if sample.level == "bulk" else "counts",
    )


@dataclass(frozen=True)
class BenchFold:
    """Sample indices of a fold's roles (validation carved from the training patients)."""

    name: str
    train: tuple[int, ...]
    validation: tuple[int, ...]
    test: tuple[int, ...]


def patient_folds(
    patients: Sequence[str], *, n_folds: int, validation_fraction: float, seed: int
) -> list[BenchFold]:
    """K folds over patients: each patient tested once; validation patients from the rest, seeded.

    Raises :class:`~bitro.errors.ConfigError` when there are too few patients for ``n_folds`` folds with a
    validation part.
    """
    names = sorted(set(patients))
    if len(names) < n_folds + 1:
        raise ConfigError("n_folds", f"{len(names)} patients cannot make {n_folds} folds with validation")
    rng = np.random.default_rng(seed)
    order = rng.permutation(names)
    groups = np.array_split(order, n_folds)
    folds = []
    for k, test in enumerate(groups):
        rest = [p for p in order if p not in set(test)]
        n_val = max(1, round(validation_fraction * len(rest)))
        validation = set(rng.permutation(rest)[:n_val])
        role = {p: "test" for p in test} | {p: "validation" for p in validation}
        pick = {
            r: tuple(i for i, p in enumerate(patients) if role.get(p, "train") == r)
            for r in ("train", "validation", "test")
        }
        folds.append(BenchFold(f"fold{k}", pick["train"], pick["validation"], pick["test"]))
    return folds
