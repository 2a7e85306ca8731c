"""Graph attention encoder over each unit's kNN graph (paper §3.3, eq. 4–5).

One layer::

    h_i' = Dropout(ReLU(LN(P [ ‖_heads Σ_{j ∈ N(i) ∪ {i}} α_ij^h W^h h_j ])))

with α from eq. 5 (``GATConv``: LeakyReLU slope 0.2, self-loops added) and P the linear projection of the
concatenated heads back to ``dim`` ("concatenating their outputs followed by a linear projection").
``GATConv``'s own bias is off: P carries the bias. The edges of a :class:`~bitro.model.batch.CellBatch`
never cross units, so one call on the packed graph equals one call per unit.

With ``residual=True`` (the default) a layer returns ``h_i + h_i'``. Eq. 4 has no skip connection, but
without one the ReLU after LayerNorm zeroes about half of each cell's features at every layer: on the demo
ST cohort (fold 0, cohort-scope features) the paper's form reached a validation PCC gene of 0.38 and
underfitted its training spots, the same model with residual GAT layers 0.71 (see
``BiTroConfig.gat_residual``).

Where the packed batch's units are given (:class:`~bitro.model.padding.SegmentPadding`, as
:meth:`bitro.model.bitro.BiTro.encode` does) and the padded units are small next to the edge list
(:func:`dense_graph`), each layer computes the same attention densely within units instead: scores of
every (target, source) pair of a unit, masked to the kNN edges plus self-loops, a softmax over each row
and one batched matrix product, from ``GATConv``'s own weights. That replaces the gather of every edge's
(heads × dim) message, its multiplication and the scatter back by arithmetic on (heads × units × L × L)
scores: on 16 spots of 4–20 cells it is about 2.5× faster, forward and backward. Both forms give the same
outputs up to float rounding (``tests/test_model.py``).

``torch_geometric`` is imported when the first :class:`GATLayer` is built, not with this module (see
``benchmarks/bench_imports.py``).

LoRA can target ``input_proj`` and each layer's ``proj`` (``nn.Linear``); the per-head
weights W live in PyG's own ``Linear`` inside ``GATConv``, which peft does not adapt, so they stay frozen
under LoRA.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F  # noqa: N812 (the PyTorch convention)
from torch import Tensor, nn

from bitro.model.padding import SegmentPadding

if TYPE_CHECKING:
    from torch_geometric.nn import GATConv

#: The dense form is used while the padded score matrices (units × L²) hold at most this many entries per
#: edge or self-loop of the sparse form: ST spots and Xenium pseudo-spots are far below it, and a batch
#: whose largest unit is much larger than the others keeps the sparse form (its memory stays O(edges)).
DENSE_ENTRIES_PER_EDGE = 16.0


@dataclass(frozen=True)
class DenseGraph:
    """The kNN graphs of a packed batch as padded per-unit score masks (see the module docstring).

    Attributes
    ----------
    layout
        Where each cell sits in the (S, L) padded units.
    bias
        (S, L, L) float: added to the scores of target i and source j of each unit, 0 where j → i is an
        edge or i = j (GATConv's self-loops; padded positions get one too so that no row is empty),
        ``log(multiplicity)`` for an edge listed more than once, −inf elsewhere.
    """

    layout: SegmentPadding
    bias: Tensor


def dense_graph(
    edge_index: Tensor, layout: SegmentPadding, max_ratio: float = DENSE_ENTRIES_PER_EDGE
) -> DenseGraph | None:
    """The :class:`DenseGraph` of ``edge_index`` (source → target, within units), or None where the padded
    score matrices would exceed ``max_ratio`` entries per edge (self-loops included)."""
    units, length = layout.mask.shape
    n_cells = int(layout.row.numel())
    if units * length * length > max_ratio * (edge_index.shape[1] + n_cells):
        return None
    source, target = edge_index
    keep = source != target  # GATConv drops listed self-loops and adds one per cell
    source, target = source[keep], target[keep]
    counts = torch.zeros(units * length * length, device=edge_index.device)
    flat = (layout.row[target] * length + layout.col[target]) * length + layout.col[source]
    counts.index_put_((flat,), torch.ones_like(flat, dtype=counts.dtype), accumulate=True)
    counts = counts.view(units, length, length)
    counts.diagonal(dim1=1, dim2=2).fill_(1.0)
    return DenseGraph(layout=layout, bias=counts.log())


def dense_gat_conv(conv: GATConv, x: Tensor, graph: DenseGraph) -> Tensor:
    """``conv(x, edge_index)`` computed densely within units: (N, in) → (N, heads · out_channels).

    Only the configuration :class:`GATLayer` builds is supported: one shared input linear, no edge
    features, no bias, no residual, no attention dropout.
    """
    heads, width = conv.heads, conv.out_channels
    weight = conv.lin.weight.view(heads, width, -1)  # (H, out, in): head h's W
    # a · (W h) = (aᵀ W) h: both score vectors from one (in → 2H) product on the cells, not from the
    # (N, H, out) messages
    scoring = torch.cat([conv.att_src, conv.att_dst], dim=1).view(2 * heads, 1, width)
    scores = x @ (scoring @ weight.repeat(2, 1, 1)).squeeze(1).T  # (N, 2H): a_src · W h, a_dst · W h
    layout = graph.layout
    units, length = layout.mask.shape
    # Head-major (H, S, L, ·) throughout, so that the batched products need no transposed copies.
    scores = layout.pad(scores).permute(2, 0, 1)  # (2H, S, L)
    source, target = scores[:heads], scores[heads:]
    logits = F.leaky_relu(source[..., None, :] + target[..., :, None], conv.negative_slope) + graph.bias
    alpha = torch.softmax(logits, dim=-1)  # (H, S, L_target, L_source)
    values = conv.lin(x).view(-1, heads, width).transpose(0, 1)  # (H, N, out)
    padded = values.new_zeros((heads, units * length, width)).index_copy(1, layout.index, values)
    out = alpha.view(heads * units, length, length) @ padded.view(heads * units, length, width)
    out = out.view(heads, units * length, width).transpose(0, 1).index_select(0, layout.index)
    return out.reshape(-1, heads * width)


class GATLayer(nn.Module):
    """One multi-head GAT layer with head projection, LayerNorm, ReLU and dropout.

    Parameters
    ----------
    dim
        Input and output width.
    heads
        Attention heads; each head outputs ``dim`` channels.
    dropout
        Dropout after the activation.
    """

    def __init__(self, dim: int, heads: int, dropout: float, residual: bool = True) -> None:
        # Imported here, not with the module: ``torch_geometric`` loads all of itself on import (datasets,
        # loaders, torch._dynamo; about 3 s on top of torch), and most modules that import the model
        # never build a GAT layer.
        from torch_geometric.nn import GATConv

        super().__init__()
        self.residual = residual
        self.conv = GATConv(dim, dim, heads=heads, concat=True, add_self_loops=True, bias=False)
        self.proj = nn.Linear(heads * dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, edge_index: Tensor, graph: DenseGraph | None = None) -> Tensor:
        """(N, dim) cell states → (N, dim); ``edge_index`` (2, E) source → target, no self-loops needed.

        ``graph`` (the same edges as a :class:`DenseGraph`) switches to the dense form.
        """
        messages = self.conv(x, edge_index) if graph is None else dense_gat_conv(self.conv, x, graph)
        update = self.dropout(F.relu(self.norm(self.proj(messages))))
        return x + update if self.residual else update


class GATEncoder(nn.Module):
    """Input projection (only where ``in_dim != dim``) followed by ``layers`` :class:`GATLayer`.

    Parameters
    ----------
    in_dim
        Cell feature width.
    dim
        Model width D.
    layers
        Number of stacked GAT layers L.
    heads
        Attention heads per layer.
    dropout
        Dropout after each layer.
    residual
        Add each layer's input to its output.
    """

    def __init__(
        self, in_dim: int, dim: int, layers: int, heads: int, dropout: float, residual: bool = True
    ) -> None:
        super().__init__()
        self.input_proj: nn.Module = nn.Linear(in_dim, dim) if in_dim != dim else nn.Identity()
        self.layers = nn.ModuleList(GATLayer(dim, heads, dropout, residual) for _ in range(layers))

    def forward(self, x: Tensor, edge_index: Tensor, layout: SegmentPadding | None = None) -> Tensor:
        """(N, in_dim) features → (N, dim) graph-enhanced cell states H^(L).

        ``layout``: the padded units of the packed cells; given, the layers use the dense form where it
        pays (:func:`dense_graph`), built once for all layers.
        """
        h = self.input_proj(x)
        graph = dense_graph(edge_index, layout) if layout is not None and self.layers else None
        for layer in self.layers:
            h = layer(h, edge_index, graph)
        return h
