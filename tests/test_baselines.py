"""Baselines: exactness against independent sklearn pipelines, learning, and no access to test rows."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA
from sklearn.linear_model import Ridge
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from bitro.evaluate.baselines import (
    HestProbe,
    MLPBaseline,
    OracleComposition,
    TrainingMean,
    unit_mean_embeddings,
)
from bitro.metrics import pcc_gene, rmse

FAST_MLP = {"hidden": (64, 64), "max_epochs": 60, "batch_size": 32}


def _linear_task(n: int = 160, e: int = 20, g: int = 8, noise: float = 0.1, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, e))
    w = rng.normal(size=(e, g)) / np.sqrt(e)
    y = x @ w + 3.0 + noise * rng.normal(size=(n, g))
    return x, y


# ---------------------------------------------------------------------------------- unit_mean_embeddings


def test_unit_mean_embeddings_matches_loop(caplog):
    rng = np.random.default_rng(1)
    emb = rng.normal(size=(200, 7))
    idx = rng.integers(-1, 12, size=200)
    idx[idx == 4] = 5  # unit 4 is empty
    with caplog.at_level(logging.WARNING, logger="bitro.evaluate.baselines"):
        res = unit_mean_embeddings(emb, idx, 13)  # unit 12 is empty too
    means, n_cells, empty = res
    for u in range(13):
        rows = emb[idx == u]
        assert n_cells[u] == len(rows)
        if len(rows):
            np.testing.assert_allclose(means[u], rows.mean(axis=0), rtol=1e-12)
        else:
            assert np.isnan(means[u]).all()
    assert empty.tolist() == [4, 12]
    assert "2 of 13 units have no cells" in caplog.text


def test_unit_mean_embeddings_rejects_bad_indices():
    emb = np.ones((3, 2))
    with pytest.raises(ValueError, match=r"-1\.\.1"):
        unit_mean_embeddings(emb, np.array([0, 2, 1]), 2)
    with pytest.raises(ValueError, match="integers"):
        unit_mean_embeddings(emb, np.array([0.0, 1.0, 1.0]), 2)
    with pytest.raises(ValueError, match="one entry per cell"):
        unit_mean_embeddings(emb, np.array([0, 1]), 2)


# ------------------------------------------------------------------------------------------ TrainingMean


def test_training_mean_exact():
    x, y = _linear_task(n=30)
    model = TrainingMean().fit(x[:20], y[:20])
    pred = model.predict(x[20:])
    np.testing.assert_array_equal(pred, np.tile(y[:20].mean(axis=0), (10, 1)))


# -------------------------------------------------------------------------------------------- HestProbe


@pytest.mark.parametrize("fit_intercept", [True, False])
def test_hest_probe_equals_independent_pipeline(fit_intercept):
    x, y = _linear_task(n=120, e=300, g=10)
    probe = HestProbe(fit_intercept=fit_intercept, seed=3).fit(x[:100], y[:100])
    n_comp = 100  # min(256, 100 train units, 300 features)
    reference = Pipeline(
        [
            ("s", StandardScaler()),
            ("p", PCA(n_components=n_comp, random_state=3)),
            (
                "r",
                Ridge(
                    alpha=100 / (n_comp * 10),
                    solver="lsqr",
                    fit_intercept=fit_intercept,
                    max_iter=1000,
                    random_state=3,
                ),
            ),
        ]
    ).fit(x[:100], y[:100])
    assert probe.n_components_ == n_comp
    assert probe.alpha_ == pytest.approx(0.1)
    np.testing.assert_allclose(probe.predict(x[100:]), reference.predict(x[100:]), rtol=1e-10, atol=1e-10)


def test_hest_probe_caps_components_and_learns():
    x, y = _linear_task(n=400, e=20, g=6)
    probe = HestProbe().fit(x[:300], y[:300])
    assert probe.n_components_ == 20  # capped by the features
    assert rmse(y[300:], probe.predict(x[300:])) < 0.5 * rmse(
        y[300:], TrainingMean().fit(x, y).predict(x[300:])
    )
    assert HestProbe(alpha=2.5).fit(x[:300], y[:300]).alpha_ == 2.5


# ---------------------------------------------------------------------------------------------------- MLP


def test_mlp_beats_training_mean_on_linear_task():
    x, y = _linear_task(n=240, e=16, g=6, seed=4)
    train, test = slice(0, 200), slice(200, 240)
    mlp = MLPBaseline(**FAST_MLP, seed=0).fit(x[train], y[train])
    mean = TrainingMean().fit(x[train], y[train])
    err_mlp = rmse(y[test], mlp.predict(x[test]))
    err_mean = rmse(y[test], mean.predict(x[test]))
    assert err_mlp < 0.6 * err_mean
    assert pcc_gene(y[test], mlp.predict(x[test])).mean > 0.8
    assert 1 <= mlp.best_epoch_ <= mlp.n_epochs_ <= 60
    assert len(mlp.history_) == mlp.n_epochs_
    assert mlp.val_units_.size == 40  # 20 % of the training units, never a test unit


def test_mlp_paper_architecture_by_default():
    mlp = MLPBaseline(max_epochs=1).fit(*_linear_task(n=20, e=5, g=3))
    linears = [m for m in mlp.model_.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(5, 1024), (1024, 1024), (1024, 3)]


def test_mlp_is_deterministic_and_leaves_global_rng_alone():
    x, y = _linear_task(n=80, e=8, g=4)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = MLPBaseline(**FAST_MLP, seed=5).fit(x[:60], y[:60]).predict(x[60:])
    b = MLPBaseline(**FAST_MLP, seed=5).fit(x[:60], y[:60]).predict(x[60:])
    np.testing.assert_array_equal(a, b)
    assert torch.equal(state, torch.get_rng_state())
    c = MLPBaseline(**FAST_MLP, seed=6).fit(x[:60], y[:60]).predict(x[60:])
    assert not np.array_equal(a, c)


def test_mlp_validation_split_by_group():
    x, y = _linear_task(n=100, e=6, g=3)
    groups = np.repeat(np.arange(10), 10)
    mlp = MLPBaseline(**{**FAST_MLP, "max_epochs": 3}).fit(x, y, groups=groups)
    val_groups = set(groups[mlp.val_units_])
    fit_groups = set(groups[np.setdiff1d(np.arange(100), mlp.val_units_)])
    assert len(val_groups) == 2 and not val_groups & fit_groups


def test_mlp_early_stops_on_a_given_validation_set():
    """The accuracy benchmark gives the MLP the fold's validation samples, as BiTro gets them."""
    x, y = _linear_task(n=120, e=6, g=3, seed=2)
    mlp = MLPBaseline(**{**FAST_MLP, "max_epochs": 4}).fit(x[:90], y[:90], validation=(x[90:], y[90:]))
    assert mlp.val_units_.tolist() == list(range(90, 120))
    model = MLPBaseline(**{**FAST_MLP, "max_epochs": 4})
    model.fit(x[:90], y[:90], validation=(x[90:], y[90:]))
    np.testing.assert_array_equal(model.predict(x[:5]), mlp.predict(x[:5]))
    # Standardisation comes from the training units only.
    np.testing.assert_allclose(mlp._x_mean, x[:90].mean(axis=0))


def test_mlp_dropout_layers_only_when_asked():
    x, y = _linear_task(n=20, e=5, g=3)
    plain = MLPBaseline(max_epochs=1).fit(x, y)
    dropped = MLPBaseline(max_epochs=1, dropout=0.1).fit(x, y)
    assert not any(isinstance(m, torch.nn.Dropout) for m in plain.model_.modules())
    assert sum(isinstance(m, torch.nn.Dropout) for m in dropped.model_.modules()) == 2
    with pytest.raises(ValueError, match="dropout"):
        MLPBaseline(dropout=1.0)


def test_mlp_without_validation_warns():
    x, y = _linear_task(n=10, e=3, g=2)
    with pytest.warns(UserWarning, match="no validation split"):
        mlp = MLPBaseline(**{**FAST_MLP, "max_epochs": 3}).fit(x, y, groups=np.zeros(10))
    assert mlp.best_epoch_ == mlp.n_epochs_ == 3


# --------------------------------------------------------------------------------------------- oracle


def test_oracle_composition_recovers_linear_mixture():
    rng = np.random.default_rng(8)
    types = rng.integers(0, 4, size=3000)
    units = rng.integers(0, 60, size=3000)
    frac = unit_mean_embeddings(np.eye(4)[types], units, 60).means
    profiles = rng.gamma(2.0, 2.0, size=(4, 5))
    y = frac @ profiles
    oracle = OracleComposition().fit(frac[:45], y[:45])
    np.testing.assert_allclose(oracle.predict(frac[45:]), y[45:], rtol=1e-2)
    with pytest.raises(ValueError, match="fractions"):
        OracleComposition().fit(frac[:45] * 10, y[:45])


# ---------------------------------------------------------------------------------- leakage and missing


def _baselines() -> list:
    return [TrainingMean(), HestProbe(), MLPBaseline(**{**FAST_MLP, "max_epochs": 5}), OracleComposition()]


def _features_for(model, x: np.ndarray) -> np.ndarray:
    if isinstance(model, OracleComposition):
        e = np.exp(x[:, :4])
        return e / e.sum(axis=1, keepdims=True)
    return x


@pytest.mark.parametrize("index", range(4))
def test_no_baseline_sees_test_rows(index):
    x, y = _linear_task(n=90, e=12, g=5)
    train, test = np.arange(70), np.arange(70, 90)
    model_a = _baselines()[index]
    xf = _features_for(model_a, x)
    pred_a = model_a.fit(xf[train], y[train]).predict(xf[test])
    # Changing test rows' targets (and features) in the full table changes nothing fitted.
    y2, x2 = y.copy(), xf.copy()
    y2[test] += 100.0
    x2[test[1:]] = x2[test[1:]][::-1]
    model_b = _baselines()[index].fit(x2[train], y2[train])
    np.testing.assert_array_equal(model_b.predict(xf[test]), pred_a)
    # Predictions are row-wise: no statistic of the test set enters (each row alone gives the same).
    alone = np.vstack([model_a.predict(xf[[i]]) for i in test])
    np.testing.assert_allclose(alone, pred_a, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("index", range(4))
def test_missing_features_fail_in_fit_and_give_nan_in_predict(index):
    x, y = _linear_task(n=40, e=6, g=3)
    model = _baselines()[index]
    xf = _features_for(model, x)
    bad = xf.copy()
    bad[3] = np.nan
    with pytest.raises(ValueError, match="non-finite features"):
        model.fit(bad, y)
    pred = model.fit(xf[:30], y[:30]).predict(np.vstack([xf[30:], np.full((1, xf.shape[1]), np.nan)]))
    assert np.isnan(pred[-1]).all() and np.isfinite(pred[:-1]).all()
    with pytest.raises(ValueError, match="shape"):
        model.predict(xf[:, :2])
