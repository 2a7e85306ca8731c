"""Score a bundle's predictions of the demo's unlabelled slide against the truth the generator kept.

The demo's ``demo_slides`` cohort is one slide that ``demo_st``'s final model never saw
(``results/demo_slides/predictions/{sample}/spots.h5ad``); the generator kept each of its cells' simulated
counts (``results/demo_data/slides/truth/{sample}_cells.h5ad``), which no step of the pipeline reads.
This script sums the true counts of the cells inside each predicted 55 µm patch and reports the per-gene
PCC (log1p) of predicted against true patches, beside two references measured in the same run:

- the bundle's cross-validated PCC gene (``bundle.json``), what the model promised on unseen sections;
- a cell-count floor: each gene predicted by the patch's number of segmented cells alone (log1p), which
  the pipeline also knows without any model, since log1p counts of every gene rise with cell density.

Usage: ``.venv/bin/python benchmarks/score_unlabelled.py [--results results] [--cohort demo_slides]``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from bitro import layout
from bitro.bundle import BundleFile
from bitro.demo.unlabelled import UNLABELLED_DIR
from bitro.metrics import pcc_gene
from bitro.predict.slide import PredictionFile
from bitro.preprocess.units import read_units


def truth_per_patch(truth: ad.AnnData, units: pd.DataFrame, genes: list[str]) -> np.ndarray:
    """(units, genes) sums of the true counts of the cells whose centre lies in each square patch."""
    x = truth.obs["x_um"].to_numpy(np.float64)
    y = truth.obs["y_um"].to_numpy(np.float64)
    counts = truth[:, genes].X
    counts = counts.toarray() if hasattr(counts, "toarray") else np.asarray(counts)
    half = units["diameter_um"].to_numpy(np.float64) / 2
    cx, cy = units["x_um"].to_numpy(np.float64), units["y_um"].to_numpy(np.float64)
    total = np.zeros((len(units), len(genes)))
    for i in range(len(units)):
        inside = (np.abs(x - cx[i]) < half[i]) & (np.abs(y - cy[i]) < half[i])
        total[i] = counts[inside].sum(axis=0)
    return total


def bootstrap_pcc(
    truth: np.ndarray, pred: np.ndarray, *, n: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """95 % interval of the mean per-gene PCC over patches resampled with replacement."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n):
        rows = rng.integers(0, len(truth), len(truth))
        values.append(pcc_gene(truth[rows], pred[rows]).mean)
    low, high = np.nanpercentile(values, [2.5, 97.5])
    return float(low), float(high)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", default=str(layout.RESULTS))
    parser.add_argument("--cohort", default="demo_slides")
    parser.add_argument("--bundle", default=None, help="default: the bundle recorded in spots.h5ad")
    args = parser.parse_args()
    results = Path(args.results)
    predictions = layout.predictions_dir(args.cohort, None, results)
    truth_dir = layout.demo_data_dir(results) / UNLABELLED_DIR / "truth"
    for folder in sorted(p for p in predictions.iterdir() if p.is_dir()):
        sample = folder.name
        spots = ad.read_h5ad(folder / PredictionFile.SPOTS)
        bundle = Path(args.bundle or spots.uns["bitro"]["model"]["bundle"])
        record = json.loads((bundle / BundleFile.RECORD).read_text())
        units = read_units(layout.sample_dir(args.cohort, sample, results) / "units.parquet")
        units = units.set_index("unit_id").loc[spots.obs["unit_id"].to_numpy()].reset_index()
        truth = ad.read_h5ad(truth_dir / f"{sample}_cells.h5ad")
        genes = [g for g in spots.var_names if g in truth.var_names]
        pred = np.asarray(spots[:, genes].X, dtype=np.float64)
        true = truth_per_patch(truth, units, genes)
        cells = layout.sample_dir(args.cohort, sample, results) / "cells.parquet"
        n_cells = pd.read_parquet(cells, columns=["unit_id"])["unit_id"].value_counts()
        count = units["unit_id"].map(n_cells).fillna(0).to_numpy(np.float64)
        scored = np.isfinite(pred).all(axis=1) & (true.sum(axis=1) > 0)
        log_true, log_pred = np.log1p(true[scored]), np.log1p(pred[scored])
        model = pcc_gene(log_true, log_pred).mean
        floor_pred = np.repeat(np.log1p(count[scored])[:, None], len(genes), axis=1)
        floor = pcc_gene(log_true, floor_pred).mean
        low, high = bootstrap_pcc(log_true, log_pred)
        cv = [
            s
            for s in record["cv"]["scores"]
            if s["space"].startswith("log1p") and s["level"] in ("spot", "unit")
        ]
        print(f"{sample}: {int(scored.sum())} patches scored, {len(genes)} genes, bundle {bundle}")
        print(f"  PCC gene (log1p), bundle's predictions vs truth: {model:.3f} [{low:.3f}, {high:.3f}]")
        print(f"  cell-count floor (log1p n_cells for every gene): {floor:.3f}")
        if cv:
            print(
                f"  bundle's cross-validated PCC gene ({cv[0]['scope']}): "
                f"{cv[0]['pcc_gene']:.3f} ± {cv[0]['pcc_gene_std']:.3f}"
            )
        print(f"  ratio model / floor: {model / floor:.2f}")


if __name__ == "__main__":
    main()
