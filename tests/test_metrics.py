"""Metrics against independent implementations (scipy, by-hand loops)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import pearsonr, spearmanr

from bitro import metrics
from bitro.metrics import (
    MetricSet,
    evaluate,
    js_divergence,
    pcc_gene,
    pcc_overall,
    rmse,
    rmse_gene,
    spearman_gene,
    summarise_folds,
)


def _scipy_corr(func, x: np.ndarray, y: np.ndarray) -> float:
    """scipy's correlation, NaN for constant input (scipy warns and returns NaN)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(func(x, y)[0])


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray]:
    """40 units × 25 genes with constant genes and constant units planted in truth and prediction."""
    rng = np.random.default_rng(7)
    truth = rng.gamma(2.0, 1.0, size=(40, 25))
    pred = truth + rng.normal(0, 0.8, size=truth.shape)
    truth[:, 13] = np.round(truth[:, 13])  # ties for Spearman
    # Constant genes and units share the value of their crossing entries, so both stay constant.
    truth[:, 3] = 1.0  # constant gene in truth
    pred[:, 7] = 4.0  # constant gene in prediction
    truth[:, 11] = 1.0
    pred[:, 11] = 4.0  # constant in both
    truth[5, :] = 1.0  # constant unit in truth
    pred[9, :] = 4.0  # constant unit in prediction
    return truth, pred


def test_pcc_gene_matches_scipy_and_counts_constant_genes(data):
    truth, pred = data
    got = pcc_gene(truth, pred)
    want = np.array([_scipy_corr(pearsonr, truth[:, g], pred[:, g]) for g in range(truth.shape[1])])
    np.testing.assert_allclose(got.values, want, rtol=1e-10, atol=1e-12, equal_nan=True)
    assert set(np.flatnonzero(got.undefined)) == {3, 7, 11}
    assert got.n_undefined == 3 and got.n_defined == 22
    assert got.mean == pytest.approx(np.nanmean(want))


def test_pcc_overall_matches_scipy_and_counts_constant_units(data):
    truth, pred = data
    got = pcc_overall(truth, pred)
    want = np.array([_scipy_corr(pearsonr, truth[u], pred[u]) for u in range(truth.shape[0])])
    np.testing.assert_allclose(got.values, want, rtol=1e-10, atol=1e-12, equal_nan=True)
    assert set(np.flatnonzero(got.undefined)) == {5, 9}
    assert got.mean == pytest.approx(np.nanmean(want))


def test_spearman_gene_matches_scipy_with_ties(data):
    truth, pred = data
    got = spearman_gene(truth, pred)
    want = np.array([_scipy_corr(spearmanr, truth[:, g], pred[:, g]) for g in range(truth.shape[1])])
    np.testing.assert_allclose(got.values, want, rtol=1e-10, atol=1e-12, equal_nan=True)
    assert set(np.flatnonzero(got.undefined)) == {3, 7, 11}


def test_nan_entries_are_dropped_pairwise(data):
    truth, pred = data
    pred = pred.copy()
    truth = truth.copy()
    pred[2, :] = np.nan  # a unit without a prediction (no cells)
    truth[17, 4] = np.nan
    got = pcc_gene(truth, pred)
    for g in (0, 4, 13):
        keep = ~(np.isnan(truth[:, g]) | np.isnan(pred[:, g]))
        assert got.values[g] == pytest.approx(pearsonr(truth[keep, g], pred[keep, g])[0], rel=1e-10)
        sp = spearman_gene(truth, pred).values[g]
        assert sp == pytest.approx(spearmanr(truth[keep, g], pred[keep, g])[0], rel=1e-10)
    overall = pcc_overall(truth, pred)
    assert overall.undefined[2] and np.isnan(overall.values[2])
    keep = ~np.isnan(truth[17])
    assert overall.values[17] == pytest.approx(pearsonr(truth[17, keep], pred[17, keep])[0], rel=1e-10)


def test_gene_with_one_complete_unit_is_undefined():
    truth = np.array([[1.0, 2.0], [2.0, 3.0], [3.0, 1.0]])
    pred = np.array([[1.0, np.nan], [2.5, np.nan], [2.0, 1.0]])
    got = pcc_gene(truth, pred)
    assert not got.undefined[0] and got.undefined[1]


def test_chunked_computation_equals_single_pass(data, monkeypatch):
    truth, pred = data
    whole = (pcc_gene(truth, pred), pcc_overall(truth, pred), spearman_gene(truth, pred))
    monkeypatch.setattr(metrics, "_CHUNK_ELEMENTS", 50)  # 1–2 columns per chunk
    chunked = (pcc_gene(truth, pred), pcc_overall(truth, pred), spearman_gene(truth, pred))
    for a, b in zip(whole, chunked, strict=True):
        np.testing.assert_array_equal(a.undefined, b.undefined)
        np.testing.assert_allclose(a.values, b.values, rtol=1e-12, equal_nan=True)


def test_rmse_by_hand():
    truth = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    pred = np.array([[1.5, 2.0, 1.0], [4.0, np.nan, 7.0]])
    errors = [0.25, 0.0, 4.0, 0.0, 1.0]
    assert rmse(truth, pred) == pytest.approx(math.sqrt(sum(errors) / 5))
    np.testing.assert_allclose(
        rmse_gene(truth, pred), [math.sqrt(0.25 / 2), 0.0, math.sqrt(5.0 / 2)], rtol=1e-12
    )
    assert np.isnan(rmse_gene(truth, np.full_like(pred, np.nan))).all()
    assert math.isnan(rmse(truth, np.full_like(pred, np.nan)))


def test_js_divergence_equals_scipy_jensenshannon_squared():
    rng = np.random.default_rng(3)
    truth = rng.gamma(1.0, 100.0, size=(12, 30))
    truth[0, :5] = 0.0  # zeros in truth
    pred = truth * rng.uniform(0.5, 1.5, size=truth.shape)
    pred[1, :3] = -2.0  # negative predictions are clipped to 0
    got = js_divergence(truth, pred)
    want = [jensenshannon(truth[u], np.clip(pred[u], 0, None)) ** 2 for u in range(12)]
    np.testing.assert_allclose(got.values, want, rtol=1e-9, atol=1e-14)
    assert got.n_undefined == 0
    # Symmetric (the paper's printed eq. 16 is not), bounded by ln 2, and 0 for proportional profiles.
    np.testing.assert_allclose(js_divergence(pred.clip(0), truth).values, got.values, rtol=1e-12)
    disjoint = js_divergence(np.array([[1.0, 0.0]]), np.array([[0.0, 3.0]])).values[0]
    assert disjoint == pytest.approx(math.log(2))
    assert js_divergence(truth, 3 * truth).values == pytest.approx(np.zeros(12), abs=1e-12)


def test_js_divergence_undefined_units_and_negative_truth():
    truth = np.array([[1.0, 2.0], [0.0, 0.0], [1.0, np.nan], [1.0, 1.0]])
    pred = np.array([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [-1.0, -2.0]])
    got = js_divergence(truth, pred)
    assert got.undefined.tolist() == [False, True, True, True]
    with pytest.raises(ValueError, match="non-negative"):
        js_divergence(-truth[:1], pred[:1])


def test_bad_inputs_raise():
    a = np.ones((3, 4))
    with pytest.raises(ValueError, match="shape"):
        pcc_gene(a, np.ones((3, 5)))
    with pytest.raises(ValueError, match="inf"):
        pcc_gene(a, np.full((3, 4), np.inf))
    with pytest.raises(ValueError, match="2-D"):
        rmse(np.ones(3), np.ones(3))


def test_evaluate_pooled_record(data):
    truth, pred = data
    genes = [f"G{i}" for i in range(truth.shape[1])]
    ev = evaluate(truth, pred, space="log1p counts", genes=genes)
    m = ev.metrics
    assert isinstance(m, MetricSet)
    assert (m.space, m.scope, m.n_units, m.n_genes, m.n_samples) == ("log1p counts", "pooled", 40, 25, 1)
    assert m.n_undefined_genes == 3 and m.undefined_genes == ("G3", "G7", "G11")
    assert m.n_undefined_units == 2
    assert m.pcc_gene == pytest.approx(pcc_gene(truth, pred).mean)
    assert m.pcc_overall == pytest.approx(pcc_overall(truth, pred).mean)
    assert m.spearman_gene == pytest.approx(spearman_gene(truth, pred).mean)
    assert m.rmse == pytest.approx(rmse(truth, pred))
    # pred has negatives (noise) -> clipped; truth non-negative -> JS defined.
    assert m.js_divergence == pytest.approx(js_divergence(truth, pred).mean)
    assert list(ev.per_gene.index) == genes
    assert ev.per_gene.loc["G3", "pcc_defined"] == False  # noqa: E712
    assert np.isnan(ev.per_gene.loc["G7", "pcc"])
    assert ev.per_sample is None
    rec = ev.record(fold=0, model="m")
    assert rec["fold"] == 0 and rec["space"] == "log1p counts" and rec["undefined_genes"] == "G3;G7;G11"
    assert rec["n_undefined_genes"] == 3


def test_evaluate_per_sample_versus_pooled_is_explicit():
    rng = np.random.default_rng(11)
    # Two samples whose gene levels differ a lot: pooled PCC gene is inflated by the between-sample shift.
    a_truth = rng.normal(0, 1, (30, 6))
    b_truth = rng.normal(5, 1, (30, 6))
    truth = np.vstack([a_truth, b_truth])
    pred = np.vstack([np.full((30, 6), 0.0), np.full((30, 6), 5.0)]) + rng.normal(0, 0.1, (60, 6))
    groups = np.array(["s1"] * 30 + ["s2"] * 30)
    genes = [f"g{i}" for i in range(6)]
    per = evaluate(truth, pred, space="log1p counts", genes=genes, groups=groups)
    pooled = evaluate(truth, pred, space="log1p counts", genes=genes, groups=groups, scope="pooled")
    assert per.metrics.scope == "per_sample" and pooled.metrics.scope == "pooled"
    assert per.metrics.n_samples == 2 and pooled.metrics.n_samples == 2
    by_hand = np.mean([pcc_gene(truth[groups == s], pred[groups == s]).mean for s in ("s1", "s2")])
    assert per.metrics.pcc_gene == pytest.approx(by_hand)
    assert pooled.metrics.pcc_gene == pytest.approx(pcc_gene(truth, pred).mean)
    assert pooled.metrics.pcc_gene > 0.9 > abs(per.metrics.pcc_gene)
    rmse_hand = np.mean([rmse(truth[groups == s], pred[groups == s]) for s in ("s1", "s2")])
    assert per.metrics.rmse == pytest.approx(rmse_hand)
    assert per.per_sample is not None and list(per.per_sample.index) == ["s1", "s2"]
    assert (per.per_sample["scope"] == "sample").all()
    assert per.per_sample.loc["s1", "pcc_gene"] == pytest.approx(pcc_gene(truth[:30], pred[:30]).mean)


def test_evaluate_per_sample_counts_genes_undefined_in_any_sample():
    rng = np.random.default_rng(2)
    truth = rng.gamma(2.0, 1.0, (20, 4))
    pred = truth + rng.normal(0, 0.5, truth.shape)
    truth[:10, 1] = 3.0  # gene 1 constant in the first sample only
    groups = np.repeat([0, 1], 10)
    ev = evaluate(truth, pred, space="TPM", genes=["a", "b", "c", "d"], groups=groups)
    assert ev.metrics.n_undefined_genes == 1 and ev.metrics.undefined_genes == ("b",)
    assert ev.per_gene.loc["b", "n_samples_undefined"] == 1
    want_b = pcc_gene(truth[10:], pred[10:]).values[1]
    assert ev.per_gene.loc["b", "pcc"] == pytest.approx(want_b)
    assert evaluate(truth, pred, space="TPM", genes=list("abcd")).metrics.n_undefined_genes == 0


def test_evaluate_validates_labels(data):
    truth, pred = data
    genes = [f"G{i}" for i in range(truth.shape[1])]
    with pytest.raises(ValueError, match="space"):
        evaluate(truth, pred, space="", genes=genes)
    with pytest.raises(ValueError, match="gene names"):
        evaluate(truth, pred, space="TPM", genes=genes[:-1])
    with pytest.raises(ValueError, match="unique"):
        evaluate(truth, pred, space="TPM", genes=["G0"] * truth.shape[1])
    with pytest.raises(ValueError, match="groups"):
        evaluate(truth, pred, space="TPM", genes=genes, scope="per_sample")


def test_evaluate_js_not_applicable_to_negative_truth(data):
    truth, pred = data
    z = (truth - truth.mean(0)) / np.where(truth.std(0) > 0, truth.std(0), 1)
    m = evaluate(z, pred, space="z-score log1p", genes=[str(i) for i in range(25)]).metrics
    assert math.isnan(m.js_divergence) and m.n_undefined_js_units == 40


def test_summarise_folds_by_hand():
    records = [
        {"fold": 0, "model": "mlp", "space": "TPM", "pcc_gene": 0.5, "rmse": 1.0, "n_undefined_genes": 2},
        {"fold": 1, "model": "mlp", "space": "TPM", "pcc_gene": 0.7, "rmse": 2.0, "n_undefined_genes": 0},
        {"fold": 2, "model": "mlp", "space": "TPM", "pcc_gene": 0.3, "rmse": 4.0, "n_undefined_genes": 1},
    ]
    table = summarise_folds(records)
    assert list(table.index) == ["0", "1", "2", "mean", "std"]
    assert table.loc["mean", "pcc_gene"] == pytest.approx(0.5)
    assert table.loc["std", "pcc_gene"] == pytest.approx(math.sqrt((0.0 + 0.04 + 0.04) / 2))  # ddof=1
    assert table.loc["mean", "rmse"] == pytest.approx(7 / 3)
    sd = math.sqrt(sum((v - 7 / 3) ** 2 for v in (1.0, 2.0, 4.0)) / 2)
    assert table.loc["std", "rmse"] == pytest.approx(sd)
    assert table.loc["mean", "space"] == "TPM" and table.loc["mean", "model"] == "mlp"
    assert table.loc["1", "pcc_gene"] == 0.7


def test_summarise_folds_single_fold_nan_and_mixing():
    one = summarise_folds([{"pcc_gene": 0.4, "space": "TPM"}])
    assert one.loc["mean", "pcc_gene"] == 0.4 and math.isnan(one.loc["std", "pcc_gene"])
    with_nan = summarise_folds([{"js": 0.1}, {"js": float("nan")}])
    assert math.isnan(with_nan.loc["mean", "js"])
    with pytest.raises(ValueError, match="space"):
        summarise_folds([{"pcc_gene": 0.4, "space": "TPM"}, {"pcc_gene": 0.4, "space": "log1p TPM"}])
    with pytest.raises(ValueError, match="no fold"):
        summarise_folds([])


def test_summarise_folds_accepts_evaluations(data):
    truth, pred = data
    genes = [f"G{i}" for i in range(25)]
    evs = [evaluate(truth[s], pred[s], space="TPM", genes=genes) for s in (slice(0, 20), slice(20, 40))]
    table = summarise_folds([e.record(fold=f"f{i}") for i, e in enumerate(evs)])
    assert list(table.index) == ["f0", "f1", "mean", "std"]
    want = np.mean([e.metrics.pcc_gene for e in evs])
    assert table.loc["mean", "pcc_gene"] == pytest.approx(want)
    assert isinstance(summarise_folds(evs), pd.DataFrame)
