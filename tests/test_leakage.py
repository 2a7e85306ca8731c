"""Leakage: nothing a fold fits may depend on its test samples (docs/pitfalls.md)."""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import torch

from bitro.cli import main
from bitro.features.phenotype import read_phenotypes
from bitro.features.reduce import read_basis
from bitro.folds.splits import in_strips, leave_one_out, read_folds, write_folds
from bitro.preprocess.cells import read_cells
from bitro.preprocess.units import read_units
from bitro.train.config import TrainConfig
from bitro.train.run import train_fold
from bitro.train.saved import load_model
from tiny_cohorts import UNIVERSE, write_cohort

PATIENTS = {"S1": "P1", "S2": "P1", "S3": "P2", "S4": "P3", "S5": "P4"}


def _fit_fold(root: Path, out: Path) -> None:
    for sample in PATIENTS:  # cohort PCA reads embeddings: use the features as stand-ins
        folder = root / "samples" / sample
        features = np.load(folder / "features.npy")
        np.save(folder / "embeddings.npy", features.astype(np.float16))
        describe = {"encoder": "test", "n_cells": len(features), "dim": features.shape[1]}
        (folder / "embeddings.json").write_text(json.dumps(describe))
    args = ["--folds", str(root / "folds.json"), "--fold", "fold0", "--samples-dir", str(root / "samples")]
    assert main(["cohort-pca", *args, "--n-components", "8", "--out", str(out / "pca.npz")]) == 0
    assert main(["phenotypes", *args, "--k", "3", "--out", str(out / "phenotypes.npz")]) == 0
    _train_fold0(root, out, phenotypes_path=out / "phenotypes.npz")


def _train_fold0(root: Path, out: Path, **options: object) -> None:
    """A tiny BiTro trained for 20 steps on fold0 of the cohort at ``root``."""
    train_fold(
        root / "samples",
        root / "folds.json",
        "fold0",
        root / "genes.txt",
        out,
        model_config={"dim": 16, "gat_heads": 2, "transformer_heads": 2, "position_dim": 4},
        train_config=TrainConfig(max_steps=20, eval_every_steps=1, batch_bags=8, lr=1e-3),
        progress=False,
        **options,
    )


def _perturb_test_sample(root: Path, sample: str) -> None:
    folder = root / "samples" / sample
    targets = ad.read_h5ad(folder / "targets.h5ad")
    targets.X = np.asarray(targets.X) * 7 + 3
    targets.write_h5ad(folder / "targets.h5ad")
    features = np.load(folder / "features.npy")
    np.save(folder / "features.npy", features[::-1] * -2.0)
    np.save(folder / "embeddings.npy", (features[::-1] * -2.0).astype(np.float16))


def test_nothing_fitted_on_a_fold_depends_on_its_test_samples(tmp_path: Path) -> None:
    root = write_cohort(tmp_path / "st", "st", PATIENTS, UNIVERSE[:6], UNIVERSE[:6])
    fold = read_folds(root / "folds.json").fold("fold0")
    test_patients = {PATIENTS[s] for s in fold.test}
    assert not test_patients & {PATIENTS[s] for s in fold.train + fold.validation}
    _fit_fold(root, tmp_path / "before")
    for sample in fold.test:
        _perturb_test_sample(root, sample)
    _fit_fold(root, tmp_path / "after")

    before, meta_before = load_model(tmp_path / "before")
    after, meta_after = load_model(tmp_path / "after")
    for name, weight in before.state_dict().items():
        assert torch.equal(weight, after.state_dict()[name]), name
    assert meta_before["transform"] == meta_after["transform"]
    assert meta_before["validation"] == meta_after["validation"]
    for name in ("pca.npz", "phenotypes.npz"):
        reader = read_basis if name == "pca.npz" else read_phenotypes
        a, b = reader(tmp_path / "before" / name), reader(tmp_path / "after" / name)
        assert set(getattr(a, "train_samples", fold.train)) == set(fold.train)
        for field in ("mean", "components", "centroids"):
            if hasattr(a, field):
                np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    # The statistics come from the training units only: their count is the training bags'.
    assert meta_before["transform"]["params"]["n_units"] == sum(
        int((np.diff(np.load(root / "samples" / s / "graph.npz")["cell_offsets"]) > 0).sum())
        for s in fold.train
    )


def test_a_two_group_cohort_validates_on_a_strip_and_never_on_its_test_sample(tmp_path: Path) -> None:
    root = write_cohort(
        tmp_path / "st", "st", {"S1": "P1", "S2": "P2", "S3": "P3"}, UNIVERSE[:6], UNIVERSE[:6]
    )
    extents = {}
    for sample in ("S1", "S2"):
        x = read_cells(root / "samples" / sample / "cells.parquet", geometry=False)["x_um"].to_numpy()
        extents[sample] = (float(x.min()), float(np.nextafter(x.max(), np.inf)))
    write_folds(leave_one_out("st", ["S1", "S2"], extents=extents), root / "folds.json")
    fold = read_folds(root / "folds.json").fold("fold0")
    assert fold.test == ["S1"] and fold.train == fold.validation == ["S2"]

    def fit(out: Path) -> tuple:
        _train_fold0(root, out)
        return load_model(out)

    before, meta = fit(tmp_path / "before")
    # Training and validation units are the training section's units wholly inside their own strips.
    units = read_units(root / "samples" / "S2" / "units.parquet")
    left = units["x_um"].to_numpy() - units["diameter_um"].to_numpy() / 2
    n_train = int(in_strips(left, fold.ranges("S2", "train"), width_um=55.0).sum())
    n_validation = int(in_strips(left, fold.ranges("S2", "validation"), width_um=55.0).sum())
    assert 0 < n_validation < n_train < len(units) - n_validation + 1
    assert meta["transform"]["params"]["n_units"] == n_train
    assert meta["validation"]["n_units"] == n_validation
    _perturb_test_sample(root, "S1")
    after, meta_after = fit(tmp_path / "after")
    for name, weight in before.state_dict().items():
        assert torch.equal(weight, after.state_dict()[name]), name
    assert meta["validation"] == meta_after["validation"]
