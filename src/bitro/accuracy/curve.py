"""The bulk learning curve: RMSE and pooled PCC gene against the number of patients a cohort has.

A point N trains each fold on N × (k − 1) / k patients of its training pool (as a k-fold benchmark on a
cohort of N patients would) and tests on the fold's own test patients, which never change: every
point is scored on the same out-of-fold patients (all of the cohort), so the points differ only in
how much the models were given. Written: ``curve.tsv`` (per N and model: seeds, RMSE and PCC gene,
each the seeds' mean with a bootstrap 95 % interval over patients), ``curve_paired.tsv`` (RMSE
differences against the training mean and the HEST probe, paired intervals) and ``curve.png``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from bitro.accuracy.runs import folds, truth
from bitro.accuracy.stats import bootstrap_rows, pcc_columns

if TYPE_CHECKING:
    from bitro.accuracy.bench import Job

#: RMSE differences the curve reports (first − second), where both were run.
CURVE_PAIRS = (
    ("bitro", "training_mean"),
    ("bitro", "hest_probe"),
    ("bitro", "mlp"),
    ("bitro_context", "bitro"),
    ("from_st_lora", "bitro"),
    ("from_st_lora", "training_mean"),
    ("from_st_lora", "mlp"),
)


def pooled_predictions(jobs: Sequence[Job]) -> tuple[np.ndarray, dict[str, list[np.ndarray]]]:
    """Truth (patients × genes, in fold order) and each model's complete seeds' out-of-fold predictions."""
    spec = jobs[0].spec
    parts = [truth(spec, fold)[0] for fold in folds(spec)]
    y = np.concatenate(parts)
    found: dict[str, dict[int, list[np.ndarray | None]]] = {}
    for job in jobs:
        result = job.cached()
        slots = found.setdefault(job.model, {}).setdefault(job.seed, [None] * len(parts))
        slots[job.fold] = None if result is None else result.prediction
    predictions = {
        model: [np.concatenate(p) for p in seeds.values() if all(x is not None for x in p)]  # type: ignore[misc]
        for model, seeds in found.items()
    }
    return y, {m: p for m, p in predictions.items() if p}


def rmse(y: np.ndarray, predictions: Sequence[np.ndarray], rows: np.ndarray | None = None) -> float:
    """The seeds' mean RMSE over ``rows`` (all rows by default)."""
    rows = np.arange(len(y)) if rows is None else rows
    return float(np.mean([np.sqrt(((p[rows] - y[rows]) ** 2).mean()) for p in predictions]))


def pcc_gene(y: np.ndarray, predictions: Sequence[np.ndarray], rows: np.ndarray | None = None) -> float:
    """The seeds' mean of the pooled per-gene PCC (over patients) averaged over genes; NaN for a constant."""
    rows = np.arange(len(y)) if rows is None else rows
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.mean([np.nanmean(pcc_columns(y[rows], p[rows])) for p in predictions]))


def _interval(draws: list[float]) -> tuple[float, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanpercentile(np.array(draws, dtype=np.float64), [2.5, 97.5])
    return float(low), float(high)


def curve_tables(points: dict[int, list[Job]], n_boot: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per point and model: RMSE and PCC gene with bootstrap 95 % intervals over patients (the same
    resamples for every model of a point); and the :data:`CURVE_PAIRS` RMSE differences."""
    rows, paired = [], []
    for n, jobs in sorted(points.items()):
        y, predictions = pooled_predictions(jobs)
        resamples = bootstrap_rows(np.zeros(len(y)), n_boot, 0)
        for model, p in predictions.items():
            rmse_low, rmse_high = _interval([rmse(y, p, r) for r in resamples])
            constant = all(np.ptp(q, axis=0).max() == 0 for q in p)
            pcc = np.nan if constant else pcc_gene(y, p)
            pcc_low, pcc_high = (
                (np.nan, np.nan) if constant else _interval([pcc_gene(y, p, r) for r in resamples])
            )
            rows.append(
                {
                    "patients": n,
                    "model": model,
                    "seeds": len(p),
                    "rmse": rmse(y, p),
                    "rmse_low": rmse_low,
                    "rmse_high": rmse_high,
                    "pcc_gene": pcc,
                    "pcc_low": pcc_low,
                    "pcc_high": pcc_high,
                }
            )
        for first, second in CURVE_PAIRS:
            if first in predictions and second in predictions:
                a, b = predictions[first], predictions[second]
                low, high = _interval([rmse(y, a, r) - rmse(y, b, r) for r in resamples])
                paired.append(
                    {
                        "patients": n,
                        "first": first,
                        "second": second,
                        "rmse_difference": rmse(y, a) - rmse(y, b),
                        "low": low,
                        "high": high,
                    }
                )
    return pd.DataFrame(rows), pd.DataFrame(paired)


def curve_markdown(table: pd.DataFrame, paired: pd.DataFrame) -> list[str]:
    """The curve's tables as Markdown lines (empty when nothing ran)."""
    if table.empty:
        return []

    def cell(r: pd.Series, metric: str, low: str, high: str) -> str:
        if np.isnan(r[metric]):
            return "—"
        return f"{r[metric]:.3f} [{r[low]:.3f}, {r[high]:.3f}]"

    shown = table.assign(
        rmse=table.apply(lambda r: cell(r, "rmse", "rmse_low", "rmse_high"), axis=1),
        pcc_gene=table.apply(lambda r: cell(r, "pcc_gene", "pcc_low", "pcc_high"), axis=1),
    )[["patients", "model", "seeds", "rmse", "pcc_gene"]]
    header = "| " + " | ".join(shown.columns) + " |"
    lines = [
        "**bulk learning curve: out-of-fold RMSE and pooled PCC gene (log1p TPM), seeds' mean [bootstrap 95 %"
        " interval over patients]**",
        "",
        header,
        "| " + " | ".join("---" for _ in shown.columns) + " |",
        *("| " + " | ".join(str(v) for v in row) + " |" for row in shown.itertuples(index=False)),
        "",
    ]
    if not paired.empty:
        lines += [
            "**bulk learning curve: RMSE differences (first − second), paired bootstrap 95 % interval**",
            "",
            "| patients | first | second | RMSE difference |",
            "| --- | --- | --- | --- |",
            *(
                f"| {r.patients} | {r.first} | {r.second} | "
                f"{r.rmse_difference:+.3f} [{r.low:+.3f}, {r.high:+.3f}] |"
                for r in paired.itertuples(index=False)
            ),
            "",
        ]
    return lines


def curve_figure(table: pd.DataFrame, out: Path) -> None:
    """RMSE and PCC gene against patients, one line per model, intervals as error bars."""
    from bitro.plot._figure import new_figure, save_png

    if table.empty:
        return
    figure = new_figure(9.0, 3.6)
    axes = figure.subplots(1, 2)
    for ax, (metric, low, high, label) in zip(
        axes,
        (
            ("rmse", "rmse_low", "rmse_high", "out-of-fold RMSE (log1p TPM)"),
            ("pcc_gene", "pcc_low", "pcc_high", "pooled PCC gene (log1p TPM)"),
        ),
        strict=True,
    ):
        for model, part in table.groupby("model", sort=True):
            part = part.sort_values("patients")
            if part[metric].isna().all():
                continue
            error = np.vstack([part[metric] - part[low], part[high] - part[metric]])
            ax.errorbar(part["patients"], part[metric], yerr=error, marker="o", ms=3, capsize=2, label=model)
        ax.set_xscale("log")
        ax.set_xticks(sorted(table.patients.unique()), [str(n) for n in sorted(table.patients.unique())])
        ax.set_xlabel("patients N (each fold trains on N (k - 1) / k)")
        ax.set_ylabel(label)
    axes[0].legend(fontsize=6)
    save_png(figure, out)
