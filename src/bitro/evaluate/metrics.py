"""Moved to :mod:`bitro.metrics`; kept for the importers outside training and evaluation."""

from __future__ import annotations

from bitro.metrics import (
    Evaluation,
    MetricSet,
    Scores,
    evaluate,
    js_divergence,
    metric_rows,
    pcc_gene,
    pcc_overall,
    rmse,
    rmse_gene,
    spearman_gene,
    summarise_folds,
)

__all__ = [
    "Evaluation",
    "MetricSet",
    "Scores",
    "evaluate",
    "js_divergence",
    "metric_rows",
    "pcc_gene",
    "pcc_overall",
    "rmse",
    "rmse_gene",
    "spearman_gene",
    "summarise_folds",
]
