"""Pseudo-cell profiles (paper §3.4, eq. 10): y_cell[i, g] = A[g, i] · ŷ_g.

The attention of a bag sums to 1 over its cells, so the profiles of a bag's cells add up to the bag's
prediction gene by gene. That split is only meaningful where amounts add up: counts (ST, Xenium) or TPM
(bulk), never log1p or z-scores. The model predicts z-scored log1p values, so callers map
its predictions to count space first with a :class:`CountTransform`, usually :class:`Denormalise`.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch
from torch import Tensor


class CountTransform(Protocol):
    """Maps predictions in target space to count (or TPM) space, elementwise, differentiably."""

    def __call__(self, prediction: Tensor) -> Tensor:
        """(..., G) target-space values → (..., G) non-negative amounts."""
        ...


class Denormalise:
    """Inverse of log1p + per-gene z-score (paper eq. 21): ``count = expm1(z · (std + eps) + mean)``.

    Counts are clamped at 0 (a log value below 0 has no count), and the log value at ``max_log`` so an
    untrained model cannot overflow float32.

    Parameters
    ----------
    mean, std
        (G,) per-gene mean and standard deviation of log1p expression on the training data.
    eps
        The stability constant that was added to ``std`` when z-scoring.
    max_log
        Upper clamp of the log1p value.
    """

    def __init__(
        self, mean: Tensor | np.ndarray, std: Tensor | np.ndarray, eps: float = 0.0, max_log: float = 80.0
    ) -> None:
        self.mean = torch.as_tensor(mean, dtype=torch.float32)
        self.scale = torch.as_tensor(std, dtype=torch.float32) + eps
        if self.mean.shape != self.scale.shape or self.mean.ndim != 1:
            raise ValueError(
                f"mean and std must both have shape (G,), got {self.mean.shape}, {self.scale.shape}"
            )
        self.max_log = max_log

    def log1p(self, prediction: Tensor) -> Tensor:
        """(..., G) z-scores → (..., G) log1p values."""
        mean, scale = self.mean.to(prediction.device), self.scale.to(prediction.device)
        return prediction * scale + mean

    def __call__(self, prediction: Tensor) -> Tensor:
        """(..., G) z-scores → (..., G) counts."""
        return torch.expm1(self.log1p(prediction).clamp(max=self.max_log)).clamp(min=0.0)


def pseudo_cells(attention: Tensor, bag_prediction: Tensor, cell_bag: Tensor | None = None) -> Tensor:
    """Distribute each bag's predicted amounts over its cells (eq. 10).

    Parameters
    ----------
    attention
        (N, G) cell-major attention from :class:`~bitro.model.bitro.BiTroOutput` (or one streamed chunk).
    bag_prediction
        Predictions already in count (or TPM) space: (B, G) for a batch, or (G,) for a single bag.
    cell_bag
        (N,) bag of each cell; required when ``bag_prediction`` is (B, G).

    Returns
    -------
    Tensor
        (N, G) pseudo-cell profiles; over the cells of bag b they sum to ``bag_prediction[b]``.
    """
    if bag_prediction.ndim == 1:
        return attention * bag_prediction[None, :]
    if cell_bag is None:
        raise ValueError("cell_bag is required when bag_prediction holds several bags")
    return attention * bag_prediction[cell_bag]
