"""Training losses (paper §3.4, eq. 11–13): gene MSE + λ · phenotype cluster loss.

Gene reduction. Eq. 11 is the mean over bags of the squared L2 norm over genes, i.e. a sum over genes.
The paper calls it MSE and tunes the learning rate (1e-4) and λ (0.1–0.5) without reference to the gene
count, so by default (``genes="mean"``) both terms are divided by G: the loss is ``F.mse_loss`` and the
balance between the two terms does not change with the gene panel. ``genes="sum"`` gives eq. 11–12 as
printed; use it consistently for both terms.

Cluster loss (eq. 12) on pseudo-cell profiles in count space (docs/pitfalls.md)::

    L_cluster = Σ_k 1/|S_k| Σ_{i ∈ S_k} ‖ŷ_i − ȳ_k‖²

over the cells of the batch with a known phenotype (≥ 0), with ȳ_k the mean profile of cluster k in the
batch (kept in the graph, so this is the within-cluster variance). Raw counts of different genes differ
by orders of magnitude and the largest would dominate the sum, so an optional per-gene ``gene_scale``
(e.g. each gene's mean count per bag on the training data) divides each gene's values first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from bitro.model.batch import CellBatch
from bitro.model.bitro import BiTroOutput
from bitro.model.pseudocells import CountTransform, pseudo_cells

GeneReduction = Literal["mean", "sum"]


def _reduce_genes(squared: Tensor, genes: GeneReduction) -> Tensor:
    """(..., G) squared errors → (...) per-row sum, divided by G for ``"mean"``."""
    if genes not in ("mean", "sum"):
        raise ValueError(f"genes must be 'mean' or 'sum', got {genes!r}")
    total = squared.sum(dim=-1)
    return total / squared.shape[-1] if genes == "mean" else total


def gene_loss(prediction: Tensor, target: Tensor, genes: GeneReduction = "mean") -> Tensor:
    """Eq. 11: mean over bags of ‖ŷ_m − y_m‖² (divided by G for ``genes="mean"``).

    Parameters
    ----------
    prediction, target
        (B, G) in the same (z-scored) space.
    genes
        ``"mean"`` (default, = ``F.mse_loss``) or ``"sum"`` (eq. 11 as printed).
    """
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} differ")
    return _reduce_genes((prediction - target) ** 2, genes).mean()


def cluster_loss(
    cells: Tensor,
    phenotype: Tensor,
    gene_scale: Tensor | None = None,
    genes: GeneReduction = "mean",
) -> Tensor:
    """Eq. 12: Σ over phenotypes k of the mean squared distance of its cells' profiles to their centroid.

    Parameters
    ----------
    cells
        (N, G) pseudo-cell profiles in count space.
    phenotype
        (N,) phenotype id; cells with a negative id are left out.
    gene_scale
        Optional (G,) positive per-gene divisor applied to ``cells`` first.
    genes
        ``"mean"`` divides the squared norms by G (default), ``"sum"`` keeps eq. 12 as printed.

    Returns
    -------
    Tensor
        Scalar; 0 (still in the graph) when no cell has a known phenotype.
    """
    if gene_scale is not None:
        cells = cells / gene_scale.to(cells.device)
    known = phenotype >= 0
    if not bool(known.any()):
        return cells.sum() * 0.0
    x, k = cells[known], phenotype[known]
    n_clusters = int(k.max()) + 1
    size = torch.zeros(n_clusters, dtype=x.dtype, device=x.device).index_add_(
        0, k, torch.ones_like(k, dtype=x.dtype)
    )
    centroid = x.new_zeros(n_clusters, x.shape[1]).index_add_(0, k, x) / size.clamp(min=1)[:, None]
    squared = _reduce_genes((x - centroid[k]) ** 2, genes)
    per_cluster = x.new_zeros(n_clusters).index_add_(0, k, squared) / size.clamp(min=1)
    return per_cluster.sum()


@dataclass(frozen=True)
class LossTerms:
    """Eq. 13 and its parts: ``total = gene + lam · cluster``."""

    total: Tensor
    gene: Tensor
    cluster: Tensor


def bitro_loss(
    output: BiTroOutput,
    target: Tensor,
    batch: CellBatch,
    *,
    to_counts: CountTransform | None = None,
    lam: float = 0.0,
    gene_scale: Tensor | None = None,
    genes: GeneReduction = "mean",
) -> LossTerms:
    """Total loss of one batch (eq. 13).

    Parameters
    ----------
    output
        The model's output for ``batch``.
    target
        (B, G) targets in the model's target space (z-scored log1p by default).
    batch
        The batch (for each cell's bag and phenotype).
    to_counts
        Maps predictions to count space for the pseudo-cells (e.g. :class:`~bitro.model.pseudocells.
        Denormalise`); required when ``lam > 0``.
    lam
        λ, the cluster-loss weight; 0 switches the cluster loss off (the ablation) and skips computing it.
    gene_scale
        Optional (G,) per-gene divisor of the count-space pseudo-cells (see :func:`cluster_loss`).
    genes
        Gene reduction of both terms (see the module docstring).
    """
    gene = gene_loss(output.prediction, target, genes)
    if lam == 0.0:
        zero = gene.new_zeros(())
        return LossTerms(total=gene, gene=gene, cluster=zero)
    if lam < 0:
        raise ValueError(f"lam must be non-negative, got {lam}")
    if to_counts is None:
        raise ValueError("the cluster loss needs to_counts: pseudo-cells live in count space")
    cells = pseudo_cells(output.attention, to_counts(output.prediction), batch.cell_bag)
    cluster = cluster_loss(cells, batch.phenotype, gene_scale, genes)
    return LossTerms(total=gene + lam * cluster, gene=gene, cluster=cluster)
