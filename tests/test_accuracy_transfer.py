"""Transfer in the accuracy benchmark: source-only pretraining, target-fold fine-tuning, shared genes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bitro.accuracy.bench import Job, restrict, transfer_settings, with_pretraining
from bitro.accuracy.report import _scores, shared_columns
from bitro.accuracy.runs import CohortSpec, cohort, folds, save_run, truth
from bitro.accuracy.transfer import pretrain_source, pretraining_split, run_transfer, weights_path
from bitro.errors import PatientOverlapError

ST = CohortSpec(level="st", n_patients=4, grid=(4, 4), n_folds=2, validation_fraction=0.34, seed=5)
BULK = CohortSpec(level="bulk", n_patients=8, grid=(3, 3), n_folds=2, validation_fraction=0.25, seed=5)
SETTINGS = {
    "model": {
        "dim": 16,
        "gat_heads": 2,
        "transformer_heads": 2,
        "position_dim": 4,
        "readout": "per_gene",
    },
    "training": {"lr": 3e-3, "batch_bags": 4, "max_steps": 6, "patience_steps": 6, "eval_every_steps": 3},
    "phenotypes_k": 3,
}
PRETRAIN = {"level": "bulk", "cohort": {}, "variant": "bitro", "bitro": SETTINGS}


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pretrain")
    path = root / "bulk_bitro_s0"
    result = pretrain_source(BULK, "bitro", 0, SETTINGS, root / "work", weights_path(path))
    save_run(result, path, PRETRAIN)
    return path


def test_pretraining_uses_the_whole_source_cohort_and_nothing_else(pretrained: Path) -> None:
    split = pretraining_split(BULK, 0)
    assert not split.test and set(split.train).isdisjoint(split.validation)
    assert sorted((*split.train, *split.validation)) == list(range(len(cohort(BULK).samples)))
    info = json.loads(pretrained.with_name(pretrained.name + ".json").read_text())["info"]
    used = [*info["samples"]["train"], *info["samples"]["validation"]]
    assert all(s.startswith("VBULK") for s in used) and len(used) == 8
    assert weights_path(pretrained).is_file()


@pytest.mark.parametrize("mode", ["lora", "full"])
def test_fine_tuning_sees_the_target_folds_training_and_validation_only(
    pretrained: Path, tmp_path: Path, mode: str
) -> None:
    fold = folds(ST)[0]
    settings = {"target": SETTINGS, "pretrain": PRETRAIN, "lora": {"r": 2, "alpha": 4}}
    result = run_transfer(ST, fold, f"from_bulk_{mode}", 0, settings, tmp_path / "work", pretrained)
    samples = cohort(ST).samples
    assert result.info["training_samples"] == [samples[i].sample_id for i in fold.train]
    assert result.info["validation_samples"] == [samples[i].sample_id for i in fold.validation]
    test_ids = {samples[i].sample_id for i in fold.test}
    assert test_ids.isdisjoint(result.info["pretrain"]["samples"])
    assert all(s.startswith("VBULK") for s in result.info["pretrain"]["samples"])
    # Scored on the same test units as the scratch models, every shared gene in the target's order.
    y, _ = truth(ST, fold)
    assert result.prediction.shape == y.shape and np.isfinite(result.prediction).all()
    assert result.info["genes"] == sorted(cohort(ST).genes) == sorted(cohort(BULK).genes)
    assert result.info["mode"] == mode
    assert (result.info["lora_adapters"] > 0) == (mode == "lora")


def test_pretraining_on_the_targets_own_patients_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "st_bitro_s0"
    result = pretrain_source(ST, "bitro", 0, SETTINGS, tmp_path / "work", weights_path(path))
    own = PRETRAIN | {"level": "st"}
    save_run(result, path, own)
    with pytest.raises(PatientOverlapError):
        settings = {"target": SETTINGS, "pretrain": own}
        run_transfer(ST, folds(ST)[0], "from_bulk_lora", 0, settings, tmp_path / "ft", path)


def test_scores_and_pairs_keep_to_the_genes_a_transfer_predicts() -> None:
    rng = np.random.default_rng(0)
    y = rng.normal(size=(40, 5)) + 3
    groups = np.repeat([0, 1], 20)
    prediction = y + rng.normal(scale=0.5, size=y.shape)
    partial = prediction.copy()
    partial[:, 2] = np.nan  # a target gene the source lacks
    keep = shared_columns(partial, prediction)
    assert keep.tolist() == [True, True, False, True, True]
    for level in ("st", "bulk"):
        full, part = _scores(level, y, groups, prediction), _scores(level, y, groups, partial)
        assert np.isnan(part["log1p"][2])
        assert np.allclose(np.delete(part["log1p"], 2), np.delete(full["log1p"], 2))
    subset = _scores("st", y[:, keep], groups, prediction[:, keep])["log1p_cp10k"]
    assert np.allclose(np.delete(_scores("st", y, groups, partial)["log1p_cp10k"], 2), subset)


def test_transfer_jobs_name_their_pretraining_and_keep_the_source_when_restricted(tmp_path: Path) -> None:
    config = {
        "seed": 0,
        "cohorts": {
            "st": {"n_patients": 4, "grid": [3, 3], "n_folds": 2, "validation_fraction": 0.3},
            "bulk": {"n_patients": 8, "grid": [3, 3], "n_folds": 2, "validation_fraction": 0.25},
        },
        "training": {"st": {"max_steps": 5}, "bulk": {"max_steps": 7}},
        "tuning": {"lr": [1e-3], "dropout": [0.1], "cohorts": ["st", "bulk"]},
        "models": {"st": ["bitro"], "bulk": ["from_st_lora"]},
        "transfer": {"variant": "bitro"},
    }
    chosen = {lv: {"bitro": {"lr": 1e-3, "dropout": 0.1}} for lv in ("st", "bulk")}
    restricted = restrict(config, ["bulk"])
    settings = transfer_settings(restricted, "bulk", "from_st_lora", chosen)
    assert settings["pretrain"]["level"] == "st" and settings["pretrain"]["variant"] == "bitro"
    assert settings["pretrain"]["bitro"]["training"]["max_steps"] == 5  # the source's budget
    assert settings["target"]["training"]["max_steps"] == 7  # the target's
    spec = CohortSpec(level="bulk", n_patients=8, grid=(3, 3), n_folds=2, validation_fraction=0.25)
    jobs = [
        Job(spec, k, "from_st_lora", 0, dict(settings), tmp_path / "runs" / "bulk" / f"x{k}") for k in (0, 1)
    ]
    needed = with_pretraining(jobs, restricted, tmp_path)
    assert len(needed) == 1 and needed[0].spec.level == "st" and needed[0].fold == -1
    assert needed[0].path == tmp_path / "runs" / "pretrain" / "st_bitro_s0"
    assert all(j.settings["pretrain_run"] == "st_bitro_s0" for j in jobs)
