"""The accuracy benchmark's generator, folds, statistics and runs, on small virtual cohorts."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy.stats import pearsonr
from sklearn.linear_model import LinearRegression, Ridge
from sklearn.model_selection import cross_val_score

from bitro.accuracy.bench import Job
from bitro.accuracy.data import patient_folds, sample_data
from bitro.accuracy.runs import (
    DETERMINISTIC,
    MLP_MODELS,
    VARIANTS,
    CohortSpec,
    RunResult,
    cohort_fingerprint,
    folds,
    load_run,
    run_baseline,
    run_bitro,
    save_run,
    truth,
)
from bitro.accuracy.stats import (
    bootstrap_rows,
    normalised_log1p,
    paired_difference,
    pcc_columns,
    pcc_gene_by_sample,
)
from bitro.accuracy.transfer import TRANSFERS
from bitro.demo.morphology import LYMPHOCYTE, TUMOUR
from bitro.demo.virtual import EFFECTS, VirtualConfig, bulk_cohort, st_cohort
from bitro.errors import ConfigError
from bitro.model.bitro import BiTroConfig


@pytest.fixture(scope="module")
def cohort():
    return st_cohort(VirtualConfig(seed=3), n_patients=3, sections_per_patient=2, grid=(8, 8))


def test_generator_is_seeded_and_tags_every_planted_effect(cohort) -> None:
    again = st_cohort(VirtualConfig(seed=3), n_patients=3, sections_per_patient=2, grid=(8, 8))
    assert np.array_equal(cohort.samples[4].counts, again.samples[4].counts)
    assert np.array_equal(cohort.samples[4].features, again.samples[4].features)
    assert set(cohort.effect_of_gene.values()) == set(EFFECTS) - {"slide"} | {"slide"}
    for effect in ("composition", "neighbourhood", "position", "slide", "patient"):
        assert len(cohort.genes_of(effect)) >= 3, effect
    sample = cohort.samples[0]
    assert sample.n_units == 64 and sample.counts.shape == (64, len(cohort.genes))
    assert np.all(sample.counts == np.round(sample.counts)) and sample.counts.min() >= 0


def test_neighbourhood_genes_follow_arrangement_at_equal_composition(cohort) -> None:
    """Effect (b): a lymphocyte's cytotoxic genes rise with tumour neighbours, which segregation removes,
    while a unit's mean features depend on its composition only (they cannot tell the arrangement)."""
    gene = cohort.genes.index("GZMB")
    rows = []
    for sample in cohort.samples:
        composition = sample.composition()
        mixed_share = composition[:, TUMOUR] * composition[:, LYMPHOCYTE]
        expected = sample.expected[:, gene] / sample.expected.sum(axis=1)
        rows.append(np.column_stack([composition, sample.segregated, mixed_share, expected]))
    table = np.concatenate(rows)
    composition, segregated, expected = table[:, :6], table[:, 6], table[:, -1]
    both = table[:, 7] > 0.05  # units with tumour and lymphocytes: contacts depend on the arrangement
    fit = LinearRegression().fit(composition[both], np.log(expected[both]))
    residual = np.log(expected[both]) - fit.predict(composition[both])
    assert residual[segregated[both] == 0].mean() > residual[segregated[both] == 1].mean() + 0.1
    # The unit-mean features: given composition, the arrangement flag adds nothing.
    means = [
        np.add.reduceat(s.features, s.cell_offsets[:-1]) / np.diff(s.cell_offsets)[:, None]
        for s in cohort.samples
    ]
    x = np.concatenate(means)
    assert cross_val_score(Ridge(alpha=1.0), x, segregated, cv=5, scoring="r2").mean() < 0.05


def test_counts_leave_a_ceiling_below_one(cohort) -> None:
    sample = cohort.samples[1]
    ceiling = np.nanmean(pcc_columns(np.log1p(sample.counts), np.log1p(sample.expected)))
    assert 0.5 < ceiling < 0.95


def test_bulk_slides_vary_contact_apart_from_composition() -> None:
    slides = bulk_cohort(VirtualConfig(seed=1), n_patients=12, grid=(5, 5))
    contact = np.array([s.contact_fraction for s in slides.samples])
    tumour = np.array([(s.cell_type == TUMOUR).mean() for s in slides.samples])
    assert contact.std() > 0.03
    assert abs(np.corrcoef(contact, tumour)[0, 1]) < 0.9
    assert all(s.counts.shape == (1, len(slides.genes)) for s in slides.samples)
    np.testing.assert_allclose(slides.samples[0].counts.sum(), 1e6)


def test_patient_folds_never_share_a_patient() -> None:
    patients = [f"P{i // 2}" for i in range(12)]
    made = patient_folds(patients, n_folds=3, validation_fraction=0.25, seed=0)
    tested = sorted(i for f in made for i in f.test)
    assert tested == list(range(12))
    for fold in made:
        sides = [{patients[i] for i in getattr(fold, role)} for role in ("train", "validation", "test")]
        assert not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])
        assert sides[1]
    with pytest.raises(ConfigError, match="patients"):
        patient_folds(["A", "A", "B"], n_folds=2, validation_fraction=0.2, seed=0)


def test_sample_data_graphs_stay_within_units(cohort) -> None:
    data = sample_data(cohort.samples[0])
    assert len(data.graph.unit_ids) == cohort.samples[0].n_units
    edges = data.graph.global_edges()
    sizes = np.diff(cohort.samples[0].cell_offsets)
    unit = np.repeat(np.arange(len(sizes)), sizes)
    assert np.array_equal(unit[edges[0]], unit[edges[1]])
    assert np.abs(data.offsets_um).max() <= 27.5 + 5


def test_pcc_columns_match_scipy_and_leave_constant_genes_undefined() -> None:
    rng = np.random.default_rng(0)
    truth, prediction = rng.normal(size=(30, 4)), rng.normal(size=(30, 4))
    prediction[:, 3] = 2.0
    r = pcc_columns(truth, prediction)
    for g in range(3):
        assert r[g] == pytest.approx(pearsonr(truth[:, g], prediction[:, g])[0])
    assert np.isnan(r[3])
    groups = np.repeat([0, 1], 15)
    by_sample = pcc_gene_by_sample(truth, prediction, groups)
    hand = np.mean([pearsonr(truth[groups == s, 0], prediction[groups == s, 0])[0] for s in (0, 1)])
    assert by_sample[0] == pytest.approx(hand) and np.isnan(by_sample[3])


def test_normalised_log1p_scales_each_row_to_ten_thousand() -> None:
    counts = np.array([[1.0, 3.0, 0.0], [10.0, 10.0, 20.0]])
    out = np.expm1(normalised_log1p(np.log1p(counts)))
    np.testing.assert_allclose(out.sum(axis=1), 1e4)
    np.testing.assert_allclose(out[0], [2500, 7500, 0])


def test_paired_difference_is_zero_for_identical_models_and_signed_otherwise() -> None:
    rng = np.random.default_rng(1)
    truth = rng.normal(size=(60, 5))
    groups = np.repeat([0, 1, 2], 20)
    good = truth + rng.normal(scale=0.3, size=truth.shape)
    bad = truth + rng.normal(scale=3.0, size=truth.shape)
    genes = np.ones(5, dtype=bool)
    assert paired_difference(truth, [good], [good], groups, genes, n_boot=50) == (0.0, 0.0, 0.0)
    point, low, high = paired_difference(truth, [good], [bad], groups, genes, n_boot=200)
    assert 0 < low < point < high
    rows = bootstrap_rows(groups, 3, 0)
    assert all(np.array_equal(np.bincount(groups[r]), [20, 20, 20]) for r in rows)


def test_runs_predict_the_test_units_and_resume_from_their_cache(tmp_path: Path) -> None:
    spec = CohortSpec(
        level="st",
        n_patients=4,
        grid=(5, 5),
        n_folds=2,
        validation_fraction=0.34,
        sections_per_patient=1,
        seed=2,
    )
    fold = folds(spec)[0]
    y, groups = truth(spec, fold)
    settings = {
        "model": {
            "dim": 16,
            "gat_heads": 2,
            "transformer_heads": 2,
            "position_dim": 4,
            "readout": "per_gene",
        },
        "training": {
            "lr": 3e-3,
            "batch_bags": 8,
            "max_steps": 12,
            "patience_steps": 12,
            "eval_every_steps": 4,
        },
        "phenotypes_k": 3,
    }
    result = run_bitro(spec, fold, "bitro", 0, settings, tmp_path / "work")
    assert result.prediction.shape == y.shape and np.isfinite(result.prediction).all()
    assert result.info["train"]["steps_run"] >= 12 and 0 <= result.info["attention_entropy"] <= 1 + 1e-9
    assert {"gat.layers", "mil.queries", "transformer.blocks"} <= set(result.info["gradient_norms"])
    save_run(result, tmp_path / "runs" / "bitro_lr0.001_s0", settings)
    assert load_run(tmp_path / "runs" / "bitro_lr0.003_s0", settings) is None  # a dot is no suffix
    again = load_run(tmp_path / "runs" / "bitro_lr0.001_s0", settings)
    assert again is not None and np.array_equal(again.prediction, result.prediction)
    other = settings | {"training": settings["training"] | {"lr": 1e-3}}
    assert load_run(tmp_path / "runs" / "bitro_lr0.001_s0", other) is None  # made with other settings
    assert load_run(tmp_path / "runs" / "missing") is None
    for model in ("training_mean", "hest_probe", "oracle", "cell_count", "mlp", "mlp_count"):
        baseline = run_baseline(spec, fold, model, 0, {"epochs": 3})
        assert baseline.prediction.shape == y.shape and np.isfinite(baseline.validation_mse), model
    null = run_bitro(spec, fold, "permutation_null", 0, settings, tmp_path / "null")
    assert null.prediction.shape == y.shape
    assert len(np.unique(groups)) == len(fold.test)


def test_a_cached_run_counts_only_for_the_data_and_configs_it_was_made_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The defect: a run's cache key was its path and settings, so runs made on a cohort the generator
    has since changed loaded without complaint (a stale bulk cache scored the oracle at RMSE 0.327
    against its true 0.219)."""
    spec = CohortSpec(level="st", n_patients=2, grid=(4, 4), n_folds=2, validation_fraction=0.5, seed=2)
    settings = {"model": {"dim": 16}, "training": {"lr": 1e-3}, "phenotypes_k": 3}
    path = tmp_path / "runs" / "bitro_fold0_s0"
    job = Job(spec, 0, "bitro", 0, settings, path)
    job.save(RunResult(np.zeros((3, 2)), 0.5))
    assert job.cached() is not None
    assert load_run(path, settings) is not None  # the settings alone would have taken it
    redrawn = replace(spec, generator={"umi_per_spot": 900.0})  # the same path, other data
    assert cohort_fingerprint(redrawn) != cohort_fingerprint(spec)
    assert Job(redrawn, 0, "bitro", 0, settings, path).cached() is None
    # A changed library default changes the resolved model: the run is made again.
    monkeypatch.setitem(VARIANTS, "bitro", {"model": {"pooled_norm": not BiTroConfig.pooled_norm}})
    assert job.cached() is None
    monkeypatch.undo()
    assert job.cached() is not None
    baseline = Job(spec, 0, "oracle", 0, {}, tmp_path / "runs" / "oracle_fold0_s0")
    baseline.save(RunResult(np.zeros((3, 2)), 0.5))
    assert baseline.cached() is not None
    assert Job(redrawn, 0, "oracle", 0, {}, baseline.path).cached() is None


@pytest.mark.parametrize("path", sorted(Path(__file__).parents[1].glob("config/accuracy*.yaml")))
def test_every_model_an_accuracy_config_names_exists(path: Path) -> None:
    """A renamed variant (``bitro_norm`` became the default ``bitro``) must not leave a config naming a
    model that no longer exists: the benchmark would stop hours in, at that model's first run."""
    known = set(VARIANTS) | set(TRANSFERS) | set(DETERMINISTIC) | set(MLP_MODELS)
    config = yaml.safe_load(path.read_text())
    named = {m for models in config["models"].values() for m in models}
    named |= set(config.get("seeds_of", {})) | set(config.get("seeds_of_bulk", {}))
    curve = config.get("learning_curve") or {}
    named |= set(curve.get("models", [])) | set(curve.get("seeds_of", {}))
    if "transfer" in config:
        named.add(config["transfer"]["variant"])
    assert named <= known, sorted(named - known)
