"""Cohort tables: each fold's metrics, then their mean and standard deviation per model, level and space.

``results/{cohort}/metrics.tsv`` holds BiTro's rows and ``baselines.tsv`` the baselines' rows, each with a
``fold`` column whose last rows per group are ``mean`` and ``std`` (ddof = 1), and the ``space`` and
``scope`` of every number (PITFALLS 11).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from bitro._atomic import atomic_path
from bitro.errors import InputError
from bitro.evaluate.metrics import summarise_folds
from bitro.io.validate import require_file

GROUP = ["model", "level", "space", "scope"]


def read_fold_tables(paths: Sequence[str | Path]) -> pd.DataFrame:
    """Concatenate per-fold tables, checking each has the columns a summary needs."""
    frames = []
    for path in paths:
        frame = pd.read_csv(require_file(path, "fold metrics"), sep="\t")
        missing = {"fold", *GROUP} - set(frame.columns)
        if missing:
            raise InputError(path, f"lacks columns {sorted(missing)}")
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["fold", *GROUP])


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Per model, level, space and scope: the fold rows followed by ``mean`` and ``std`` rows."""
    parts = []
    for _, group in table.groupby(GROUP, sort=False):
        summary = summarise_folds(group.to_dict(orient="records"))
        summary = summary.rename_axis("fold").reset_index()
        for column in GROUP:
            summary[column] = group[column].iloc[0]
        parts.append(summary)
    if not parts:
        return table
    out = pd.concat(parts, ignore_index=True)
    return out[["fold", *GROUP, *[c for c in out.columns if c not in {"fold", *GROUP}]]]


def summarise_cohort(
    metrics: Sequence[str | Path],
    out: str | Path,
    *,
    baselines: Sequence[str | Path] = (),
    baselines_out: str | Path | None = None,
) -> pd.DataFrame:
    """Write the cohort's ``metrics.tsv`` (and ``baselines.tsv``) from the folds' tables; returns metrics."""
    table = summarise(read_fold_tables(metrics))
    with atomic_path(out) as tmp:
        table.to_csv(tmp, sep="\t", index=False)
    if baselines and baselines_out:
        with atomic_path(baselines_out) as tmp:
            summarise(read_fold_tables(baselines)).to_csv(tmp, sep="\t", index=False)
    return table


#: Headline columns of the demo summary.
HEADLINE = ["pcc_gene", "pcc_overall", "spearman_gene", "rmse", "js_divergence"]


def headline_rows(table: pd.DataFrame, *, cohort: str, protocol: str) -> pd.DataFrame:
    """``mean ± std`` over folds of the headline metrics, one row per model, level and space."""
    rows = []
    for (model, level, space, scope), group in table.groupby(GROUP, sort=False):
        folds = group[~group["fold"].isin(["mean", "std"])]
        mean = group[group["fold"] == "mean"].iloc[0]
        std = group[group["fold"] == "std"].iloc[0]
        row: dict[str, object] = {"cohort": cohort, "protocol": protocol, "model": model, "level": level}
        row |= {"space": space, "scope": scope, "n_folds": len(folds)}
        for column in HEADLINE:
            if column in group:
                value, spread = float(mean[column]), float(std[column])
                row[column] = f"{value:.3f} ± {spread:.3f}" if np.isfinite(spread) else f"{value:.3f}"
        rows.append(row)
    return pd.DataFrame(rows)


def demo_summary(cohorts: dict[str, tuple[str, list[Path]]], out: str | Path) -> pd.DataFrame:
    """``results/demo_summary.tsv``: each cohort's BiTro (with and without transfer) beside every baseline.

    ``cohorts`` maps a cohort name to its protocol label and the summary tables to read (its
    ``metrics.tsv``, ``baselines.tsv`` and any ``results/transfer/*_to_<cohort>/metrics.tsv``).
    """
    parts = []
    for cohort, (protocol, paths) in cohorts.items():
        for path in paths:
            parts.append(
                headline_rows(pd.read_csv(require_file(path), sep="\t"), cohort=cohort, protocol=protocol)
            )
    table = pd.concat(parts, ignore_index=True)
    with atomic_path(out) as tmp:
        table.to_csv(tmp, sep="\t", index=False)
    return table


#: The unit level and space each cohort level is compared on in the ablation table (paper Tables 7-8).
ABLATION_LEVEL = {"spot": "log1p counts", "slide": "log1p TPM"}


def _ablation_row(model: str) -> tuple[str, str]:
    """(type, configuration) of a model name: ``bitro``, ``bitro_transfer_<mode>``, ``bitro_<variant>``."""
    if model == "bitro":
        return "base", "standard"
    if model.startswith("bitro_transfer_"):
        return f"transfer ({model.removeprefix('bitro_transfer_')})", "standard"
    return "base", model.removeprefix("bitro_")


def ablation_table(cohorts: dict[str, Sequence[str | Path]], out: str | Path) -> pd.DataFrame:
    """Paper Tables 7-8 in their shape: one row per (type, configuration), ``O.`` and ``G.`` per cohort.

    ``cohorts`` maps a cohort to its summary tables (main ``metrics.tsv``, transfer and ablation
    ``metrics.tsv``). Cells hold ``mean ± std`` over folds of PCC overall (O.) and PCC gene (G.) on spots
    in log1p counts or slides in log1p TPM; a configuration a cohort did not run is left empty. Writes
    ``out`` and returns the table (columns ``type``, ``configuration``, then ``<cohort> O.``/``G.``).
    """
    cells: dict[tuple[str, str], dict[str, str]] = {}
    for cohort, paths in cohorts.items():
        for path in paths:
            table = pd.read_csv(require_file(path, "cohort metrics"), sep="\t")
            keep = table["level"].map(ABLATION_LEVEL).eq(table["space"])
            for model, group in table[keep].groupby("model", sort=False):
                mean = group[group["fold"] == "mean"].iloc[0]
                std = group[group["fold"] == "std"].iloc[0]
                row = cells.setdefault(_ablation_row(str(model)), {})
                for column, label in (("pcc_overall", "O."), ("pcc_gene", "G.")):
                    value, spread = float(mean[column]), float(std[column])
                    text = f"{value:.3f} ± {spread:.3f}" if np.isfinite(spread) else f"{value:.3f}"
                    row[f"{cohort} {label}"] = text
    if not cells:
        raise InputError(out, "no spot or slide rows in the ablation tables")
    columns = [f"{cohort} {label}" for cohort in cohorts for label in ("O.", "G.")]
    # Base runs first, the standard configuration on top of each type.
    order = sorted(cells, key=lambda key: (key[0] != "base", key[0], key[1] != "standard", key[1]))
    frame = pd.DataFrame(
        [{"type": kind, "configuration": config} | cells[(kind, config)] for kind, config in order],
        columns=["type", "configuration", *columns],
    )
    with atomic_path(out) as tmp:
        frame.to_csv(tmp, sep="\t", index=False)
    return frame
