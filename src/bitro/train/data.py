"""Moved to :mod:`bitro.folds.samples` and :mod:`bitro.folds.bags`; kept for the importers outside
training and evaluation (:mod:`bitro.accuracy`, the benchmarks)."""

from __future__ import annotations

from bitro.folds.bags import Bag, collate, make_bags, model_bag
from bitro.folds.samples import SampleData, load_sample, sample_features

__all__ = ["Bag", "SampleData", "collate", "load_sample", "make_bags", "model_bag", "sample_features"]
