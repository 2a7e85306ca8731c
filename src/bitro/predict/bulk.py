"""``bulk.tsv``: one predicted profile per slide, one row per slide over a cohort.

A bulk model predicts the slide as one bag: its profile is that bag's prediction (TPM), the row the
evaluation scores at the ``slide`` level (:func:`bitro.evaluate.predict.predict_sample`), and the sum of
the slide's pseudo-cells. A model of spots predicts units; the slide's profile is then their pseudo-bulk,
the sum of the units' predicted counts, as a section's spots add up to what a bulk assay of it would
count (and as :mod:`bitro.preprocess.targets` adds a Xenium unit's cells into a pseudo-spot). Units the
model could not predict (NaN rows, no cells) are left out and not counted.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from bitro._atomic import atomic_path
from bitro.errors import InputError
from bitro.io.validate import require_file
from bitro.predict._record import amounts, check_level, check_space, gene_names

#: Columns of ``bulk.tsv`` before the genes.
META_COLUMNS = ("sample_id", "space", "trained_level", "n_units")


def slide_profile(
    prediction: np.ndarray, *, trained_level: str, how: Literal["sum", "mean"] = "sum"
) -> tuple[np.ndarray, int]:
    """One slide's (genes,) profile from its predicted rows, and the number of rows it is made of.

    Parameters
    ----------
    prediction
        (rows, genes) amounts: a bulk model's one slide row, or a unit model's units (NaN rows skipped).
    trained_level
        ``"bulk"``: ``prediction`` must be the slide's one row, returned as it is. ``"spot"``: the rows
        are units and are aggregated by ``how``.
    how
        ``"sum"`` (pseudo-bulk, default) or ``"mean"`` (average unit).
    """
    values = amounts(prediction, len(prediction), "prediction").astype(np.float64)
    if check_level(trained_level) == "bulk":
        if len(values) != 1:
            raise ValueError(f"a bulk model predicts one row per slide, got {len(values)}")
        return values[0], 1
    if how not in ("sum", "mean"):
        raise ValueError(f"how must be 'sum' or 'mean', got {how!r}")
    predicted = np.isfinite(values).all(axis=1)
    n = int(predicted.sum())
    if n == 0:
        return np.full(values.shape[1], np.nan), 0
    total = values[predicted].sum(axis=0)
    return (total if how == "sum" else total / n), n


def bulk_table(
    profiles: Mapping[str, np.ndarray],
    genes: Sequence[str],
    *,
    space: str,
    trained_level: str,
    n_units: Mapping[str, int] | None = None,
) -> pd.DataFrame:
    """The rows of ``bulk.tsv``: ``sample_id``, ``space``, ``trained_level``, ``n_units``, then one column
    per gene, one row per slide of ``profiles`` (sample → (genes,) profile) in its order."""
    check_space(space)
    check_level(trained_level)
    names = gene_names(genes, len(genes))
    clash = sorted(set(names) & set(META_COLUMNS))
    if clash:
        raise ValueError(f"gene names clash with the columns of bulk.tsv: {clash}")
    rows = np.stack([np.asarray(p, np.float64) for p in profiles.values()]) if profiles else None
    values = np.zeros((0, len(names))) if rows is None else rows
    if values.shape[1] != len(names):
        raise ValueError(f"profiles have {values.shape[1]} genes, expected {len(names)}")
    meta = pd.DataFrame(
        {
            "sample_id": [str(s) for s in profiles],
            "space": space,
            "trained_level": trained_level,
            "n_units": [int((n_units or {}).get(s, 1)) for s in profiles],
        }
    )
    return pd.concat([meta, pd.DataFrame(values, columns=names)], axis=1)


def write_bulk_table(table: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write ``bulk.tsv`` (a :func:`bulk_table`) atomically, tab-separated, full float precision."""
    missing = [c for c in META_COLUMNS if c not in table]
    if missing:
        raise ValueError(f"bulk table lacks columns {missing}")
    path = Path(path)
    with atomic_path(path) as tmp:
        table.to_csv(tmp, sep="\t", index=False, float_format="%.9g")
    return path


def read_bulk_table(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read ``bulk.tsv`` back (sample ids as strings)."""
    return pd.read_csv(require_file(path, "bulk profiles"), sep="\t", dtype={"sample_id": str})


def gather_profiles(paths: Sequence[str | os.PathLike[str]]) -> pd.DataFrame:
    """One ``bulk.tsv`` of many slides' one-row profiles (``profile.tsv``), in the order given.

    Raises
    ------
    InputError
        A profile whose genes, space or level differ from the first's, or a slide given twice.
    """
    tables = [read_bulk_table(p) for p in paths]
    if not tables:
        raise ValueError("no profiles to gather")
    first = tables[0]
    for path, table in zip(paths, tables, strict=True):
        missing = [c for c in META_COLUMNS if c not in table]
        if missing:
            raise InputError(path, f"lacks the columns {missing} of a bitro profile")
        if list(table.columns) != list(first.columns):
            raise InputError(path, f"holds other genes than {paths[0]}")
        for column in ("space", "trained_level"):
            if set(table[column].astype(str)) != set(first[column].astype(str)):
                raise InputError(path, f"has another {column} than {paths[0]}")
    table = pd.concat(tables, ignore_index=True)
    twice = table["sample_id"][table["sample_id"].duplicated()].tolist()
    if twice:
        raise InputError(paths[0], f"slides given twice: {twice[:5]}")
    return table
