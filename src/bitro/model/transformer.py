"""Global spatial embedding: learned x/y position tables and a unit-wise Transformer (paper §3.3, eq. 6).

Positions are each cell's offset from its unit centre in fixed micrometre bins, the same physical scale in
every unit: offsets are clipped into ``[-range_um, range_um]`` and binned by ``bin_um``. The x and y
embeddings are concatenated to the GAT output (eq. 6) and a linear ``fuse`` maps the result back to D.

Encoder blocks are pre-LN and written from ``nn.Linear`` (separate ``q``, ``k``, ``v``, ``out`` and ``ff1``,
``ff2``) with ``F.scaled_dot_product_attention``, so LoRA can target every projection and no fused fast
path bypasses adapters. Attention runs within each unit: cells are padded per unit to the
batch's largest unit and padded keys are masked, so padding never changes a real cell's output. Only the
attention itself sees the padding: the LayerNorms, projections and feed-forward layers run on the packed
cells (:meth:`EncoderBlock.packed`), which on ST spots of 4–20 cells skips about 40 % of the rows a fully
padded block would compute.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: N812 (the PyTorch convention)
from torch import Tensor, nn

from bitro.model.padding import SegmentPadding


class PositionEmbedding(nn.Module):
    """Learned x and y lookup tables indexed by binned µm offsets.

    Parameters
    ----------
    bin_um
        Bin width in µm.
    range_um
        Offsets are clipped into ±``range_um``.
    dim
        Width of each table; the output is ``2 * dim`` wide (x ⊕ y).
    """

    def __init__(self, bin_um: float, range_um: float, dim: int) -> None:
        super().__init__()
        if bin_um <= 0 or range_um <= 0:
            raise ValueError(f"bin_um and range_um must be positive, got {bin_um}, {range_um}")
        self.bin_um = float(bin_um)
        self.range_um = float(range_um)
        self.n_bins = math.floor(2 * self.range_um / self.bin_um) + 1
        self.x = nn.Embedding(self.n_bins, dim)
        self.y = nn.Embedding(self.n_bins, dim)

    def bins(self, offsets_um: Tensor) -> Tensor:
        """(N, 2) µm offsets → (N, 2) int64 bin indices in ``[0, n_bins)``."""
        clipped = offsets_um.clamp(-self.range_um, self.range_um) + self.range_um
        return torch.floor(clipped / self.bin_um).long().clamp_(0, self.n_bins - 1)

    def forward(self, offsets_um: Tensor) -> Tensor:
        """(N, 2) µm offsets → (N, 2·dim) position codes s_i = Emb_x(x_i) ⊕ Emb_y(y_i)."""
        b = self.bins(offsets_um)
        return torch.cat([self.x(b[:, 0]), self.y(b[:, 1])], dim=-1)


class SelfAttention(nn.Module):
    """Multi-head self-attention from separate q, k, v, out linears and a key padding mask.

    Parameters
    ----------
    dim
        Model width; must be divisible by ``heads``.
    heads
        Number of heads.
    dropout
        Attention dropout (training only).
    """

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.dropout = dropout
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """(S, L, D) padded sequences, (S, L) bool mask (True = real) → (S, L, D).

        Every sequence must hold at least one real element.
        """
        s, length, d = x.shape

        def split(t: Tensor) -> Tensor:
            return t.view(s, length, self.heads, d // self.heads).transpose(1, 2)

        y = F.scaled_dot_product_attention(
            split(self.q(x)),
            split(self.k(x)),
            split(self.v(x)),
            attn_mask=self.key_mask(mask),
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.out(y.transpose(1, 2).reshape(s, length, d))

    def packed(self, x: Tensor, layout: SegmentPadding) -> Tensor:
        """(N, D) packed cells → (N, D): the same attention within the segments of ``layout``, with
        only the queries, keys and values padded."""
        s, length = layout.mask.shape
        d = x.shape[1]
        qkv = layout.pad(torch.cat([self.q(x), self.k(x), self.v(x)], dim=1))  # (S, L, 3D)
        q, k, v = qkv.view(s, length, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=self.key_mask(layout.mask), dropout_p=self.dropout if self.training else 0.0
        )
        return self.out(layout.unpad(y.transpose(1, 2)).reshape(-1, d))

    def key_mask(self, mask: Tensor) -> Tensor | None:
        """(S, L) bool mask → the ``attn_mask`` of ``scaled_dot_product_attention``: (S, 1, 1, L), so that
        every query sees only real keys."""
        return mask[:, None, None, :]


class EncoderBlock(nn.Module):
    """Pre-LN Transformer block: x + Attn(LN(x)), then x + FF(LN(x)) with GELU.

    Parameters
    ----------
    dim
        Model width.
    heads
        Attention heads.
    ff_mult
        Feed-forward width is ``ff_mult * dim``.
    dropout
        Dropout on attention weights and on both residual branches.
    """

    def __init__(self, dim: int, heads: int, ff_mult: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.ff1 = nn.Linear(dim, ff_mult * dim)
        self.ff2 = nn.Linear(ff_mult * dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        """(S, L, D), (S, L) mask → (S, L, D)."""
        x = x + self.dropout(self.attn(self.norm1(x), mask))
        return self.feed_forward(x)

    def packed(self, x: Tensor, layout: SegmentPadding) -> Tensor:
        """(N, D) packed cells → (N, D), attention within the segments of ``layout``; the real cells'
        outputs of :meth:`forward` on the padded cells."""
        x = x + self.dropout(self.attn.packed(self.norm1(x), layout))
        return self.feed_forward(x)

    def feed_forward(self, x: Tensor) -> Tensor:
        """x + FF(LN(x)), row by row."""
        return x + self.dropout(self.ff2(self.dropout(F.gelu(self.ff1(self.norm2(x))))))


class CellTransformer(nn.Module):
    """Position codes ⊕ GAT output → ``fuse`` → pre-LN blocks within each unit → final LayerNorm.

    Parameters
    ----------
    dim
        Model width D.
    layers, heads, ff_mult, dropout
        Encoder depth, heads, feed-forward multiplier and dropout.
    position_bin_um, position_range_um, position_dim
        Position table bin width, clipping range (µm) and width per axis.
    """

    def __init__(
        self,
        dim: int,
        layers: int,
        heads: int,
        ff_mult: int,
        dropout: float,
        position_bin_um: float,
        position_range_um: float,
        position_dim: int,
    ) -> None:
        super().__init__()
        self.position = PositionEmbedding(position_bin_um, position_range_um, position_dim)
        self.fuse = nn.Linear(dim + 2 * position_dim, dim)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(EncoderBlock(dim, heads, ff_mult, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)

    def forward(
        self, h: Tensor, offsets_um: Tensor, unit_ptr: Tensor, layout: SegmentPadding | None = None
    ) -> Tensor:
        """(N, D) GAT states, (N, 2) µm offsets, (U+1,) unit pointer → (N, D) cell features H_cell.

        ``layout``: ``SegmentPadding.from_ptr(unit_ptr)`` when the caller has it already.
        """
        x = self.dropout(self.fuse(torch.cat([h, self.position(offsets_um)], dim=-1)))
        layout = SegmentPadding.from_ptr(unit_ptr) if layout is None else layout
        for block in self.blocks:
            x = block.packed(x, layout)
        return self.norm(x)
