"""Gene selection (Appendix B, eq. 19–20), gene alignment by name, and the eq. 21 target transform."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from bitro.errors import InputError
from bitro.genes.normalise import TargetTransform, read_transform, write_transform
from bitro.genes.selection import (
    align_genes,
    excluded_genes,
    highly_variable,
    read_gene_list,
    select_genes,
    shared_genes,
)


def _sample(
    rng: np.random.Generator, genes: list[str], *, n: int = 200, hvg: set[str] = frozenset()
) -> ad.AnnData:
    means = np.exp(np.linspace(0, 3, len(genes)))
    x = rng.poisson(means, size=(n, len(genes))).astype(np.float64)
    for j, g in enumerate(genes):
        if g in hvg:  # bimodal: same mean scale, far larger dispersion
            x[:, j] = rng.poisson(means[j] * rng.choice([0.0, 3.0], size=n))
    return ad.AnnData(X=x, var=pd.DataFrame(index=genes))


def test_excluded_genes_are_mitochondrial_ribosomal_and_controls() -> None:
    names = ["MT-ND1", "mt-Co1", "RPL5", "RPS27A", "Rpl13", "MRPL12", "NegControlProbe_1", "BLANK_0003",
             "RPLP0P2x", "GAPDH", "RPE65", "SMTN"]  # fmt: skip
    assert excluded_genes(names).tolist() == [True] * 8 + [False] * 4


def test_highly_variable_recovers_planted_genes() -> None:
    rng = np.random.default_rng(0)
    genes = [f"G{i}" for i in range(300)]
    planted = {f"G{i}" for i in range(0, 300, 30)}
    top = highly_variable(_sample(rng, genes, hvg=planted, n=400), n_top=20)
    assert planted <= set(top[:20])


def test_select_genes_is_top_k_mean_intersect_top_k_std_by_hand() -> None:
    rng = np.random.default_rng(1)
    genes = [f"G{i}" for i in range(120)] + ["MT-CO1", "RPL3"]
    samples = [_sample(rng, genes, hvg={"G1", "G2", "MT-CO1"}) for _ in range(3)]
    # Drop one gene from the last sample: it may not be selected.
    samples[2] = samples[2][:, [g for g in genes if g != "G5"]].copy()
    for k in (10, 30, 60):
        chosen = select_genes(samples, top_k=k, n_hvg=200)
        pool = sorted(set().union(*(highly_variable(s[:, [g for g in genes if g != "G5"]], n_top=200)
                                    for s in samples)) - {"MT-CO1", "RPL3"})  # fmt: skip
        values = np.concatenate(
            [np.log1p(s[:, pool].X / s[:, [g for g in genes if g != "G5"]].X.sum(1, keepdims=True) * 1e4)
             for s in samples]
        )  # fmt: skip
        mean, std = values.mean(0), values.std(0)
        top_mean = {pool[i] for i in np.argsort(-mean, kind="stable")[:k]}
        top_std = {pool[i] for i in np.argsort(-std, kind="stable")[:k]}
        assert chosen == sorted(top_mean & top_std)
        assert "G5" not in chosen and "MT-CO1" not in chosen
    assert len(select_genes(samples, n_genes=25, n_hvg=200)) == 25


def test_select_genes_bulk_stacks_samples() -> None:
    rng = np.random.default_rng(2)
    genes = [f"G{i}" for i in range(80)]
    slides = [_sample(rng, genes, n=1) for _ in range(30)]
    chosen = select_genes(slides, n_genes=10, n_hvg=60, per_sample_hvg=False)
    assert len(chosen) == 10 and set(chosen) <= set(genes)


def test_align_genes_matches_by_name(tmp_path) -> None:
    x = np.arange(12, dtype=float).reshape(3, 4)
    adata = ad.AnnData(X=x, var=pd.DataFrame(index=["A", "B", "C", "D"]))
    shuffled = adata[:, [2, 0, 3, 1]].copy()
    genes = ["D", "A", "C"]
    np.testing.assert_array_equal(
        align_genes(adata, genes, source="a").X, align_genes(shuffled, genes, source="b").X
    )
    np.testing.assert_array_equal(align_genes(shuffled, genes, source="b").X, x[:, [3, 0, 2]])
    with pytest.raises(InputError, match=r"targets\.h5ad.*lacks 1"):
        align_genes(adata, ["A", "Z"], source=tmp_path / "targets.h5ad")
    assert shared_genes(["A", "B", "C"], ["C", "A", "X"]) == ["A", "C"]


def test_gene_list_files(tmp_path) -> None:
    text = tmp_path / "genes.txt"
    text.write_text("# BRCA list\nERBB2\nESR1  # receptor\n\nGATA3\n")
    assert read_gene_list(text) == ["ERBB2", "ESR1", "GATA3"]
    table = tmp_path / "genes.tsv"
    table.write_text("gene\tsource\nERBB2\tx\nERBB2\ty\n")
    with pytest.raises(InputError, match="more than once"):
        read_gene_list(table)


def test_target_transform_round_trip_and_train_statistics(tmp_path) -> None:
    rng = np.random.default_rng(3)
    train = rng.poisson(5.0, size=(50, 6)).astype(float)
    train[:, 5] = 3.0  # constant in training
    test = rng.poisson(9.0, size=(20, 6)).astype(float)
    transform = TargetTransform.fit(train, list("ABCDEF"))
    logged = np.log1p(train)
    np.testing.assert_allclose(transform.mean, logged.mean(0))
    np.testing.assert_allclose(transform.std, logged.std(0))
    z = transform.forward(train)
    np.testing.assert_allclose(z[:, :5].mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(z[:, :5].std(0), 1, atol=1e-5)
    np.testing.assert_allclose(z[:, 5], 0.0, atol=1e-8)
    np.testing.assert_allclose(transform.inverse(transform.forward(test)), test, rtol=1e-10)
    # Statistics never see test data.
    assert np.array_equal(TargetTransform.fit(train, list("ABCDEF")).mean, transform.mean)
    write_transform(transform, tmp_path / "t.json")
    again = read_transform(tmp_path / "t.json")
    np.testing.assert_array_equal(again.forward(test), transform.forward(test))
    plain = TargetTransform.fit(train, list("ABCDEF"), zscore=False)
    np.testing.assert_allclose(plain.forward(test), np.log1p(test))
    np.testing.assert_allclose(plain.inverse(plain.forward(test)), test, rtol=1e-10)
    with pytest.raises(ValueError, match="non-negative"):
        TargetTransform.fit(-train, list("ABCDEF"))
