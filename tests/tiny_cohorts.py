"""Tiny cohorts for the training tests: in-memory samples and on-disk cohorts in the pipeline's layout.

A helper module, not a test module: the training, transfer, leakage and pipeline tests share it.
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from bitro.features.graph import knn_graphs, write_graph
from bitro.features.phenotype import fit_phenotypes, write_phenotypes
from bitro.folds.samples import SampleData
from bitro.folds.splits import leave_one_out, patient_split, write_folds
from bitro.genes.selection import write_gene_list
from bitro.preprocess.cells import write_cells
from bitro.preprocess.targets import write_targets
from bitro.preprocess.units import write_units

#: Tiny model settings for the transfer and pipeline tests.
TINY = {"dim": 16, "gat_heads": 2, "transformer_heads": 2, "position_dim": 4, "ff_mult": 2, "dropout": 0.1}

GENES = [f"G{i}" for i in range(6)]


def synthetic_sample(seed: int, *, level: str = "st", n_units: int = 40, features: int = 16) -> SampleData:
    """Spots whose counts follow the mean of a hidden linear read-out of their cells' features."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 14, size=n_units)
    unit_id = np.repeat(np.arange(n_units), sizes)
    centres = np.column_stack([np.arange(n_units) * 100.0, np.zeros(n_units)])
    xy = centres[unit_id] + rng.normal(0, 12, size=(len(unit_id), 2))
    graph = knn_graphs(xy[:, 0], xy[:, 1], unit_id, k=4)
    rows = graph.cell_index.astype(np.int64)
    x = rng.normal(size=(len(unit_id), features)).astype(np.float32)
    weights = np.random.default_rng(99).normal(size=(features, len(GENES)))
    rate = np.exp(1.5 + 0.6 * np.tanh(x @ weights))
    per_unit = np.zeros((n_units, len(GENES)))
    np.add.at(per_unit, unit_id, rate)
    counts = rng.poisson(per_unit).astype(np.float64)
    if level == "bulk":
        counts = counts.sum(axis=0, keepdims=True)
    unit_of_cell = np.repeat(np.arange(len(graph.unit_ids)), np.diff(graph.cell_offsets))
    return SampleData(
        sample_id=f"S{seed}",
        level=level,
        features=x[rows],
        offsets_um=(xy[rows] - centres[graph.unit_ids][unit_of_cell]).astype(np.float32),
        phenotype=(x[rows, 0] > 0).astype(np.int64),
        cell_rows=rows,
        graph=graph,
        unit_xy_um=centres[graph.unit_ids],
        targets=counts,
        space="counts" if level == "st" else "tpm",
    )


UNIVERSE = ["A1", "B2", "C3", "D4", "E5", "F6", "G7", "H8"]
WEIGHTS = np.random.default_rng(99).normal(size=(16, len(UNIVERSE)))


def write_sample(folder: Path, seed: int, level: str, patient: str, var_order: list[str]) -> None:
    """A tiny sample in the pipeline's layout; each gene's signal depends on its name only."""
    rng = np.random.default_rng(seed)
    n_units = 24 if level == "st" else 16
    sizes = rng.integers(1, 9, size=n_units)
    unit_id = np.repeat(np.arange(n_units), sizes)
    centres = np.column_stack([np.arange(n_units) * 100.0 + 50.0, np.full(n_units, 50.0)])
    xy = centres[unit_id] + rng.normal(0, 10, size=(len(unit_id), 2))
    x = rng.normal(size=(len(unit_id), 16)).astype(np.float32)
    # Counts are drawn for the whole universe, then stored in ``var_order``: same data, any order.
    rate = np.exp(1.5 + 0.6 * np.tanh(x @ WEIGHTS))
    per_unit = np.zeros((n_units, len(UNIVERSE)))
    np.add.at(per_unit, unit_id, rate)
    counts = rng.poisson(per_unit).astype(np.float64)[:, [UNIVERSE.index(g) for g in var_order]]
    if level == "bulk":
        counts = counts.sum(axis=0, keepdims=True)
    n = len(unit_id)
    cells = pd.DataFrame(
        {
            "cell_id": np.arange(n),
            "x_px": xy[:, 0] * 2,
            "y_px": xy[:, 1] * 2,
            "x_um": xy[:, 0],
            "y_um": xy[:, 1],
            "area_um2": np.full(n, 30.0),
            "unit_id": unit_id,
            "source": ["test"] * n,
            "class": pd.array([None] * n, dtype="string"),
            "geometry": [None] * n,
        }
    )
    units = pd.DataFrame(
        {
            "unit_id": np.arange(n_units),
            "x_px": centres[:, 0] * 2,
            "y_px": centres[:, 1] * 2,
            "x_um": centres[:, 0],
            "y_um": centres[:, 1],
            "diameter_um": np.full(n_units, 55.0),
            "in_tissue": np.ones(n_units, dtype=bool),
            "shape": pd.Categorical(["circle"] * n_units, categories=["circle", "square"]),
            "barcode": pd.array([f"u{i}" for i in range(n_units)], dtype="string"),
            "tissue_fraction": np.ones(n_units),
        }
    )
    folder.mkdir(parents=True)
    write_cells(cells, folder / "cells.parquet")
    write_units(units, folder / "units.parquet")
    write_graph(knn_graphs(xy[:, 0], xy[:, 1], unit_id, k=4), folder / "graph.npz")
    np.save(folder / "features.npy", x)
    adata = ad.AnnData(X=counts, var=pd.DataFrame(index=pd.Index(var_order)))
    adata.obs_names = [str(i) for i in range(len(counts))]
    adata.uns["bitro"] = {
        "sample_id": folder.name,
        "patient_id": patient,
        "level": level,
        "space": "counts" if level == "st" else "tpm",
    }
    write_targets(adata, folder / "targets.h5ad")


def write_cohort(
    root: Path, level: str, patients: dict[str, str], genes: list[str], var_order: list[str]
) -> Path:
    for seed, (sample, patient) in enumerate(sorted(patients.items())):
        write_sample(root / "samples" / sample, 100 * (level == "bulk") + seed, level, patient, var_order)
    write_gene_list(genes, root / "genes.txt")
    pd.DataFrame({"sample_id": list(patients), "patient_id": list(patients.values())}).to_csv(
        root / "sheet.tsv", sep="\t", index=False
    )
    samples = sorted(patients)
    if level == "bulk":
        folds = patient_split(root.name, samples, [patients[s] for s in samples], seed=0)
    else:
        folds = leave_one_out(root.name, samples, patients=[patients[s] for s in samples])
    write_folds(folds, root / "folds.json")
    fold = folds.folds[0]
    features = {s: np.load(root / "samples" / s / "features.npy") for s in fold.train}
    write_phenotypes(fit_phenotypes(features, fold.train, k=2, seed=0), root / "fold0" / "phenotypes.npz")
    return root
