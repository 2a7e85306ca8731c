"""Packed ↔ padded layouts, so attention can run within segments (units) of a packed cell array.

Only non-empty segments get a row of the padded tensor: an empty unit would have no key to attend to and
its softmax would be NaN. Padded positions are marked False in the mask and must be masked by every
consumer (docs/pitfalls.md#padding-never-counts); :meth:`SegmentPadding.unpad` drops them again.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

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

    @cached_property
    def index(self) -> Tensor:
        """(N,) position of each packed element in the flattened (S·L) padded rows."""
        return self.row * self.mask.shape[1] + self.col

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
        mask = torch.arange(max_len, device=ptr.device) < kept[:, None]
        return cls(row=row, col=col, mask=mask)

    def pad(self, x: Tensor) -> Tensor:
        """(N, ...) packed → (S, L, ...) padded with zeros."""
        s, length = self.mask.shape
        rest = x.shape[1:]
        return x.new_zeros((s * length, *rest)).index_copy(0, self.index, x).view(s, length, *rest)

    def unpad(self, x: Tensor) -> Tensor:
        """(S, L, ...) padded → (N, ...) packed (padding dropped)."""
        return x.reshape(-1, *x.shape[2:]).index_select(0, self.index)
