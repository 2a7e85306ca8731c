"""Packed ↔ padded layouts, so attention can run within segments (units) of a packed cell array.

Only non-empty segments get a row of the padded tensor: an empty unit would have no key to attend to and
its softmax would be NaN. Padded positions are marked False in the mask and must be masked by every
consumer (docs/pitfalls.md#padding-never-counts); :meth:`SegmentPadding.unpad` drops them again.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class SegmentPadding:
    """Where each packed element goes in a (S, L, ...) padded tensor.

    Attributes
    ----------
    row
        (N,) padded row (non-empty segment index) of each packed element.
    col
        (N,) position of each element within its segment.
    mask
        (S, L) bool, True at real elements.
    """

    row: Tensor
    col: Tensor
    mask: Tensor

    @classmethod
    def from_ptr(cls, ptr: Tensor) -> SegmentPadding:
        """Layout for segments ``[ptr[s], ptr[s+1])`` of a packed array of ``ptr[-1]`` elements."""
        sizes = ptr[1:] - ptr[:-1]
        n = int(ptr[-1])
        nonempty = sizes > 0
        kept = sizes[nonempty]
        n_rows = int(kept.numel())
        max_len = int(kept.max()) if n_rows else 0
        rows = torch.arange(n_rows, device=ptr.device)
        row = torch.repeat_interleave(rows, kept, output_size=n)
        starts = ptr[:-1][nonempty]
        col = torch.arange(n, device=ptr.device) - starts[row]
        mask = torch.zeros(n_rows, max_len, dtype=torch.bool, device=ptr.device)
        mask[row, col] = True
        return cls(row=row, col=col, mask=mask)

    def pad(self, x: Tensor) -> Tensor:
        """(N, ...) packed → (S, L, ...) padded with zeros."""
        out = x.new_zeros((*self.mask.shape, *x.shape[1:]))
        out[self.row, self.col] = x
        return out

    def unpad(self, x: Tensor) -> Tensor:
        """(S, L, ...) padded → (N, ...) packed (padding dropped)."""
        return x[self.row, self.col]
