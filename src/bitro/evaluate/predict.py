"""Predict a fold's test samples and score them: ``predictions.h5ad``, ``cells_pred.h5ad``, ``metrics.tsv``.

The fold's model is touched once, here, on the fold's test samples (docs/pitfalls.md).

- ``predictions.h5ad``: units × genes; ``X`` = predicted counts (ST, Xenium) or TPM (bulk), i.e. the model
  output mapped back through the training statistics; ``layers["truth"]`` = the measured values;
  ``obs``: ``sample_id``, ``unit_id``, ``n_cells``, ``in_test_strip`` (Xenium); ``obsm["spatial"]`` =
  level-0 pixels; ``uns["bitro"]`` = ``{"metrics": [...], "params": {...}}``.
- ``cells_pred.h5ad``: cells × genes pseudo-cell profiles (eq. 10, in counts or TPM); ``obs``:
  ``sample_id``, ``cell_id``, ``unit_id``, ``phenotype``; ``obsm["spatial"]``; for Xenium
  ``layers["truth"]`` = the cell's measured counts and ``obs["in_test_strip"]``.
- ``metrics.tsv``: one row per level (``spot`` or ``slide``, and ``cell`` for Xenium) and space, with the
  scope of each number (pooled over the fold's test units, or per sample then averaged).

Units without cells cannot be predicted; they are left out and counted in ``uns["bitro"]["params"]``.
Xenium (paper §4.3, C.3): the model sees every pseudo-spot with a cell in the test strip, spot-level scores
use the pseudo-spots wholly inside it, and cell-level scores compare each test-strip cell's pseudo-cell
profile with its measured counts.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import torch

from bitro._atomic import atomic_path
from bitro.features.reduce import read_basis
from bitro.folds.bags import STREAM_CELLS, Bag, make_bags, model_bag
from bitro.folds.samples import SampleData, load_sample, sample_features
from bitro.folds.splits import Fold, in_strips, read_folds
from bitro.genes.normalise import TargetTransform
from bitro.genes.selection import align_genes
from bitro.metrics import metric_rows
from bitro.model.batch import CellBatch, iter_chunks
from bitro.model.bitro import BiTro
from bitro.model.streaming import predict_streaming, stream_pseudo_cells
from bitro.preprocess.cells import read_cells
from bitro.preprocess.units import read_units
from bitro.train.saved import load_trained, saved_phenotypes

log = logging.getLogger("bitro")


@dataclass
class SamplePrediction:
    """One test sample's predictions (raw space) and pseudo-cells."""

    sample_id: str
    level: str
    unit_ids: np.ndarray
    n_cells: np.ndarray
    prediction: np.ndarray  # units × G
    truth: np.ndarray  # units × G
    cell_rows: np.ndarray
    cell_unit: np.ndarray
    pseudo_cells: np.ndarray  # cells × G
    phenotype: np.ndarray


@torch.no_grad()
def predict_sample(
    model: BiTro,
    sample: SampleData,
    transform: TargetTransform,
    *,
    unit_mask: np.ndarray | None = None,
    batch_bags: int = 64,
    device: str = "cpu",
) -> SamplePrediction:
    """Predict every bag of ``sample`` and distribute the predictions over its cells (eq. 10)."""
    model.eval().to(device)
    bags: list[Bag] = make_bags(sample, 0, unit_mask=unit_mask)
    samples = [sample]
    predictions, cells, rows, units = [], [], [], []
    if sample.level == "bulk":
        for bag in bags:
            piece, cell_rows = model_bag(bag, samples)
            streamed = predict_streaming(model, iter_chunks(piece, STREAM_CELLS))
            z = streamed.prediction.float().cpu().numpy()[None]
            amount = torch.as_tensor(transform.inverse(z)[0], dtype=torch.float32, device=device)
            chunks = iter_chunks(piece, STREAM_CELLS)
            parts = [
                c.float().cpu().numpy() for c in stream_pseudo_cells(model, chunks, streamed.state, amount)
            ]
            predictions.append(z)
            cells.append(np.concatenate(parts))
            rows.append(cell_rows)
            units.append(
                np.repeat(sample.graph.unit_ids[bag.units], np.diff(sample.graph.cell_offsets)[bag.units])
            )
    else:
        for start in range(0, len(bags), batch_bags):
            chunk = bags[start : start + batch_bags]
            pieces = [model_bag(bag, samples) for bag in chunk]
            batch = CellBatch.collate([p for p, _ in pieces]).to(device)
            out = model(batch)
            z = out.prediction.float().cpu().numpy()
            amount = transform.inverse(z)
            attention = out.attention.float().cpu().numpy()
            cell_bag = batch.cell_bag.cpu().numpy()
            predictions.append(z)
            cells.append(attention * amount[cell_bag])
            rows += [r for _, r in pieces]
            units.append(np.repeat([b.target_row for b in chunk], [len(r) for _, r in pieces]))
    z_all = np.concatenate(predictions) if predictions else np.zeros((0, len(transform.genes)))
    g = len(transform.genes)
    cell_rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    position = {row: i for i, row in enumerate(sample.cell_rows)}
    phenotype = (
        sample.phenotype[[position[r] for r in cell_rows]] if len(cell_rows) else np.zeros(0, np.int64)
    )
    if sample.level == "bulk":
        unit_ids = np.array([0])
        n_cells = np.array([len(cell_rows)])
    else:
        unit_ids = np.array([b.target_row for b in bags], dtype=np.int64)
        n_cells = np.array([int(np.diff(sample.graph.cell_offsets)[b.units].sum()) for b in bags])
    return SamplePrediction(
        sample_id=sample.sample_id,
        level=sample.level,
        unit_ids=unit_ids,
        n_cells=n_cells,
        prediction=transform.inverse(z_all) if len(z_all) else np.zeros((0, g)),
        truth=sample.targets[unit_ids] if len(unit_ids) else np.zeros((0, g)),
        cell_rows=cell_rows,
        cell_unit=np.concatenate(units) if units else np.zeros(0, np.int64),
        pseudo_cells=np.concatenate(cells) if cells else np.zeros((0, g)),
        phenotype=phenotype,
    )


def _xenium_truth(
    cell_ids: np.ndarray, genes: Sequence[str], measured: ad.AnnData, source: str
) -> np.ndarray:
    """Measured counts of the given cells (matched by Xenium cell id) in the order of ``genes``."""
    measured = align_genes(measured, genes, source=source)
    index = pd.Index(measured.obs_names.astype(str)).get_indexer(cell_ids.astype(str))
    x = measured.X.toarray() if hasattr(measured.X, "toarray") else np.asarray(measured.X)
    out = np.full((len(cell_ids), len(genes)), np.nan)
    out[index >= 0] = x[index[index >= 0]]
    return out


def predict_fold(
    samples_dir: str | Path,
    model_dir: str | Path,
    folds_path: str | Path,
    fold_name: str,
    out_dir: str | Path,
    *,
    cell_truth: dict[str, ad.AnnData] | None = None,
    model_name: str = "bitro",
    device: str = "cpu",
) -> pd.DataFrame:
    """Predict and score the test samples of ``fold_name`` (module docstring); returns the metric rows.

    ``cell_truth`` maps a Xenium sample to its measured cells × genes (obs names = Xenium cell ids).
    """
    samples_dir, out_dir = Path(samples_dir), Path(out_dir)
    fold: Fold = read_folds(folds_path).fold(fold_name)
    model, meta = load_trained(model_dir, device=device)
    genes = list(meta["genes"])
    transform = TargetTransform.from_dict(meta["transform"])
    scope = meta.get("features", {}).get("scope", "sample")
    basis_path = meta.get("features", {}).get("basis")
    basis = read_basis(basis_path) if scope == "cohort" and basis_path else None
    phenotypes = saved_phenotypes(meta)
    units_tables, cells_tables, results = {}, {}, []
    for sample_id in fold.test:
        folder = samples_dir / sample_id
        features, _ = sample_features(folder, scope=scope, basis=basis)
        sample = load_sample(folder, genes=genes, features=features, phenotypes=phenotypes)
        units_tables[sample_id] = read_units(folder / "units.parquet")
        cells_tables[sample_id] = read_cells(folder / "cells.parquet", geometry=False)
        mask = None
        test_ranges = fold.ranges(sample_id, "test")
        if test_ranges is not None:
            cells = cells_tables[sample_id]
            in_test = in_strips(cells["x_um"].to_numpy(), test_ranges)
            mask = np.zeros(len(units_tables[sample_id]), dtype=bool)
            mask[cells["unit_id"].to_numpy()[in_test & (cells["unit_id"].to_numpy() >= 0)]] = True
        results.append(predict_sample(model, sample, transform, unit_mask=mask, device=device))
        log.info(
            "%s %s: %d units, %d cells",
            fold_name,
            sample_id,
            len(results[-1].unit_ids),
            len(results[-1].cell_rows),
        )
    predictions = _predictions_anndata(results, units_tables, genes, fold)
    cells_pred = _cells_anndata(results, cells_tables, genes, fold)
    unit_level = "slide" if transform.space == "tpm" else "spot"
    spaces = ["log1p TPM", "TPM"] if transform.space == "tpm" else ["log1p counts"]
    scored = predictions[predictions.obs["scored"].to_numpy()]
    rows = metric_rows(
        np.asarray(scored.layers["truth"]),
        np.asarray(scored.X),
        genes,
        scored.obs["sample_id"].to_numpy(),
        level=unit_level,
        spaces=spaces,
        model=model_name,
        fold=fold_name,
    )
    if cell_truth and "in_test_strip" in cells_pred.obs:
        truth = np.concatenate(
            [
                _xenium_truth(
                    cells_tables[r.sample_id]["cell_id"].to_numpy()[r.cell_rows],
                    genes,
                    cell_truth[r.sample_id],
                    f"{r.sample_id} cell feature matrix",
                )
                for r in results
            ]
        )
        cells_pred.layers["truth"] = truth.astype(np.float32)
        test = cells_pred.obs["in_test_strip"].to_numpy() & np.isfinite(truth).all(axis=1)
        rows += metric_rows(
            truth[test],
            np.asarray(cells_pred.X)[test],
            genes,
            cells_pred.obs["sample_id"].to_numpy()[test],
            level="cell",
            spaces=["log1p counts"],
            model=model_name,
            fold=fold_name,
        )
    table = pd.DataFrame(rows)
    params = {
        "fold": fold_name,
        "model_dir": str(model_dir),
        "n_units_without_cells": int(
            sum(
                (
                    ~np.isin(units_tables[r.sample_id]["unit_id"], r.unit_ids)
                    & _in_tissue(units_tables[r.sample_id], r)
                ).sum()
                for r in results
                if unit_level == "spot"
            )
        ),
        "n_spots_outside_tissue": int(
            sum((~_in_tissue(units_tables[r.sample_id], r)).sum() for r in results if unit_level == "spot")
        ),
        "feature_scope": scope,
        "genes": genes,
    }
    predictions.uns["bitro"] = {"metrics": table.astype(str).to_dict(orient="list"), "params": params}
    cells_pred.uns["bitro"] = {"params": params, "space": transform.space}
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(out_dir / "predictions.h5ad") as tmp:
        predictions.write_h5ad(tmp)
    with atomic_path(out_dir / "cells_pred.h5ad") as tmp:
        cells_pred.write_h5ad(tmp)
    with atomic_path(out_dir / "metrics.tsv") as tmp:
        table.to_csv(tmp, sep="\t", index=False)
    return table


def _in_tissue(units: pd.DataFrame, result: SamplePrediction) -> np.ndarray:
    """Which units count as in tissue: ST spots by their flag (the others neither train nor score)."""
    if "in_tissue" in units and (units["shape"].astype(str) == "circle").all():
        return units["in_tissue"].to_numpy().astype(bool)
    return np.ones(len(units), dtype=bool)


def _predictions_anndata(
    results: Sequence[SamplePrediction],
    units_tables: dict[str, pd.DataFrame],
    genes: Sequence[str],
    fold: Fold,
) -> ad.AnnData:
    obs, spatial = [], []
    for r in results:
        units = units_tables[r.sample_id]
        bulk = (
            len(r.unit_ids) == 1
            and len(units) > 1
            and r.n_cells.sum() == len(r.cell_rows)
            and not fold.strips
        )
        scored = np.ones(len(r.unit_ids), dtype=bool)
        test_ranges = fold.ranges(r.sample_id, "test")
        if test_ranges is not None:
            side = units["diameter_um"].to_numpy(np.float64)[r.unit_ids]
            left = units["x_um"].to_numpy(np.float64)[r.unit_ids] - side / 2
            scored = in_strips(left, test_ranges, width_um=float(side.max()))
        frame = pd.DataFrame(
            {
                "sample_id": r.sample_id,
                "unit_id": r.unit_ids,
                "n_cells": r.n_cells,
                "scored": scored,
            }
        )
        frame.index = [r.sample_id] if bulk else [f"{r.sample_id}:{u}" for u in r.unit_ids]
        obs.append(frame)
        xy = units[["x_px", "y_px"]].to_numpy(np.float64)
        spatial.append(xy.mean(axis=0, keepdims=True) if bulk else xy[r.unit_ids])
    adata = ad.AnnData(
        X=np.concatenate([r.prediction for r in results]).astype(np.float32),
        obs=pd.concat(obs),
        var=pd.DataFrame(index=pd.Index(list(genes))),
    )
    adata.layers["truth"] = np.concatenate([r.truth for r in results]).astype(np.float32)
    adata.obsm["spatial"] = np.concatenate(spatial)
    return adata


def _cells_anndata(
    results: Sequence[SamplePrediction],
    cells_tables: dict[str, pd.DataFrame],
    genes: Sequence[str],
    fold: Fold,
) -> ad.AnnData:
    obs, spatial = [], []
    for r in results:
        cells = cells_tables[r.sample_id].iloc[r.cell_rows]
        frame = pd.DataFrame(
            {
                "sample_id": r.sample_id,
                "cell_id": cells["cell_id"].astype(str).to_numpy(),
                "unit_id": cells["unit_id"].to_numpy(),
                "phenotype": r.phenotype,
            }
        )
        test_ranges = fold.ranges(r.sample_id, "test")
        if test_ranges is not None:
            frame["in_test_strip"] = in_strips(cells["x_um"].to_numpy(), test_ranges)
        frame.index = [f"{r.sample_id}:{c}" for c in frame["cell_id"]]
        obs.append(frame)
        spatial.append(cells[["x_px", "y_px"]].to_numpy(np.float64))
    return ad.AnnData(
        X=np.concatenate([r.pseudo_cells for r in results]).astype(np.float32),
        obs=pd.concat(obs),
        var=pd.DataFrame(index=pd.Index(list(genes))),
        obsm={"spatial": np.concatenate(spatial)},
    )
