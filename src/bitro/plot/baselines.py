"""BiTro beside the baselines: mean ± std over folds of the headline metrics (paper Tables 1–3)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from bitro.evaluate.summary import NOT_FOLDS
from bitro.io.validate import require_file
from bitro.plot._figure import DPI, new_figure, save_png

METRICS = {"pcc_gene": "PCC gene ↑", "pcc_overall": "PCC overall ↑", "rmse": "RMSE ↓"}
BITRO_COLOUR = "tab:red"
OTHER_COLOURS = ["tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive"]


def read_table(table: pd.DataFrame | str | os.PathLike[str], what: str) -> pd.DataFrame:
    """``table`` itself, or the TSV file it names."""
    if isinstance(table, pd.DataFrame):
        return table
    return pd.read_csv(require_file(table, what), sep="\t")


def mean_std(tables: Sequence[pd.DataFrame], metrics: Sequence[str]) -> pd.DataFrame:
    """One row per model, level, space and metric: ``mean`` and ``std`` over folds, ``n_folds``.

    Read from the ``mean`` and ``std`` rows of cohort tables (``bitro summarise``); NaN stays NaN (an
    undefined metric, or the std of a single fold).
    """
    rows = []
    for table in tables:
        for (model, level, space), group in table.groupby(["model", "level", "space"], sort=False):
            fold = group["fold"].astype(str)
            mean, std = group[fold == "mean"], group[fold == "std"]
            n_folds = int((~fold.isin(NOT_FOLDS)).sum())
            for metric in metrics:
                if metric not in group or mean.empty:
                    continue
                rows.append(
                    {
                        "model": model,
                        "level": level,
                        "space": space,
                        "metric": metric,
                        "mean": float(mean[metric].iloc[0]),
                        "std": float(std[metric].iloc[0]) if not std.empty else float("nan"),
                        "n_folds": n_folds,
                    }
                )
    return pd.DataFrame(rows, columns=["model", "level", "space", "metric", "mean", "std", "n_folds"])


def plot_baselines(
    metrics: pd.DataFrame | str | os.PathLike[str],
    baselines: pd.DataFrame | str | os.PathLike[str] | None,
    out: str | os.PathLike[str],
    *,
    columns: Sequence[str] = tuple(METRICS),
    dpi: int = DPI,
    title: str = "BiTro and the baselines (mean ± std over folds)",
) -> pd.DataFrame:
    """Write ``out`` (PNG): bars of mean ± std over folds, one row of panels per level and space of
    BiTro's table (``metrics.tsv``), one panel per metric in ``columns``, one bar per model (BiTro first,
    then the baselines of ``baselines.tsv`` at that level and space). Undefined means are marked "n/a".
    Returns the drawn numbers (:func:`mean_std`).
    """
    ours = read_table(metrics, "cohort metrics")
    tables = [ours] if baselines is None else [ours, read_table(baselines, "cohort baselines")]
    drawn = mean_std(tables, columns)
    panels = list(dict.fromkeys(zip(ours["level"].astype(str), ours["space"].astype(str), strict=True)))
    models = list(dict.fromkeys(drawn["model"].astype(str)))
    ours_models = set(ours["model"].astype(str))
    palette = iter(OTHER_COLOURS * 4)
    colours = {m: BITRO_COLOUR if m in ours_models else next(palette) for m in models}
    n_rows = max(len(panels), 1)
    figure = new_figure(3.6 * len(columns) + 0.4, 2.9 * n_rows + 0.5)
    axes = figure.subplots(n_rows, len(columns), squeeze=False)
    figure.suptitle(title)
    for row, (level, space) in enumerate(panels):
        here = drawn[(drawn["level"].astype(str) == level) & (drawn["space"].astype(str) == space)]
        for col, metric in enumerate(columns):
            ax = axes[row, col]
            values = here[here["metric"] == metric].set_index("model")
            names = [m for m in models if m in values.index]
            x = np.arange(len(names))
            means = values.loc[names, "mean"].to_numpy(np.float64) if names else np.zeros(0)
            stds = values.loc[names, "std"].to_numpy(np.float64) if names else np.zeros(0)
            ax.bar(
                x,
                np.nan_to_num(means),
                yerr=np.where(np.isfinite(stds), stds, 0.0),
                color=[colours[m] for m in names],
                capsize=3,
                error_kw={"elinewidth": 1},
            )
            for xi, mean, std in zip(x, means, stds, strict=True):
                text = "n/a" if not np.isfinite(mean) else f"{mean:.2f}"
                top = 0.0 if not np.isfinite(mean) else mean + (std if np.isfinite(std) else 0.0)
                ax.annotate(
                    text,
                    (xi, top),
                    ha="center",
                    va="bottom",
                    fontsize=7,
                    xytext=(0, 2),
                    textcoords="offset points",
                )
            ax.set_xticks(x, names, rotation=30, ha="right", fontsize=7)
            ax.set_title(f"{METRICS.get(metric, metric)} — {level}, {space}", fontsize=9)
            ax.axhline(0, color="0.6", lw=0.8)
            ax.margins(y=0.15)
    if not panels:
        for ax in axes[0]:
            ax.set_axis_off()
    save_png(figure, Path(out), dpi=dpi)
    return drawn
