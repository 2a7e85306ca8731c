"""All figures and report tables of one cohort, written into ``results/{cohort}/figures/``.

Per fold: ``{fold}_spatial.png`` (ST and Xenium: spot maps, :func:`bitro.plot.spatial.plot_spatial`) and
``{fold}_cells.png`` (Xenium: measured and predicted cells; bulk: predicted pseudo-cells,
:func:`bitro.plot.cells.plot_cells`). Per cohort: ``pcc_genes.png`` and ``pcc_genes.tsv`` (per-gene PCC),
``baselines.png`` (BiTro and the baselines), ``training.png`` (training curves), ``summary.tsv`` (mean ±
std over folds of every model) and ``metrics_by_fold.tsv`` (every fold's headline numbers).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from bitro._atomic import atomic_path
from bitro.errors import InputError
from bitro.evaluate.summary import headline_rows
from bitro.folds.splits import read_folds
from bitro.io.validate import require_file
from bitro.layout import figure_names, figures_dir
from bitro.plot._figure import DPI
from bitro.plot.baselines import plot_baselines, read_table
from bitro.plot.cells import plot_cells
from bitro.plot.genes import GeneScore, log1p_pcc, rank_genes
from bitro.plot.pcc import pcc_table, plot_pcc_distribution, write_pcc_table
from bitro.plot.spatial import SlideLookup, dense, plot_spatial
from bitro.plot.training import plot_training

log = logging.getLogger("bitro")

PROTOCOLS = {"loo": "leave-one-out", "patient": "patient split", "strips": "spatial strips"}
LEVEL_PROTOCOLS = {"st": "leave-one-out", "bulk": "patient split", "xenium": "spatial strips"}
#: Columns of ``metrics_by_fold.tsv``, where the cohort tables have them.
FOLD_COLUMNS = [
    "fold",
    "model",
    "level",
    "space",
    "scope",
    "n_samples",
    "n_units",
    "n_genes",
    "pcc_gene",
    "pcc_overall",
    "spearman_gene",
    "rmse",
    "js_divergence",
    "n_undefined_genes",
    "n_undefined_units",
]


def detect_level(cohort_dir: str | os.PathLike[str]) -> str:
    """The cohort's level from the levels in its ``metrics.tsv``: ``slide`` → bulk, ``cell`` → xenium."""
    path = require_file(Path(cohort_dir) / "metrics.tsv", "cohort metrics")
    levels = set(pd.read_csv(path, sep="\t")["level"].astype(str))
    if "slide" in levels:
        return "bulk"
    return "xenium" if "cell" in levels else "st"


def cohort_folds(cohort_dir: str | os.PathLike[str]) -> list[str]:
    """The fold names of ``folds.json``, else every ``fold*`` folder holding ``predictions.h5ad``."""
    cohort_dir = Path(cohort_dir)
    if (cohort_dir / "folds.json").is_file():
        return [fold.name for fold in read_folds(cohort_dir / "folds.json").folds]
    found = sorted(p.parent.name for p in cohort_dir.glob("fold*/predictions.h5ad"))
    if not found:
        raise InputError(cohort_dir, "holds neither folds.json nor fold*/predictions.h5ad")
    return found


def _protocol(cohort_dir: Path, level: str) -> str:
    if (cohort_dir / "folds.json").is_file():
        folds = read_folds(cohort_dir / "folds.json")
        if folds.protocol == "patient" and folds.params.get("n_folds", 1) > 1:
            return f"patient {folds.params['n_folds']}-fold"
        return PROTOCOLS.get(folds.protocol, LEVEL_PROTOCOLS[level])
    return LEVEL_PROTOCOLS[level]


def summary_table(
    tables: Sequence[pd.DataFrame], out: str | os.PathLike[str], *, cohort: str, protocol: str
) -> pd.DataFrame:
    """Write ``summary.tsv``: ``mean ± std`` over folds of the headline metrics, one row per model, level
    and space (:func:`bitro.evaluate.summary.headline_rows`), BiTro first."""
    table = pd.concat([headline_rows(t, cohort=cohort, protocol=protocol) for t in tables], ignore_index=True)
    with atomic_path(out) as tmp:
        table.to_csv(tmp, sep="\t", index=False)
    return table


def fold_table(tables: Sequence[pd.DataFrame], out: str | os.PathLike[str]) -> pd.DataFrame:
    """Write ``metrics_by_fold.tsv``: every row of the cohort tables (folds, mean, std), headline columns."""
    table = pd.concat(list(tables), ignore_index=True)
    table = table[[c for c in FOLD_COLUMNS if c in table]]
    with atomic_path(out) as tmp:
        table.to_csv(tmp, sep="\t", index=False)
    return table


def _bulk_genes(predictions: ad.AnnData, cells: ad.AnnData, top_n: int) -> list[GeneScore]:
    """Genes of the bulk pseudo-cell maps: highest PCC across the fold's test slides (log1p TPM); with few
    slides many tie (two slides give ±1), and ties go to the genes whose pseudo-cells vary most (log1p)."""
    scored = predictions.obs["scored"].to_numpy(bool) if "scored" in predictions.obs else slice(None)
    truth, pred = dense(predictions.layers["truth"])[scored], dense(predictions.X)[scored]
    pcc = np.round(log1p_pcc(truth, pred), 9)
    spread = np.log1p(np.clip(dense(cells.X), 0.0, None)).std(axis=0) if cells.n_obs else None
    return rank_genes(predictions.var_names.astype(str).tolist(), pcc, top_n, tiebreak=spread)


def plot_cohort(
    cohort_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str] | None = None,
    *,
    level: str = "auto",
    folds: Sequence[str] | None = None,
    top_n: int = 4,
    dpi: int = DPI,
    cohort: str | None = None,
    slides: SlideLookup | None = None,
) -> dict[str, Path]:
    """Write the cohort's figures and tables (module docstring) into ``out_dir`` (default
    ``{cohort_dir}/figures``); returns key → path, the keys of :func:`figure_names`.

    Reads ``{cohort_dir}/metrics.tsv``, ``baselines.tsv`` (optional), ``folds.json`` and each fold's
    ``predictions.h5ad``, ``cells_pred.h5ad`` and ``train_log.csv``; with ``slides`` (sample id → slide
    path, or a function of the id), the spot maps are drawn over each test sample's H&E.
    """
    cohort_dir = Path(cohort_dir)
    out = Path(out_dir) if out_dir is not None else figures_dir(cohort_dir.name, cohort_dir.parent)
    level = detect_level(cohort_dir) if level == "auto" else level
    folds = list(folds) if folds else cohort_folds(cohort_dir)
    name = cohort or cohort_dir.name
    names = figure_names(level, folds)
    written: dict[str, Path] = {}
    pcc_parts, logs = [], {}
    for fold in folds:
        folder = cohort_dir / fold
        predictions = ad.read_h5ad(require_file(folder / "predictions.h5ad", f"{fold} predictions"))
        cells = ad.read_h5ad(require_file(folder / "cells_pred.h5ad", f"{fold} pseudo-cells"))
        if f"spatial_{fold}" in names:
            path = out / names[f"spatial_{fold}"]
            heading = f"{name} {fold}: spots, test samples"
            plot_spatial(predictions, path, top_n=top_n, dpi=dpi, title=heading, slides=slides)
            written[f"spatial_{fold}"] = path
        if f"cells_{fold}" in names:
            path = out / names[f"cells_{fold}"]
            if "truth" in cells.layers:
                heading = f"{name} {fold}: cells in the test strip, measured and predicted"
                plot_cells(cells, path, top_n=top_n, dpi=dpi, title=heading)
            else:
                heading = f"{name} {fold}: predicted pseudo-cells of the test slides"
                genes = _bulk_genes(predictions, cells, top_n)
                plot_cells(cells, path, genes=genes, dpi=dpi, title=heading, score="slide-level ")
            written[f"cells_{fold}"] = path
        pcc_parts.append(pcc_table(predictions, fold=fold, cells=cells))
        logs[fold] = folder / "train_log.csv"
    table = write_pcc_table(pcc_parts, out / names["pcc_table"])
    written["pcc_table"] = out / names["pcc_table"]
    plot_pcc_distribution(table, out / names["pcc_genes"], dpi=dpi, title=f"{name}: per-gene PCC")
    written["pcc_genes"] = out / names["pcc_genes"]
    metrics = read_table(cohort_dir / "metrics.tsv", "cohort metrics")
    baselines_path = cohort_dir / "baselines.tsv"
    baselines = read_table(baselines_path, "cohort baselines") if baselines_path.is_file() else None
    tables = [metrics] if baselines is None else [metrics, baselines]
    plot_baselines(
        metrics,
        baselines,
        out / names["baselines"],
        dpi=dpi,
        title=f"{name}: BiTro and the baselines (mean ± std over folds)",
    )
    written["baselines"] = out / names["baselines"]
    plot_training(logs, out / names["training"], dpi=dpi, title=f"{name}: training curves")
    written["training"] = out / names["training"]
    summary_table(tables, out / names["summary"], cohort=name, protocol=_protocol(cohort_dir, level))
    written["summary"] = out / names["summary"]
    fold_table(tables, out / names["metrics"])
    written["metrics"] = out / names["metrics"]
    for key, path in written.items():
        log.info("%s: %s -> %s", name, key, path)
    missing = set(names) - set(written)
    if missing:  # pragma: no cover - figure_names and the code above are kept in step
        raise RuntimeError(f"figures not written: {sorted(missing)}")
    return {key: written[key] for key in names}
