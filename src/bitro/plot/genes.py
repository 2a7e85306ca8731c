"""Which genes a map shows: the best predicted ones, by per-gene PCC on log1p values."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bitro.metrics import pcc_gene


@dataclass(frozen=True)
class GeneScore:
    """A gene and its PCC across units (NaN where undefined: constant truth or prediction)."""

    gene: str
    pcc: float

    @property
    def label(self) -> str:
        """``PCC 0.812``, or ``PCC n/a`` where undefined."""
        return "PCC n/a" if math.isnan(self.pcc) else f"PCC {self.pcc:.3f}"


def log1p_pcc(truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """Per-gene Pearson correlation across units of ``log1p(truth)`` and ``log1p(prediction)``.

    The same numbers ``metrics.tsv`` averages: NaN entries are left out pairwise, undefined genes are NaN
    (:func:`bitro.metrics.pcc_gene`).
    """
    truth = np.log1p(np.asarray(truth, dtype=np.float64))
    prediction = np.log1p(np.asarray(prediction, dtype=np.float64))
    return pcc_gene(truth, prediction).values


def rank_genes(
    genes: Sequence[str], pcc: np.ndarray, n: int, *, tiebreak: np.ndarray | None = None
) -> list[GeneScore]:
    """The ``n`` genes of highest PCC, then undefined ones if too few.

    Equal PCCs are ordered by ``tiebreak`` (higher first) when given, else by their order in ``genes``.
    """
    pcc = np.asarray(pcc, dtype=np.float64)
    second = np.zeros(len(pcc)) if tiebreak is None else -np.asarray(tiebreak, dtype=np.float64)
    defined = np.flatnonzero(~np.isnan(pcc))
    order = defined[np.lexsort((second[defined], -pcc[defined]))]
    order = np.concatenate([order, np.flatnonzero(np.isnan(pcc))])[:n]
    return [GeneScore(str(genes[i]), float(pcc[i])) for i in order]


def top_genes(truth: np.ndarray, prediction: np.ndarray, genes: Sequence[str], n: int) -> list[GeneScore]:
    """The ``n`` best predicted genes of one sample: highest per-gene PCC on log1p across its units."""
    return rank_genes(genes, log1p_pcc(truth, prediction), n)
