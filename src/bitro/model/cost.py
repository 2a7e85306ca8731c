"""Model size and analytic compute per cell, for benchmarks.

FLOPs count a multiply-add as 2 and cover matrix products only (LayerNorm, softmax, activations and
embedding look-ups are a few FLOPs per value and left out). Costs that scale with the unit size (attention)
or are paid once per bag (readout) are expressed per cell for the given sizes.
"""

from __future__ import annotations

from torch import nn

from bitro.model.bitro import BiTroConfig


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter values (optionally only those with ``requires_grad``)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def flops_per_cell(
    config: BiTroConfig, cells_per_unit: float = 64.0, cells_per_bag: float = 64.0, k: int = 8
) -> dict[str, float]:
    """Forward FLOPs per cell, by stage.

    Parameters
    ----------
    config
        Model hyper-parameters.
    cells_per_unit
        Typical cells in a unit (sets the attention cost).
    cells_per_bag
        Cells in a bag (spreads the per-bag readout over its cells).
    k
        kNN in-degree of the graph (GATConv adds one self-loop).

    Returns
    -------
    dict[str, float]
        ``gat``, ``transformer``, ``mil``, ``readout`` and ``total``.
    """
    c = config
    d, g = c.dim, c.n_genes
    gat = 2.0 * c.in_dim * d if c.in_dim != d else 0.0
    per_layer = 2.0 * d * c.gat_heads * d  # W for every head
    per_layer += 2.0 * (k + 1) * c.gat_heads * d  # Σ_j α_ij W h_j
    per_layer += 2.0 * 2 * c.gat_heads * d  # a_src, a_dst scores
    per_layer += 2.0 * c.gat_heads * d * d  # head projection
    gat += c.gat_layers * per_layer
    transformer = 2.0 * (d + 2 * c.position_dim) * d
    block = 4 * 2.0 * d * d  # q, k, v, out
    block += 2 * 2.0 * cells_per_unit * d  # QKᵀ and A·V
    block += 2 * 2.0 * d * c.ff_mult * d  # ff1, ff2
    transformer += c.transformer_layers * block
    mil = 2 * 2.0 * g * d  # scores and A·H
    readout = g * (2.0 * d * d + 2.0 * d) / cells_per_bag
    return {
        "gat": gat,
        "transformer": transformer,
        "mil": mil,
        "readout": readout,
        "total": gat + transformer + mil + readout,
    }
