"""The assembled BiTro model and its configuration (paper Fig. 2).

features ─► GAT (eq. 4–5, kNN edges within units) ─► ⊕ x/y position tables ─► Transformer within units
(eq. 6) ─► [optional slide context over the bag's patch tokens, :mod:`bitro.model.context`] ─► gene-query
attention over each bag's cells (eq. 7–8) ─► shared readout (eq. 9).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, get_args

import torch
from torch import Tensor, nn

from bitro.model.batch import CellBatch
from bitro.model.context import PatchContext, SlideContext
from bitro.model.gat import GATEncoder
from bitro.model.mil import GeneQueryMIL, OutputActivation, Pooling, ReadoutKind
from bitro.model.transformer import CellTransformer


@dataclass(frozen=True)
class BiTroConfig:
    """Hyper-parameters of :class:`BiTro`; defaults follow the paper.

    Attributes
    ----------
    n_genes
        Number of predicted genes G.
    in_dim
        Cell feature width (128 PCA components).
    dim
        Model width D.
    gat_layers, gat_heads
        GAT depth L and heads (2, 4).
    gat_residual
        Skip connection around each GAT layer (not in eq. 4; see :mod:`bitro.model.gat` for why).
    transformer_layers, transformer_heads, ff_mult
        Encoder depth, heads and feed-forward multiplier.
    dropout
        Dropout everywhere (the paper searched {0, 0.1, 0.2}).
    position_bin_um, position_range_um, position_dim
        Position tables: bin width and clipping range of cell offsets from the unit centre (µm), and the
        width of each of the x and y tables.
    output
        ``"identity"`` for z-scored log1p targets (the default); ``"softplus"`` only when the
        targets are non-negative.
    pooling
        ``"gene_query"`` (the paper's MIL) or ``"mean"`` (the ablation; :data:`bitro.model.mil.Pooling`).
    readout
        ``"per_gene"`` output weights (the default) or ``"shared"``, eq. 9 exactly
        (:data:`bitro.model.mil.ReadoutKind`). The accuracy benchmark measured the shared readout well
        behind (docs/methods.md).
    density_input
        The readout also sees the bag's log cells per unit (:class:`bitro.model.mil.GeneQueryMIL`); on by
        default, off in eq. 9.
    pooled_norm
        Standardise each bag's pooled representations and log density by running statistics over
        the training bags before the readout (:meth:`bitro.model.mil.GeneQueryMIL.standardise`); on by
        default since the accuracy benchmark's ST and transfer round (docs/accuracy.md: without it bulk
        models predict the training mean, and ST loses 0.05 PCC gene), off in the paper.
    slide_context
        ``"none"`` (the default: cells see only their own unit) or ``"patch_tokens"``: a Transformer
        over the bag's patch tokens whose output is added to every cell of the patch before the MIL, the
        paper's slide-level context for bulk in a form that scales (:mod:`bitro.model.context`).
    context_layers
        Depth of the patch-token Transformer (with ``patch_tokens``).
    """

    n_genes: int
    in_dim: int = 128
    dim: int = 128
    gat_layers: int = 2
    gat_heads: int = 4
    gat_residual: bool = True
    transformer_layers: int = 2
    transformer_heads: int = 4
    ff_mult: int = 4
    dropout: float = 0.1
    position_bin_um: float = 2.0
    position_range_um: float = 64.0
    position_dim: int = 16
    output: OutputActivation = "identity"
    pooling: Pooling = "gene_query"
    readout: ReadoutKind = "per_gene"
    density_input: bool = True
    pooled_norm: bool = True
    slide_context: SlideContext = "none"
    context_layers: int = 1

    def __post_init__(self) -> None:
        if self.output not in ("identity", "softplus"):
            raise ValueError(f"output must be 'identity' or 'softplus', got {self.output!r}")
        if self.slide_context not in get_args(SlideContext):
            choices = get_args(SlideContext)
            raise ValueError(f"slide_context must be one of {choices}, got {self.slide_context!r}")
        if self.context_layers < 1:
            raise ValueError(f"context_layers must be at least 1, got {self.context_layers}")
        for name in ("n_genes", "in_dim", "dim", "gat_heads", "transformer_heads", "ff_mult", "position_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.gat_layers < 0 or self.transformer_layers < 0:
            raise ValueError("layer counts must be non-negative")
        if self.dim % self.transformer_heads:
            raise ValueError(f"dim {self.dim} is not divisible by {self.transformer_heads} transformer heads")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for checkpoints and JSON)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BiTroConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown BiTroConfig keys: {unknown}")
        # A model saved before these options existed has eq. 9's readout, no density input and no
        # standardised pooling (each was off by default when it came in).
        data = {"readout": "shared", "density_input": False, "pooled_norm": False, **data}
        return cls(**data)


@dataclass(frozen=True)
class BiTroOutput:
    """What :meth:`BiTro.forward` returns.

    Attributes
    ----------
    prediction
        (B, G) per-bag predictions in target space (z-scored log1p by default).
    attention
        (N, G) cell-major MIL attention, ``attention[i, g] = A[g, i]``; sums to 1 over each bag's cells.
    cells
        (N, D) final cell features H_cell.
    """

    prediction: Tensor
    attention: Tensor
    cells: Tensor


class BiTro(nn.Module):
    """GAT → Transformer → gene-query MIL → readout.

    Parameters
    ----------
    config
        Hyper-parameters.
    """

    def __init__(self, config: BiTroConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.gat = GATEncoder(c.in_dim, c.dim, c.gat_layers, c.gat_heads, c.dropout, c.gat_residual)
        self.transformer = CellTransformer(
            c.dim,
            c.transformer_layers,
            c.transformer_heads,
            c.ff_mult,
            c.dropout,
            c.position_bin_um,
            c.position_range_um,
            c.position_dim,
        )
        self.mil = GeneQueryMIL(
            c.n_genes, c.dim, c.output, c.pooling, c.readout, c.density_input, c.pooled_norm
        )
        # Built last, so every other block draws the same initial weights with and without it.
        self.context = (
            PatchContext(c.dim, c.context_layers, c.transformer_heads, c.ff_mult, c.dropout)
            if c.slide_context == "patch_tokens"
            else None
        )

    def encode(self, batch: CellBatch) -> Tensor:
        """(N, D) cell features H_cell; each cell depends only on the cells of its own unit."""
        if batch.features.shape[1] != self.config.in_dim:
            raise ValueError(
                f"features have width {batch.features.shape[1]}, the model expects {self.config.in_dim}"
            )
        layout = batch.unit_padding
        h = self.gat(batch.features, batch.edge_index, layout)
        return self.transformer(h, batch.offsets_um, batch.unit_ptr, layout)

    def contextualise(self, cells: Tensor, batch: CellBatch) -> Tensor:
        """``cells`` plus each unit's slide-level context (unchanged when ``slide_context`` is none)."""
        if self.context is None:
            return cells
        return self.context(cells, batch.cell_unit, batch.unit_bag, batch.n_units, batch.n_bags)

    def forward(self, batch: CellBatch) -> BiTroOutput:
        """Predict every bag of ``batch``.

        Raises
        ------
        ValueError
            A bag without cells, or features of the wrong width.
        """
        bag_sizes = batch.bag_sizes.tolist()
        empty = [b for b, n in enumerate(bag_sizes) if n == 0]
        if empty:
            raise ValueError(f"bag(s) {empty} have no cells; a bag needs at least one cell")
        cells = self.contextualise(self.encode(batch), batch)
        # Cells per unit that holds cells (chunks of a streamed slide may drop empty units).
        filled = torch.zeros(batch.n_bags, dtype=cells.dtype, device=cells.device)
        filled.index_add_(0, batch.unit_bag, (batch.unit_sizes > 0).to(cells.dtype))
        density = batch.bag_sizes.to(cells.dtype) / filled
        prediction, attention = self.mil(cells, batch.cell_bag, bag_sizes, density)
        return BiTroOutput(prediction=prediction, attention=attention, cells=cells)
