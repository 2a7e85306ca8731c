"""Per-gene PCC of each fold, as ``metrics.tsv`` computes it, and the figure of its distribution."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from bitro._atomic import atomic_path
from bitro.metrics import evaluate
from bitro.plot._figure import DPI, new_figure, save_png
from bitro.plot.spatial import dense, read_anndata

#: Columns of the per-gene table (``pcc_genes.tsv``).
PCC_COLUMNS = ["fold", "level", "space", "scope", "gene", "pcc", "n_samples", "n_samples_undefined"]


def _scored_specs(predictions: ad.AnnData, cells: ad.AnnData | None) -> list[tuple[str, str, str]]:
    """(level, space, scope) of every row the fold's ``metrics.tsv`` holds, read from ``uns["bitro"]``."""
    metrics = predictions.uns.get("bitro", {}).get("metrics")
    if metrics is not None and "level" in metrics:
        specs = zip(metrics["level"], metrics["space"], metrics["scope"], strict=True)
        return list(dict.fromkeys((str(a), str(b), str(c)) for a, b, c in specs))
    # Written by another tool: one unit per sample is bulk, pooled; spots and cells are per sample.
    bulk = predictions.obs["sample_id"].nunique() == predictions.n_obs
    specs = [("slide", "log1p TPM", "pooled")] if bulk else [("spot", "log1p counts", "per_sample")]
    if cells is not None and "truth" in cells.layers:
        specs.append(("cell", "log1p counts", "per_sample"))
    return specs


def _level_rows(adata: ad.AnnData, level: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Truth, prediction and sample of the rows a level is scored on (as ``bitro predict`` scores them)."""
    truth, pred = dense(adata.layers["truth"]), dense(adata.X)
    if level == "cell":
        keep = np.isfinite(truth).all(axis=1)
        if "in_test_strip" in adata.obs:
            keep &= adata.obs["in_test_strip"].to_numpy(bool)
    else:
        keep = adata.obs["scored"].to_numpy(bool) if "scored" in adata.obs else np.ones(adata.n_obs, bool)
    return truth[keep], pred[keep], adata.obs["sample_id"].astype(str).to_numpy()[keep]


def pcc_table(
    predictions: ad.AnnData | str | os.PathLike[str],
    *,
    fold: str,
    cells: ad.AnnData | str | os.PathLike[str] | None = None,
) -> pd.DataFrame:
    """Per-gene PCC of one fold, one row per level, space and gene (columns :data:`PCC_COLUMNS`).

    Computed with :func:`bitro.metrics.evaluate` on the units (and, for Xenium, the cells of
    ``cells_pred.h5ad``) that ``metrics.tsv`` scores, in its spaces and scopes: per sample, ``pcc`` is the
    mean over the samples where the gene is defined and ``n_samples_undefined`` counts the others (a gene
    with any is one of the fold's ``n_undefined_genes``); pooled, ``n_samples`` is 1.
    """
    adata = read_anndata(predictions, "predictions")
    cell_data = None if cells is None else read_anndata(cells, "pseudo-cells")
    genes = adata.var_names.astype(str).tolist()
    parts = []
    for level, space, scope in _scored_specs(adata, cell_data):
        if level == "cell" and (cell_data is None or "truth" not in cell_data.layers):
            continue
        source = cell_data if level == "cell" else adata
        truth, pred, groups = _level_rows(source, level)
        if space.startswith("log1p"):
            truth, pred = np.log1p(truth), np.log1p(pred)
        per_sample = scope == "per_sample"
        result = evaluate(truth, pred, space=space, genes=genes, groups=groups if per_sample else None)
        per_gene = result.per_gene
        n_samples = len(np.unique(groups)) if per_sample else 1
        undefined = per_gene["n_samples_undefined"] if per_sample else (~per_gene["pcc_defined"]).astype(int)
        parts.append(
            pd.DataFrame(
                {
                    "fold": fold,
                    "level": level,
                    "space": space,
                    "scope": scope,
                    "gene": per_gene.index.astype(str),
                    "pcc": per_gene["pcc"].to_numpy(),
                    "n_samples": n_samples,
                    "n_samples_undefined": np.asarray(undefined, dtype=int),
                }
            )
        )
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=PCC_COLUMNS)


def _folds(table: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(table["fold"].astype(str)))


def plot_pcc_distribution(
    table: pd.DataFrame | str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    dpi: int = DPI,
    title: str = "Per-gene PCC",
) -> dict[tuple[str, str], dict[str, int]]:
    """Write ``out`` (PNG): per level and space, a histogram of the per-gene PCC over all folds and its
    distribution per fold (box and points), from a :func:`pcc_table` (or the ``pcc_genes.tsv`` it wrote).

    Genes undefined in some sample are counted in the legend (they are the ``n_undefined_genes`` of
    ``metrics.tsv``); genes undefined everywhere have no PCC to draw. Returns, per (level, space), the
    counts shown: ``defined`` (gene × fold values drawn) and ``undefined`` (gene × fold pairs undefined in
    at least one sample).
    """
    if not isinstance(table, pd.DataFrame):
        table = pd.read_csv(table, sep="\t")
    groups = list(table.groupby(["level", "space"], sort=False))
    n_rows = max(len(groups), 1)
    figure = new_figure(11.0, 3.2 * n_rows + 0.4)
    axes = figure.subplots(n_rows, 2, squeeze=False, width_ratios=[1, 1.6])
    figure.suptitle(title)
    counts: dict[tuple[str, str], dict[str, int]] = {}
    bins = np.linspace(-1.0, 1.0, 41)
    for row, ((level, space), group) in enumerate(groups):
        values = group["pcc"].to_numpy(np.float64)
        defined = values[np.isfinite(values)]
        undefined = int((group["n_samples_undefined"].to_numpy() > 0).sum())
        counts[(str(level), str(space))] = {"defined": int(defined.size), "undefined": undefined}
        hist = axes[row, 0]
        mean = float(defined.mean()) if defined.size else float("nan")
        hist.hist(
            defined,
            bins=bins,
            color="tab:blue",
            alpha=0.8,
            label=f"{defined.size} gene × fold values (mean {mean:.3f})\n{undefined} undefined in ≥ 1 sample",
        )
        if defined.size:
            hist.axvline(mean, color="black", lw=1, ls="--")
        hist.set_xlim(-1, 1)
        hist.set_xlabel(f"PCC per gene ({space})")
        hist.set_ylabel("genes")
        hist.set_title(f"{level} level, all folds", fontsize=9)
        hist.legend(fontsize=7, loc="best")
        per_fold = axes[row, 1]
        folds = _folds(group)
        data = [group.loc[group["fold"].astype(str) == f, "pcc"].dropna().to_numpy() for f in folds]
        positions = np.arange(1, len(folds) + 1)
        per_fold.boxplot(data, positions=positions, widths=0.5, showfliers=False)
        rng = np.random.default_rng(0)
        for x, fold_values in zip(positions, data, strict=True):
            jitter = rng.uniform(-0.15, 0.15, size=fold_values.size)
            per_fold.scatter(x + jitter, fold_values, s=6, alpha=0.5, color="tab:blue", linewidths=0)
        per_fold.set_xticks(positions, folds, rotation=45 if len(folds) > 6 else 0, fontsize=7)
        per_fold.set_ylim(-1.05, 1.05)
        per_fold.axhline(0, color="0.7", lw=0.8)
        per_fold.set_ylabel("PCC per gene")
        per_fold.set_title(f"{level} level, per fold", fontsize=9)
    if not groups:
        for ax in axes[0]:
            ax.set_axis_off()
        axes[0, 0].text(0.5, 0.5, "no scored genes", ha="center", va="center")
    save_png(figure, Path(out), dpi=dpi)
    return counts


def write_pcc_table(tables: Sequence[pd.DataFrame], out: str | os.PathLike[str]) -> pd.DataFrame:
    """Concatenate per-fold :func:`pcc_table` results and write them as ``pcc_genes.tsv``."""
    table = pd.concat(list(tables), ignore_index=True) if tables else pd.DataFrame(columns=PCC_COLUMNS)
    with atomic_path(out) as tmp:
        table.to_csv(tmp, sep="\t", index=False)
    return table
