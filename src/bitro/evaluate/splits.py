"""Moved to :mod:`bitro.folds.splits`; kept for the importers outside training and evaluation."""

from __future__ import annotations

from bitro.folds.splits import (
    Fold,
    Folds,
    Protocol,
    UnknownFoldError,
    check_disjoint,
    in_strips,
    leave_one_out,
    patient_split,
    read_folds,
    spatial_strips,
    split_shortfall,
    write_folds,
)

__all__ = [
    "Fold",
    "Folds",
    "Protocol",
    "UnknownFoldError",
    "check_disjoint",
    "in_strips",
    "leave_one_out",
    "patient_split",
    "read_folds",
    "spatial_strips",
    "split_shortfall",
    "write_folds",
]
