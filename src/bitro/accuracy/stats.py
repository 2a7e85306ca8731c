"""Per-gene PCC by sample, library-size normalisation and paired bootstrap intervals.

The benchmark scores spots within each test section (as the workflow does) and averages over sections;
bulk slides are pooled over the out-of-fold predictions of every patient. A per-gene PCC is undefined
(NaN) where the truth or the prediction is constant, and NaNs are left out of means, never counted as 0.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

#: Counts per ten thousand: the library-size-normalised space, so that density alone cannot carry a score.
NORMALISED_TOTAL = 1e4


def pcc_columns(truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """(G,) Pearson correlation of each column over the rows; NaN where a column is constant."""
    t = truth - truth.mean(axis=0)
    p = prediction - prediction.mean(axis=0)
    denominator = np.sqrt((t**2).sum(axis=0) * (p**2).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (t * p).sum(axis=0) / denominator
    return np.where(denominator > 1e-12 * max(float(np.abs(t).max(initial=0)), 1.0), r, np.nan)


def pcc_gene_by_sample(truth: np.ndarray, prediction: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """(G,) per-gene PCC within each sample of ``groups``, averaged over the samples where defined."""
    per_sample = np.stack(
        [pcc_columns(truth[groups == g], prediction[groups == g]) for g in np.unique(groups)]
    )
    with warnings.catch_warnings():  # a gene undefined in every sample stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(per_sample, axis=0)


def normalised_log1p(log1p_values: np.ndarray, total: float = NORMALISED_TOTAL) -> np.ndarray:
    """log1p counts → log1p of counts per ``total`` (each row's library scaled to ``total``)."""
    counts = np.expm1(np.clip(log1p_values, 0.0, None))
    library = counts.sum(axis=1, keepdims=True)
    return np.log1p(counts / np.maximum(library, 1e-12) * total)


def bootstrap_rows(groups: np.ndarray, n_boot: int, seed: int) -> list[np.ndarray]:
    """``n_boot`` resamples of row indices, drawn with replacement within each group (section)."""
    rng = np.random.default_rng(seed)
    members = [np.flatnonzero(groups == g) for g in np.unique(groups)]
    return [np.concatenate([rng.choice(m, len(m), replace=True) for m in members]) for _ in range(n_boot)]


def paired_difference(
    truth: np.ndarray,
    first: Sequence[np.ndarray],
    second: Sequence[np.ndarray],
    groups: np.ndarray,
    genes: np.ndarray | dict[str, np.ndarray],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    pooled: bool = False,
) -> Any:
    """Mean PCC gene (over ``genes``, a boolean mask) of ``first`` minus ``second`` and its bootstrap 95 %
    interval, resampling rows within groups; each side is a list of seeds' predictions, averaged per
    resample (the seeds' mean score, not the score of their mean prediction). ``pooled``: one PCC over
    all rows (bulk slides) instead of one per group. ``genes`` may be a dict of masks: then a dict of
    ``(difference, low, high)`` per mask, from the same resamples."""
    masks = genes if isinstance(genes, dict) else {"": genes}

    def per_gene(rows: np.ndarray, p: np.ndarray) -> np.ndarray:
        if pooled:
            return pcc_columns(truth[rows], p[rows])
        return pcc_gene_by_sample(truth[rows], p[rows], groups[rows])

    def scores(rows: np.ndarray) -> np.ndarray:
        a = [per_gene(rows, p) for p in first]
        b = [per_gene(rows, p) for p in second]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.array(
                [
                    np.mean([np.nanmean(x[m]) for x in a]) - np.mean([np.nanmean(x[m]) for x in b])
                    for m in masks.values()
                ]
            )

    point = scores(np.arange(len(truth)))
    draws = np.array([scores(rows) for rows in bootstrap_rows(groups, n_boot, seed)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.nanpercentile(draws, [2.5, 97.5], axis=0)
    out = {name: (float(point[i]), float(low[i]), float(high[i])) for i, name in enumerate(masks)}
    return out if isinstance(genes, dict) else out[""]
