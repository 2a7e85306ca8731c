"""Gene-query attention MIL (paper §3.4, eq. 7–9).

For each bag with cell features H (n × D) and learned gene queries Q (G × D)::

    A = softmax_over_the_bag's_cells(Q Hᵀ / √D)      (G × n, eq. 7; each row sums to 1)
    Z = A H                                          (G × D, eq. 8)
    ŷ_g = out(w₂ᵀ ReLU(W₁ LN(z_g) + b₁) + b₂)         (eq. 9, one readout shared by all genes)

The softmax runs over all cells of a bag, across all of its units (a bulk slide is one bag), as a segment
softmax over the packed cells. Attention is stored cell-major, ``attention[i, g] = A[g, i]``, matching the
packed cell order.

``out`` is the identity for z-scored targets, which can be negative, and Softplus only for non-negative
targets (counts, TPM): the paper prints Softplus while training on z-scores, which cannot fit the
negative half of the targets (docs/pitfalls.md#softplus-only-on-non-negative-targets).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F  # noqa: N812 (the PyTorch convention)
from torch import Tensor, nn

OutputActivation = Literal["identity", "softplus"]
#: ``gene_query``: the paper's attention MIL; ``mean``: the ablation that replaces it by the mean of the
#: bag's cells (uniform attention, so pseudo-cells still split the bag), read out per gene.
Pooling = Literal["gene_query", "mean"]
#: ``shared``: eq. 9, one readout for every gene, so a gene's identity reaches its prediction only
#: through its attention weights; ``per_gene`` (:class:`bitro.model.bitro.BiTroConfig`'s default): the
#: same hidden layer, then each gene its own output weights and bias (docs/methods.md says why).
ReadoutKind = Literal["shared", "per_gene"]


def segment_softmax(logits: Tensor, segment: Tensor, n_segments: int) -> Tensor:
    """Softmax of each column over the rows of each segment.

    Parameters
    ----------
    logits
        (N, G) scores.
    segment
        (N,) int64 segment (bag) of each row; every segment in ``range(n_segments)`` holding rows.
    n_segments
        Number of segments.

    Returns
    -------
    Tensor
        (N, G) float32: for every segment s and column g, the rows of s sum to 1.
    """
    # In float32 whatever the autocast dtype: bf16 sums over thousands of cells lose the normalisation,
    # and CUDA autocast would otherwise mix a bf16 accumulator with float32 exponentials.
    logits = logits.float()
    index = segment[:, None].expand_as(logits)
    shape = (n_segments, logits.shape[1])
    top = logits.new_full(shape, -torch.inf).scatter_reduce(0, index, logits, "amax", include_self=True)
    e = torch.exp(logits - top.detach()[segment])
    total = logits.new_zeros(shape).index_add_(0, segment, e)
    return e / total[segment]


class Readout(nn.Module):
    """Readout LN → Linear(D, D) → ReLU → output layer → identity | Softplus (eq. 9).

    The output layer is Linear(D, 1) shared by every gene (eq. 9) or, with ``n_genes``, each gene's own
    weights w_g and bias b_g (``per_gene``, :data:`ReadoutKind`).

    Parameters
    ----------
    dim
        Width D of the gene representations.
    output
        ``"identity"`` for z-scored targets, ``"softplus"`` for non-negative targets.
    n_genes
        Give each of this many genes its own output weights (None: eq. 9's shared layer).
    """

    def __init__(self, dim: int, output: OutputActivation, n_genes: int | None = None) -> None:
        super().__init__()
        if output not in ("identity", "softplus"):
            raise ValueError(f"output must be 'identity' or 'softplus', got {output!r}")
        self.output = output
        self.norm = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, dim)
        self.fc2 = nn.Linear(dim, 1) if n_genes is None else None
        per_gene = n_genes is not None
        self.gene_weights = nn.Parameter(torch.randn(n_genes, dim) / math.sqrt(dim)) if per_gene else None
        self.gene_bias = nn.Parameter(torch.zeros(n_genes)) if per_gene else None

    def forward(self, z: Tensor) -> Tensor:
        """(..., G, D) gene representations → (..., G) predictions."""
        hidden = F.relu(self.fc1(self.norm(z)))
        if self.fc2 is not None:
            y = self.fc2(hidden).squeeze(-1)
        else:
            y = (hidden * self.gene_weights).sum(-1) + self.gene_bias
        return F.softplus(y) if self.output == "softplus" else y


class GeneQueryMIL(nn.Module):
    """Learned gene queries, bag-wise attention, pooling and the shared readout.

    Parameters
    ----------
    n_genes
        G.
    dim
        D.
    output
        Readout output activation (see :class:`Readout`).
    pooling
        ``gene_query`` (eq. 7–9) or the ``mean`` ablation (:data:`Pooling`).
    readout
        ``shared`` (eq. 9) or ``per_gene`` output weights (:data:`ReadoutKind`).
    pooled_norm
        Standardise the pooled representations (and the log density) by running statistics over the
        training bags before the readout (:meth:`standardise`).
    density_input
        Add ``log(cells per unit)`` of the bag, times a learned vector, to every pooled representation:
        softmax pooling is a weighted *average*, blind to how many cells a spot holds, while measured
        counts scale with it.
    """

    def __init__(
        self,
        n_genes: int,
        dim: int,
        output: OutputActivation,
        pooling: Pooling = "gene_query",
        readout: ReadoutKind = "shared",
        density_input: bool = False,
        pooled_norm: bool = False,
    ) -> None:
        super().__init__()
        if n_genes < 1:
            raise ValueError(f"n_genes must be at least 1, got {n_genes}")
        if pooling not in ("gene_query", "mean"):
            raise ValueError(f"pooling must be 'gene_query' or 'mean', got {pooling!r}")
        if readout not in ("shared", "per_gene"):
            raise ValueError(f"readout must be 'shared' or 'per_gene', got {readout!r}")
        self.pooling = pooling
        if pooling == "mean" and readout == "shared":
            raise ValueError(
                "mean pooling needs the per_gene readout: a shared one predicts every gene alike"
            )
        self.queries = nn.Parameter(torch.randn(n_genes, dim) / math.sqrt(dim))
        self.readout = Readout(dim, output, n_genes if readout == "per_gene" else None)
        self.density = nn.Parameter(torch.zeros(dim)) if density_input else None
        self.pooled_norm = pooled_norm
        if pooled_norm:  # running first and second moments per dimension; the last entry: log density
            self.register_buffer("running_mean", torch.zeros(dim + 1))
            self.register_buffer("running_square", torch.ones(dim + 1))

    #: Weight of each training batch in the running moments of :meth:`standardise`.
    MOMENTUM = 0.05

    def standardise(self, z: Tensor, log_density: Tensor) -> tuple[Tensor, Tensor]:
        """``pooled_norm``: (..., G, D) pooled representations and (...,) log densities minus their running
        mean over training bags, divided by the running standard deviation (per dimension).

        A bulk slide pools thousands of cells, so its mean cell differs from another slide's by a small
        fraction of their common part; the readout's LayerNorm works within one vector and leaves that
        common part in. Without this step every bulk model of the accuracy benchmark switched its
        readout off and predicted the training mean (docs/accuracy.md). The moments are updated in
        training mode only (exponential average, :attr:`MOMENTUM`) and used in both modes, so a batch
        of one slide is standardised by the cohort's spread, not by its own.
        """
        if z.shape[:-2] != log_density.shape:
            raise ValueError(
                f"log_density must have shape {tuple(z.shape[:-2])}, got {tuple(log_density.shape)}"
            )
        if self.training:
            with torch.no_grad():
                genes = z.shape[-2]
                values = torch.cat(
                    [
                        z.detach().reshape(-1, z.shape[-1]).float(),
                        log_density.detach()
                        .float()[..., None]
                        .expand(*log_density.shape, genes)
                        .reshape(-1, 1),
                    ],
                    dim=1,
                )
                self.running_mean.lerp_(values.mean(0), self.MOMENTUM)
                self.running_square.lerp_(values.pow(2).mean(0), self.MOMENTUM)
        scale = (self.running_square - self.running_mean.pow(2)).clamp_min(1e-6).rsqrt()
        z = (z - self.running_mean[:-1].to(z.dtype)) * scale[:-1].to(z.dtype)
        log_density = (log_density - self.running_mean[-1].to(z.dtype)) * scale[-1].to(z.dtype)
        return z, log_density

    def logits(self, h: Tensor) -> Tensor:
        """(N, D) cell features → (N, G) scores Q·h_i / √D (eq. 7 before the softmax); zeros for mean."""
        if self.pooling == "mean":
            return h.new_zeros(h.shape[0], self.queries.shape[0])
        return h @ self.queries.t() / math.sqrt(self.queries.shape[1])

    def read(self, z: Tensor, density: Tensor | None = None) -> Tensor:
        """(..., G, D) pooled gene representations → (..., G) predictions (eq. 9 or per-gene weights).

        ``density`` (...,) is the bag's cells per unit, used when the model has ``density_input``.
        """
        if self.density is not None and density is None:
            raise ValueError("this model reads the bag's cells per unit: pass density")
        log_density = density.to(z.dtype).log() if density is not None else z.new_zeros(z.shape[:-2])
        if self.pooled_norm:
            z, log_density = self.standardise(z, log_density)
        if self.density is not None:
            z = z + log_density[..., None, None] * self.density
        return self.readout(z)

    def forward(
        self, h: Tensor, cell_bag: Tensor, bag_sizes: list[int], density: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Attention-pool each bag's cells and read out every gene.

        Parameters
        ----------
        h
            (N, D) packed cell features H_cell, grouped contiguously by bag.
        cell_bag
            (N,) bag of each cell.
        bag_sizes
            Cells per bag (each at least 1), summing to N.
        density
            (B,) cells per unit of each bag (see ``density_input``).

        Returns
        -------
        tuple[Tensor, Tensor]
            (B, G) predictions and (N, G) attention (``attention[i, g] = A[g, i]``).
        """
        attention = segment_softmax(self.logits(h), cell_bag, len(bag_sizes))
        z = bag_pool(attention, h, bag_sizes)
        return self.read(z, density), attention


def bag_pool(attention: Tensor, h: Tensor, bag_sizes: list[int]) -> Tensor:
    """Z_b = A_b H_b for every bag (eq. 8): (N, G), (N, D) → (B, G, D).

    One matrix product per bag, so a bag's Z does not depend on the other bags of the batch and the
    memory stays O(N·(G + D)) instead of O(N·G·D).
    """
    pairs = zip(attention.split(bag_sizes), h.split(bag_sizes), strict=True)
    return torch.stack([a.t() @ x for a, x in pairs])
