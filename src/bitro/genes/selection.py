"""Which genes a cohort predicts: highly variable and highly expressed (paper Appendix B), or a list.

The paper's two stages:

1. per sample, highly variable genes by normalised dispersion in mean-expression bins (eq. 19) — scanpy's
   ``highly_variable_genes(flavor="seurat")`` on library-size normalised, log1p counts;
2. the union of the samples' top HVGs, without mitochondrial and ribosomal genes, is the candidate pool;
   over the whole cohort each candidate's mean and standard deviation of log1p expression are computed and
   the final set is ``TopK(mean) ∩ TopK(std)`` (eq. 20).

The paper leaves K open. Users ask for a number of genes, so :func:`select_genes` takes ``n_genes`` and
uses the smallest K whose intersection holds at least that many, keeping the ``n_genes`` genes with the
best worse-of-both ranks (or takes ``top_k`` as given). Bulk cohorts have one profile per slide, so
stage 1 runs once over all slides of the cohort instead of per sample. Genes are always handled by name
(docs/pitfalls.md#genes-and-units-matched-by-name); only genes measured in every sample are candidates.

Selection uses every sample's expression, as the paper does (eq. 20 "across the entire cohort"), which
lets test samples influence *which* genes are scored but never a fitted value. Users who want none of it
give a gene list (the paper used published lists for BRCA and CSCC).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
from scipy import sparse

from bitro._atomic import atomic_path
from bitro.errors import InputError
from bitro.io.validate import require_file

#: Mitochondrial genes (MT-ND1, mt-Co1) and ribosomal proteins (RPL5, RPS27A, Rpl13, MRPL…, MRPS…).
EXCLUDED = re.compile(r"^(MT-|mt-|RP[LS]\d|Rp[ls]\d|MRP[LS]\d|Mrp[ls]\d)")
#: Xenium control probes and unassigned codewords are not genes.
CONTROLS = re.compile(r"^(NegControl|BLANK|Unassigned|DeprecatedCodeword|antisense_|NegPrb)", re.IGNORECASE)


def excluded_genes(names: Sequence[str]) -> np.ndarray:
    """Boolean mask of mitochondrial, ribosomal and control-probe names."""
    return np.array([bool(EXCLUDED.match(n) or CONTROLS.match(n)) for n in names], dtype=bool)


def _log1p_normalised(x: np.ndarray | sparse.spmatrix, *, target_sum: float = 1e4) -> np.ndarray:
    x = np.asarray(x.toarray() if sparse.issparse(x) else x, dtype=np.float64)
    totals = x.sum(axis=1, keepdims=True)
    scale = np.divide(target_sum, totals, out=np.zeros_like(totals), where=totals > 0)
    return np.log1p(x * scale)


def highly_variable(adata: ad.AnnData, *, n_top: int = 1000, n_bins: int = 20) -> list[str]:
    """The ``n_top`` genes of ``adata`` (raw counts or TPM) by normalised dispersion, best first (eq. 19).

    Runs scanpy's Seurat flavour on library-size normalised log1p values; genes never expressed are
    skipped.
    """
    import scanpy as sc

    expressed = np.asarray((adata.X != 0).sum(axis=0)).ravel() > 0
    view = ad.AnnData(
        X=_log1p_normalised(adata.X[:, expressed]),
        var=pd.DataFrame(index=adata.var_names[expressed].astype(str)),
    )
    if view.n_vars == 0:
        return []
    table = sc.pp.highly_variable_genes(
        view, flavor="seurat", n_top_genes=min(n_top, view.n_vars), n_bins=n_bins, inplace=False
    )
    table.index = view.var_names
    table = table[table["highly_variable"]]
    return table.sort_values("dispersions_norm", ascending=False, kind="stable").index.tolist()


def select_genes(
    samples: Sequence[ad.AnnData],
    *,
    n_genes: int = 250,
    n_hvg: int = 1000,
    top_k: int | None = None,
    per_sample_hvg: bool = True,
) -> list[str]:
    """The cohort's genes by the paper's two stages (module docstring), ordered by name.

    Parameters
    ----------
    samples
        One AnnData per sample (units × genes, raw counts or TPM).
    n_genes
        How many genes to keep when ``top_k`` is not given.
    n_hvg
        Top HVGs per sample that enter the candidate pool.
    top_k
        K of eq. 20 as given; the result then has however many genes the intersection holds.
    per_sample_hvg
        Stage 1 per sample (ST, Xenium) or once over all samples stacked (bulk: one profile per slide).
    """
    if not samples:
        raise ValueError("no samples to select genes from")
    shared = pd.Index(samples[0].var_names.astype(str))
    for adata in samples[1:]:
        shared = shared.intersection(pd.Index(adata.var_names.astype(str)), sort=False)
    aligned = [adata[:, shared] for adata in samples]
    if per_sample_hvg:
        ranked = [highly_variable(adata, n_top=n_hvg) for adata in aligned]
    else:
        ranked = [highly_variable(ad.concat(aligned, join="inner", index_unique="-"), n_top=n_hvg)]
    pool = sorted(set().union(*ranked))
    pool = [g for g, drop in zip(pool, excluded_genes(pool), strict=True) if not drop]
    if not pool:
        raise ValueError("no candidate genes left after removing mitochondrial, ribosomal and control genes")
    values = np.concatenate([_log1p_normalised(adata[:, pool].X) for adata in aligned], axis=0)
    mean_rank = _rank(values.mean(axis=0))
    std_rank = _rank(values.std(axis=0))
    worst = np.maximum(mean_rank, std_rank)
    if top_k is not None:
        keep = np.flatnonzero(worst < top_k)
    else:
        # |TopK(mean) ∩ TopK(std)| ≥ n ⇔ at least n genes have worse-of-both rank < K: take the n best.
        keep = np.argsort(worst, kind="stable")[: min(n_genes, len(pool))]
    return sorted(pool[i] for i in keep)


def _rank(values: np.ndarray) -> np.ndarray:
    """0 for the largest value; ties broken by position."""
    order = np.argsort(-values, kind="stable")
    rank = np.empty(len(values), dtype=np.int64)
    rank[order] = np.arange(len(values))
    return rank


def read_gene_list(path: str | Path) -> list[str]:
    """Genes from a text file (one per line, ``#`` comments) or the first column of a TSV/CSV with header."""
    path = require_file(path, "gene list")
    if path.suffix.lower() in {".tsv", ".csv"}:
        table = pd.read_csv(path, sep="\t" if path.suffix.lower() == ".tsv" else ",")
        genes = table.iloc[:, 0].astype(str).str.strip().tolist()
    else:
        lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
        genes = [line for line in lines if line]
    if not genes:
        raise InputError(path, "lists no genes")
    seen: set[str] = set()
    duplicated = sorted({g for g in genes if g in seen or seen.add(g)})
    if duplicated:
        raise InputError(path, f"lists genes more than once: {duplicated[:5]}")
    return genes


def write_gene_list(genes: Sequence[str], path: str | Path) -> None:
    """Write ``genes.txt``, one name per line."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text("".join(f"{g}\n" for g in genes))


def align_genes(adata: ad.AnnData, genes: Sequence[str], *, source: str | Path) -> ad.AnnData:
    """``adata`` with its columns in the order of ``genes``, matched by name.

    Raises :class:`InputError` naming ``source`` when a gene is missing or a name is duplicated.
    """
    names = pd.Index(adata.var_names.astype(str))
    if names.has_duplicates:
        raise InputError(source, f"has duplicated gene names: {names[names.duplicated()][:5].tolist()}")
    position = names.get_indexer(list(genes))
    if (position < 0).any():
        missing = [g for g, p in zip(genes, position, strict=True) if p < 0]
        raise InputError(source, f"lacks {len(missing)} of the cohort's genes: {missing[:5]}")
    return adata[:, position].copy()


def shared_genes(*gene_sets: Sequence[str]) -> list[str]:
    """Genes present in every set, by name, sorted (the genes two cohorts meet on in a transfer)."""
    if not gene_sets:
        return []
    common = set(gene_sets[0]).intersection(*map(set, gene_sets[1:]))
    return sorted(common)
