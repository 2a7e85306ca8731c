"""Slide-level context for bulk bags: a Transformer over patch tokens (paper §3.3, issue 14 item 6).

The paper runs its Transformer over the cells of the whole slide "to capture cells' long-range relations
within the whole tumour". bitro's cell Transformer (:mod:`bitro.model.transformer`) attends within each
55 µm unit, so without this module a bulk slide's cells know nothing of the rest of the slide before
the MIL readout pools them. Exact attention over 10⁶ cells is out of reach on a CPU; this module works
one level up, where a slide has 10²–10⁵ tokens::

    t_u = mean of unit u's encoded cells + log(n_u) · w      patch token (n_u cells; empty units skipped)
    c   = LN(Blocks(t))                                      pre-LN Transformer over each bag's tokens
    h_i ← h_i + W_out c_{u(i)}                               every cell of unit u gets its context

``W_out`` starts at zero, so a freshly built model with context predicts exactly as one without it (the
context is learnt, never imposed at initialisation); and the module is built after every other block,
so the rest of the model draws the same initial weights with and without it.

Tokens carry no slide position (the model's batches hold offsets within units only): the context sees
the set of the slide's patches, what they hold and how many cells, not where they lie. Attention never
crosses bags. An ST spot is a bag of one unit, so there the context is a function of the spot itself.

A single bag (a streamed slide, :mod:`bitro.model.streaming`) runs without a padding mask, so
``scaled_dot_product_attention`` may use its memory-efficient kernel: memory O(U·D) in the U tokens.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from bitro.model.padding import SegmentPadding
from bitro.model.transformer import EncoderBlock, SelfAttention

#: ``none``: no slide-level context (every cell sees only its own unit; the default); ``patch_tokens``:
#: a Transformer over the bag's patch tokens, added back to every cell of the patch (this module).
SlideContext = Literal["none", "patch_tokens"]


class _TokenAttention(SelfAttention):
    """:class:`SelfAttention` that drops the mask when every key is real (one bag, no padding)."""

    def key_mask(self, mask: Tensor) -> Tensor | None:
        return None if bool(mask.all()) else mask[:, None, None, :]


class PatchContext(nn.Module):
    """Patch tokens → Transformer over each bag's tokens → per-unit context (module docstring).

    Parameters
    ----------
    dim
        Model width D.
    layers, heads, ff_mult, dropout
        Depth, heads, feed-forward multiplier and dropout of the token Transformer.
    """

    def __init__(self, dim: int, layers: int, heads: int, ff_mult: int, dropout: float) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"the slide context needs at least one layer, got {layers}")
        self.density = nn.Parameter(torch.zeros(dim))
        self.blocks = nn.ModuleList(EncoderBlock(dim, heads, ff_mult, dropout) for _ in range(layers))
        for block in self.blocks:
            block.attn = _TokenAttention(dim, heads, dropout)
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def tokens(self, sums: Tensor, counts: Tensor) -> Tensor:
        """(U, D) sums of each unit's cells and (U,) cell counts (all ≥ 1) → (U, D) patch tokens."""
        counts = counts.to(sums.dtype)
        return sums / counts[:, None] + counts.log()[:, None] * self.density

    def context(self, tokens: Tensor, token_bag: Tensor, n_bags: int) -> Tensor:
        """(U, D) tokens grouped contiguously by bag, (U,) bag of each → (U, D) context ``W_out c``."""
        per_bag = torch.zeros(n_bags, dtype=torch.int64, device=tokens.device)
        per_bag.index_add_(0, token_bag, torch.ones_like(token_bag))
        layout = SegmentPadding.from_ptr(torch.cat([per_bag.new_zeros(1), per_bag.cumsum(0)]))
        padded = layout.pad(tokens)
        for block in self.blocks:
            padded = block(padded, layout.mask)
        return self.out(self.norm(layout.unpad(padded)))

    def forward(self, h: Tensor, cell_unit: Tensor, unit_bag: Tensor, n_units: int, n_bags: int) -> Tensor:
        """(N, D) cells with their (N,) unit, (U,) bag of each unit → (N, D) cells plus their context."""
        sums = h.new_zeros(n_units, h.shape[1]).index_add_(0, cell_unit, h)
        counts = torch.zeros(n_units, dtype=torch.int64, device=h.device)
        counts.index_add_(0, cell_unit, torch.ones_like(cell_unit))
        filled = torch.nonzero(counts > 0).flatten()
        context = self.context(self.tokens(sums[filled], counts[filled]), unit_bag[filled], n_bags)
        per_unit = h.new_zeros(n_units, h.shape[1])
        per_unit[filled] = context.to(h.dtype)
        return h + per_unit[cell_unit]
