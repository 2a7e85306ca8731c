"""Training curves: each fold's training and validation losses per optimiser step, from ``train_log.csv``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.lines import Line2D

from bitro.io.validate import require_file
from bitro.plot._figure import DPI, new_figure, save_png

#: Loss terms drawn, when the logs have them: ``train_<term>`` and ``val_<term>``.
TERMS = {"gene": "gene loss (MSE)", "cluster": "cluster loss", "total": "total loss"}


def read_log(log: pd.DataFrame | str | os.PathLike[str]) -> pd.DataFrame:
    """A ``train_log.csv`` (comma-separated) as a table."""
    if isinstance(log, pd.DataFrame):
        return log
    return pd.read_csv(require_file(log, "training log"))


def plot_training(
    logs: Mapping[str, pd.DataFrame | str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    dpi: int = DPI,
    title: str = "Training curves",
) -> dict[str, int]:
    """Write ``out`` (PNG): one panel per loss term, one colour per fold, training solid, validation
    dashed, the check of lowest validation gene loss (the one early stopping keeps) marked with a dot.

    ``logs`` maps a fold name to its ``train_log.csv``. Returns each fold's best step.
    """
    tables = {fold: read_log(log) for fold, log in logs.items()}
    terms = [t for t in TERMS if any(f"train_{t}" in table for table in tables.values())] or ["gene"]
    figure = new_figure(4.0 * len(terms) + 1.4, 3.6)
    axes = figure.subplots(1, len(terms), squeeze=False)[0]
    figure.suptitle(title)
    cmap = colormaps["tab10" if len(tables) <= 10 else "viridis"]
    colours = {
        fold: cmap(i if len(tables) <= 10 else i / max(len(tables) - 1, 1)) for i, fold in enumerate(tables)
    }
    best: dict[str, int] = {}
    for fold, table in tables.items():
        if "val_gene" in table and table["val_gene"].notna().any():
            best[fold] = int(table["step"].iloc[int(np.nanargmin(table["val_gene"].to_numpy(np.float64)))])
    for ax, term in zip(axes, terms, strict=True):
        positive = True
        for fold, table in tables.items():
            for prefix, style in (("train", "-"), ("val", "--")):
                column = f"{prefix}_{term}"
                if column not in table:
                    continue
                values = table[column].to_numpy(np.float64)
                positive &= bool(np.all(values[np.isfinite(values)] > 0))
                ax.plot(table["step"], values, style, color=colours[fold], lw=1.2)
            if fold in best and f"val_{term}" in table:
                at = table["step"] == best[fold]
                ax.plot(table.loc[at, "step"], table.loc[at, f"val_{term}"], "o", color=colours[fold], ms=4)
        if positive and ax.has_data():
            ax.set_yscale("log")
        ax.set_xlabel("optimiser step")
        ax.set_title(TERMS[term], fontsize=9)
    handles = [Line2D([], [], color=colours[f], label=f) for f in tables]
    handles += [
        Line2D([], [], color="black", ls="-", label="training"),
        Line2D([], [], color="black", ls="--", label="validation"),
        Line2D([], [], color="black", marker="o", ls="", label="best check"),
    ]
    figure.legend(handles=handles, fontsize=7, loc="outside right upper", ncols=2 if len(tables) > 12 else 1)
    save_png(figure, Path(out), dpi=dpi)
    return best
