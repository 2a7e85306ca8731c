"""The bulk side of the accuracy benchmark: slides that differ in composition, the slide-level effect,
learning-curve folds and the curve's scores."""

from __future__ import annotations

import numpy as np
import pytest

from bitro.accuracy.bench import curve_jobs, restrict, tuning_grid
from bitro.accuracy.curve import pcc_gene, rmse
from bitro.accuracy.runs import VARIANTS, CohortSpec, folds
from bitro.demo.morphology import LYMPHOCYTE, TUMOUR
from bitro.demo.virtual import INTERFERON, VirtualConfig, bulk_cohort
from bitro.errors import ConfigError


@pytest.fixture(scope="module")
def slides():
    return bulk_cohort(VirtualConfig(seed=3), n_patients=30, grid=(6, 6))


def test_bulk_slides_differ_in_composition_between_patients(slides) -> None:
    tumour = np.array([(s.cell_type == TUMOUR).mean() for s in slides.samples])
    lymphocytes = np.array([(s.cell_type == LYMPHOCYTE).mean() for s in slides.samples])
    # Purity Beta(4, 3.3) and a log-normal infiltration: a spread of tumour fractions as tumours have
    # (rank-normalised fields gave every slide nearly the same mix: sd about 0.04).
    assert tumour.std() > 0.08 and 0.2 < tumour.mean() < 0.7
    assert lymphocytes.std() > 0.03
    assert {s.patient_id for s in slides.samples} == {f"P{p:03d}" for p in range(1, 31)}


def test_slide_effect_follows_the_slides_tumour_immune_contact(slides) -> None:
    genes = [slides.genes.index(g) for g in INTERFERON]
    contact = np.array([s.contact_fraction for s in slides.samples])
    # Interferon expectation per tumour cell: the programme's log-fold over the slide, apart from how
    # many tumour cells there are.
    tumour_cells = np.array([(s.cell_type == TUMOUR).sum() for s in slides.samples])
    per_tumour_cell = np.log(np.array([s.expected[0, genes].sum() for s in slides.samples]) / tumour_cells)
    assert np.corrcoef(contact, per_tumour_cell)[0, 1] > 0.8
    assert all(slides.effect_of_gene[g] == "slide" for g in INTERFERON)
    # Saturating: the programme spans less than e² between the least and most contact.
    assert np.ptp(per_tumour_cell) < 2.0 + 0.5


def _spec(train_patients: int | None = None) -> CohortSpec:
    return CohortSpec("bulk", 20, (3, 3), 5, 0.25, train_patients=train_patients)


def test_learning_curve_folds_cut_training_and_keep_the_test_patients() -> None:
    full = folds(_spec())
    for n, size in ((5, 4), (10, 8)):
        cut = folds(_spec(n))
        for whole, part in zip(full, cut, strict=True):
            assert part.test == whole.test
            pool = set(whole.train) | set(whole.validation)
            assert set(part.train) | set(part.validation) <= pool
            assert not set(part.train) & set(part.validation)
            assert len(part.train) + len(part.validation) == size  # round(n · 4/5), one slide a patient
            assert len(part.validation) == max(1, round(0.25 * size))
    small, large = folds(_spec(5)), folds(_spec(10))
    # Nested: the smaller point's patients are among the larger point's.
    for a, b in zip(small, large, strict=True):
        assert set(a.train) | set(a.validation) <= set(b.train) | set(b.validation)
    assert folds(_spec(20)) == full  # the whole pool: the benchmark's own folds
    with pytest.raises(ConfigError, match="train_patients"):
        folds(_spec(1))


def test_curve_scores_match_a_hand_computation() -> None:
    y = np.array([[0.0, 1.0], [2.0, 1.0], [4.0, 4.0]])
    p = np.array([[1.0, 1.0], [2.0, 2.0], [3.0, 2.0]])
    # Squared errors 1, 0, 0, 1, 1, 4: mean 7/6.
    assert rmse(y, [p]) == pytest.approx(np.sqrt(7 / 6))
    assert rmse(y, [p, y]) == pytest.approx(np.sqrt(7 / 6) / 2)  # the seeds' mean RMSE
    assert rmse(y, [p], np.array([0, 0])) == pytest.approx(np.sqrt(0.5))
    # Gene 0: p = y / 2 + 1 → 1; gene 1: deviations (−1, −1, 2) and (−2/3, 1/3, 1/3): 1 / √(6 · 2/3) = 0.5.
    assert pcc_gene(y, [p]) == pytest.approx((1.0 + 0.5) / 2)


def test_curve_jobs_reuse_the_benchmark_at_full_size_and_restrict_keeps_one_cohort(tmp_path) -> None:
    config = {
        "seed": 0,
        "seeds": [0, 1],
        "cohorts": {
            "st": {"n_patients": 4, "grid": [3, 3], "n_folds": 2, "validation_fraction": 0.3},
            "bulk": {"n_patients": 20, "grid": [3, 3], "n_folds": 5, "validation_fraction": 0.25},
        },
        "training": {"st": {}, "bulk": {}},
        "tuning": {"lr": [1e-3, 3e-3], "dropout": [0.0, 0.1], "cohorts": ["st", "bulk"]}
        | {"grid_of": {"bulk": {"dropout": [0.1]}}},
        "models": {"st": ["bitro"], "bulk": ["bitro", "mlp"]},
        "learning_curve": {
            "cohort": "bulk",
            "patients": [10, 20],
            "models": ["training_mean", "bitro"],
            "seeds_of": {"bitro": 1},
        },
    }
    assert tuning_grid(config, "bulk")["dropout"] == [0.1] and tuning_grid(config, "st")["dropout"] == [
        0.0,
        0.1,
    ]
    chosen = {"bulk": {m: {"lr": 1e-3, "dropout": 0.1} for m in ("bitro", "mlp")}}
    points = curve_jobs(restrict(config, ["bulk"]), tmp_path, chosen)
    assert sorted(points) == [10, 20]
    assert len(points[10]) == 5 + 5  # training_mean (deterministic) and bitro (1 seed), 5 folds each
    assert {j.path.parent.name for j in points[10]} == {"bulk_n10"}
    assert {j.path.parent.name for j in points[20]} == {"bulk"} and points[20][0].spec.train_patients is None
    assert "st" not in restrict(config, ["bulk"])["cohorts"]
    assert restrict(config, ["bulk"])["tuning"]["cohorts"] == ["bulk"]
    with pytest.raises(ConfigError, match="cohorts"):
        restrict(config, ["xenium"])
    assert VARIANTS["bitro_context"] == {"model": {"slide_context": "patch_tokens"}}
    assert VARIANTS["no_pooled_norm"] == {"model": {"pooled_norm": False}}
