"""What a bundle records of the cross-validation of its cohort: the headline scores and each gene's PCC.

Read from the cohort's ``metrics.tsv`` (``bitro summarise``: one row per fold, then ``mean`` and ``std``,
per level, space and scope) and its per-gene table ``pcc_genes.tsv`` (``bitro plot``: one row per fold and
gene). The model in a bundle is not the folds' models: it is trained on the whole cohort, and these scores
are the estimate of how well a model trained that way predicts slides it has not seen.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from bitro.errors import InputError
from bitro.evaluate.summary import RUN_COLUMN, TRANSFER_RUN
from bitro.io.validate import require_file

#: Scores of ``metrics.tsv`` a bundle records (each with its spread over the folds).
SCORES = ("pcc_gene", "pcc_overall", "spearman_gene", "rmse")
#: The model whose rows are read (``metrics.tsv`` of a cohort also holds the baselines' in other files).
MODEL = "bitro"
#: Rows of ``metrics.tsv`` that summarise the folds rather than being one.
SUMMARY_ROWS = ("mean", "std")


def _number(value: Any) -> float | None:
    """A finite float, or None (JSON has no NaN)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _read_table(path: str | os.PathLike[str], what: str, columns: Sequence[str]) -> pd.DataFrame:
    path = require_file(path, what)
    try:
        table = pd.read_csv(path, sep="\t", dtype={"fold": str})
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise InputError(path, f"is not a tab-separated table ({exc})") from exc
    missing = [c for c in columns if c not in table]
    if missing:
        raise InputError(path, f"lacks the columns {missing} of a bitro {what}")
    return table


def cv_summary(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The cohort's cross-validated scores: per level, space and scope, the mean over folds of each of
    :data:`SCORES`, its standard deviation (``<score>_std``) and the number of folds."""
    table = _read_table(path, "metrics table", ("fold", "level", "space", "scope"))
    if RUN_COLUMN in table:
        # A transfer's table: its own rows, not the target cohort's re-scored beside them.
        table = table[table[RUN_COLUMN].astype(str) == TRANSFER_RUN]
    elif "model" in table:
        table = table[table["model"].astype(str) == MODEL]
    rows = []
    for (level, space, scope), group in table.groupby(["level", "space", "scope"], sort=False):
        folds = group[~group["fold"].isin(SUMMARY_ROWS)]
        row: dict[str, Any] = {
            "level": str(level),
            "space": str(space),
            "scope": str(scope),
            "n_folds": len(folds),
        }
        mean = group[group["fold"] == "mean"]
        std = group[group["fold"] == "std"]
        for score in (s for s in SCORES if s in group):
            values = folds[score].to_numpy(np.float64)
            values = values[np.isfinite(values)]
            fallback = (values.mean(), values.std()) if len(values) else (math.nan, math.nan)
            row[score] = _number(mean[score].iloc[0] if len(mean) else fallback[0])
            row[f"{score}_std"] = _number(std[score].iloc[0] if len(std) else fallback[1])
        rows.append(row)
    return rows


def gene_pcc(path: str | os.PathLike[str], genes: Sequence[str], *, level: str) -> dict[str, Any] | None:
    """Each gene's PCC averaged over the folds (None where undefined), from ``pcc_genes.tsv``.

    Of the table's (level, space, scope) groups, the first one at ``level`` (``spot``, ``slide`` or
    ``cell``) is used, as ``metrics.tsv`` lists it first (log1p space). Returns ``None`` when the table has
    no row at that level.
    """
    table = _read_table(path, "per-gene PCC table", ("fold", "level", "space", "scope", "gene", "pcc"))
    table = table[table["level"].astype(str) == level]
    if table.empty:
        return None
    first = table.iloc[0]
    group = table[(table["space"] == first["space"]) & (table["scope"] == first["scope"])]
    per_gene = group.groupby(group["gene"].astype(str), sort=False)["pcc"].mean()
    return {
        "level": level,
        "space": str(first["space"]),
        "scope": str(first["scope"]),
        "n_folds": int(group["fold"].nunique()),
        "pcc": {str(g): _number(per_gene.get(g)) for g in genes},
    }


def best_genes(genes: Sequence[str], pcc: Mapping[str, float | None] | None, n: int) -> list[str]:
    """The ``n`` genes of highest cross-validated PCC (undefined ones last); in ``genes`` order without."""
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    if not pcc:
        return list(genes)[:n]
    order = sorted(
        range(len(genes)),
        key=lambda i: (pcc.get(genes[i]) is None, -(pcc.get(genes[i]) or 0.0), i),
    )
    return [genes[i] for i in order[:n]]
