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

``torch_geometric`` is imported when the first :class:`GATLayer` is built, not with this module (see
``benchmarks/bench_imports.py``).

LoRA can target ``input_proj`` and each layer's ``proj`` (``nn.Linear``); the per-head
weights W live in PyG's own ``Linear`` inside ``GATConv``, which peft does not adapt, so they stay frozen
under LoRA.
"""

from __future__ import annotations

import torch.nn.functional as F  # noqa: N812 (the PyTorch convention)
from torch import Tensor, nn


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

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        """(N, dim) cell states → (N, dim); ``edge_index`` (2, E) source → target, no self-loops needed."""
        update = self.dropout(F.relu(self.norm(self.proj(self.conv(x, edge_index)))))
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

    def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
        """(N, in_dim) features → (N, dim) graph-enhanced cell states H^(L)."""
        h = self.input_proj(x)
        for layer in self.layers:
            h = layer(h, edge_index)
        return h
