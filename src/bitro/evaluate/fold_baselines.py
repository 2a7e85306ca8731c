"""Baselines on a fold, scored exactly like BiTro: ``baselines.tsv`` (paper Tables 1–3).

Every baseline sees the unit-mean cell embedding (``embeddings.npy`` averaged over a unit's cells, or over
a bulk slide's cells) and regresses log1p expression; it is fitted on the fold's training and validation
units (BiTro uses the validation units for early stopping, the MLP carves its own validation from them by
sample) and predicts the test units the BiTro model predicts, with the same metrics in the same spaces.

- ``training_mean``: the mean of the training units;
- ``hest_probe``: StandardScaler → PCA 256 → Ridge (HEST-Benchmark);
- ``mlp``: two hidden layers of 1024 (the paper's UNI+MLP);
- ``oracle_composition`` (demo only): Ridge on the true cell-type fractions of each unit, read from the
  demo's ``truth/`` folder — the ceiling of what cell composition alone explains.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from bitro._atomic import atomic_path
from bitro.evaluate.baselines import (
    HestProbe,
    MLPBaseline,
    OracleComposition,
    TrainingMean,
    unit_mean_embeddings,
)
from bitro.features.embeddings import read_embeddings
from bitro.folds.splits import Fold, in_strips, read_folds
from bitro.genes.selection import align_genes, read_gene_list
from bitro.metrics import metric_rows
from bitro.preprocess.cells import assign_units, read_cells
from bitro.preprocess.units import read_units

log = logging.getLogger("bitro")


@dataclass
class UnitTable:
    """Units of one role in one fold: features, targets (raw), sample of each row."""

    embedding: np.ndarray
    composition: np.ndarray | None
    targets: np.ndarray
    groups: np.ndarray
    names: np.ndarray


def _composition(truth: Path, units: pd.DataFrame, types: Sequence[str], *, bulk: bool) -> np.ndarray:
    cells = ad.read_h5ad(truth).obs
    kind = pd.Categorical(cells["cell_type"].astype(str), categories=list(types)).codes
    if bulk:
        counts = np.bincount(kind[kind >= 0], minlength=len(types))[None].astype(np.float64)
    else:
        unit = assign_units(cells["x_um"].to_numpy(), cells["y_um"].to_numpy(), units)
        keep = (unit >= 0) & (kind >= 0)
        counts = np.zeros((len(units), len(types)))
        np.add.at(counts, (unit[keep], kind[keep]), 1.0)
    total = counts.sum(axis=1, keepdims=True)
    return np.divide(counts, total, out=np.full_like(counts, np.nan), where=total > 0)


def _sample_units(
    folder: Path,
    genes: Sequence[str],
    *,
    role: str,
    fold: Fold,
    truth: Path | None,
    cell_types: Sequence[str],
) -> UnitTable:
    cells = read_cells(folder / "cells.parquet", geometry=False)
    units = read_units(folder / "units.parquet")
    embeddings, _ = read_embeddings(folder / "embeddings.npy")
    targets_path = folder / "targets.h5ad"
    adata = align_genes(ad.read_h5ad(targets_path), genes, source=targets_path)
    values = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
    level = adata.uns.get("bitro", {}).get("level", "st")
    unit_of_cell = cells["unit_id"].to_numpy()
    if level == "bulk":
        inside = unit_of_cell >= 0
        means = unit_mean_embeddings(embeddings[inside], np.zeros(int(inside.sum()), np.int64), 1).means
        composition = _composition(truth, units, cell_types, bulk=True) if truth else None
        name = np.array([folder.name])
        return UnitTable(means, composition, np.asarray(values, np.float64), name, name)
    means = unit_mean_embeddings(embeddings, unit_of_cell, len(units))
    keep = means.n_cells > 0
    if level == "st" and "in_tissue" in units:
        keep &= units["in_tissue"].to_numpy().astype(bool)  # as BiTro: spots outside tissue never score
    roles = ("train", "validation") if role == "train" else ("test",)
    role_ranges = [fold.ranges(folder.name, name) for name in roles]
    if all(ranges is not None for ranges in role_ranges):
        side = units["diameter_um"].to_numpy(np.float64)
        left = units["x_um"].to_numpy(np.float64) - side / 2
        ranges = [r for part in role_ranges for r in part or []]
        keep &= in_strips(left, ranges, width_um=float(side.max()))
    composition = _composition(truth, units, cell_types, bulk=False)[keep] if truth else None
    return UnitTable(
        means.means[keep],
        composition,
        np.asarray(values, np.float64)[keep],
        np.repeat(folder.name, keep.sum()),
        np.array([f"{folder.name}:{u}" for u in units["unit_id"].to_numpy()[keep]]),
    )


def _stack(tables: Sequence[UnitTable]) -> UnitTable:
    compositions = [t.composition for t in tables]
    return UnitTable(
        np.concatenate([t.embedding for t in tables]),
        None if any(c is None for c in compositions) else np.concatenate(compositions),
        np.concatenate([t.targets for t in tables]),
        np.concatenate([t.groups for t in tables]),
        np.concatenate([t.names for t in tables]),
    )


def baseline_fold(
    samples_dir: str | Path,
    folds_path: str | Path,
    fold_name: str,
    genes_path: str | Path,
    out: str | Path,
    *,
    truth: Mapping[str, Path] | None = None,
    mlp_epochs: int = 30,
    seed: int = 0,
    predictions_out: str | Path | None = None,
) -> pd.DataFrame:
    """Fit and score every baseline on ``fold_name``; writes ``out`` (``baselines.tsv``) and returns it.

    ``truth`` maps each sample to the demo's ``truth/{sample}_cells.h5ad`` (enables the oracle).
    ``predictions_out`` (``baselines.h5ad``) receives the test units' predictions: ``X`` and
    ``layers["truth"]`` the measured expression, ``layers[model]`` each baseline's prediction (counts or
    TPM, like ``predictions.h5ad``), ``obs["sample_id"]``, and ``uns["bitro"]`` the fold, level and spaces.
    """
    samples_dir = Path(samples_dir)
    fold = read_folds(folds_path).fold(fold_name)
    genes = read_gene_list(genes_path)
    cell_types: list[str] = []
    if truth:
        cell_types = sorted({str(t) for path in truth.values() for t in ad.read_h5ad(path).obs["cell_type"]})
    train_samples = list(dict.fromkeys(fold.train + fold.validation))

    def load(sample: str, role: str) -> UnitTable:
        return _sample_units(
            samples_dir / sample,
            genes,
            role=role,
            fold=fold,
            truth=truth.get(sample) if truth else None,
            cell_types=cell_types,
        )

    train = _stack([load(s, "train") for s in train_samples])
    test = _stack([load(s, "test") for s in fold.test])
    bulk = len(train.groups) == len(train_samples) and len(set(train.groups)) == len(train.groups)
    level, spaces = ("slide", ["log1p TPM", "TPM"]) if bulk else ("spot", ["log1p counts"])
    models: dict[str, Any] = {
        "training_mean": (TrainingMean(), "embedding"),
        "hest_probe": (HestProbe(seed=seed), "embedding"),
        "mlp": (MLPBaseline(max_epochs=mlp_epochs, seed=seed), "embedding"),
    }
    if train.composition is not None and test.composition is not None:
        models["oracle_composition"] = (OracleComposition(), "composition")
    rows = []
    predictions: dict[str, np.ndarray] = {}
    y_train = np.log1p(train.targets)
    for name, (model, features) in models.items():
        x_train, x_test = getattr(train, features), getattr(test, features)
        usable = np.isfinite(x_train).all(axis=1)
        model.fit(x_train[usable], y_train[usable], groups=train.groups[usable])
        predicted = np.clip(np.expm1(model.predict(x_test)), 0.0, None)
        predictions[name] = predicted
        labels = {"level": level, "spaces": spaces, "model": name, "fold": fold_name}
        rows += metric_rows(test.targets, predicted, genes, test.groups, **labels)
        log.info("%s %s: done", fold_name, name)
    table = pd.DataFrame(rows)
    if predictions_out is not None:
        obs = pd.DataFrame({"sample_id": pd.Categorical(test.groups)}, index=pd.Index(test.names, dtype=str))
        # float64: a baseline gone wild on a tiny cohort (expm1 of a large log1p) must not overflow to inf.
        adata = ad.AnnData(
            X=test.targets.astype(np.float64),
            obs=obs,
            var=pd.DataFrame(index=pd.Index(genes, dtype=str)),
            layers={"truth": test.targets.astype(np.float64)}
            | {name: values.astype(np.float64) for name, values in predictions.items()},
        )
        info = {"fold": fold_name, "level": level, "spaces": spaces, "models": list(predictions)}
        adata.uns["bitro"] = info
        with atomic_path(predictions_out) as tmp:
            adata.write_h5ad(tmp)
    with atomic_path(out) as tmp:
        table.to_csv(tmp, sep="\t", index=False)
    return table
