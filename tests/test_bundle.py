"""Model bundles (issue 16): export, zip, load anywhere, refuse what does not fit, predict as the CV does.

A tiny cohort-scope ST cohort and a tiny bulk cohort are trained for a few steps (module fixtures); their
fold models are bundled and applied to a test sample, whose predictions must be the CV path's.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from bitro.bundle import BundleFile, check_features, check_genes, export_bundle, load_bundle, zip_path
from bitro.errors import BundleError, BundleMismatchError
from bitro.evaluate.predict import predict_fold
from bitro.features.phenotype import fit_phenotypes, write_phenotypes
from bitro.features.reduce import fit_cohort_pca, write_basis
from bitro.folds.splits import read_folds
from bitro.plot.pcc import pcc_table
from bitro.predict.apply import apply_bundle, predict_with_bundle
from bitro.predict.bulk import gather_profiles, read_bulk_table, write_bulk_table
from bitro.predict.slide import PredictionFile
from bitro.train.config import TrainConfig
from bitro.train.run import train_fold
from conftest import smooth_rgb, write_pyramid_tiff
from tiny_cohorts import TINY, UNIVERSE, write_cohort

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO / "resources" / "stain" / "reference.json"
CONFIG = TrainConfig(lr=3e-3, max_steps=3, patience_steps=50, eval_every_steps=1, batch_bags=16)
#: What the tiny cohorts' embeddings.json say they were made with.
DESCRIPTION = {
    "encoder": "efficientnet_lite0",
    "weights_sha256": "a" * 64,
    "mode": "crop",
    "crop_size": 48,
    "mpp": 0.5,
    "stain_method": "vahadane",
    "image_size": 48,
    "pooling": None,
    "dtype": "float32",
}
EMBED_DIM = 20
SETTINGS = {"units": {"patch_size_um": 55}, "crops": {"size": 48, "mpp": 0.5}}


@dataclass
class Trained:
    root: Path
    fold: str
    model: Path
    predictions: Path
    bundle: Path
    test: str


def _embed(root: Path) -> None:
    """Embeddings of every sample: its features through a fixed linear map, plus noise."""
    lift = np.random.default_rng(7).normal(size=(16, EMBED_DIM))
    for folder in sorted((root / "samples").iterdir()):
        x = np.load(folder / "features.npy") @ lift
        x += np.random.default_rng(len(x)).normal(0, 0.1, size=x.shape)
        np.save(folder / "embeddings.npy", x.astype(np.float32))
        describe = DESCRIPTION | {"dim": EMBED_DIM, "n_cells": len(x)}
        (folder / "embeddings.json").write_text(json.dumps(describe))


def _train(root: Path, tmp: Path, level: str) -> Trained:
    _embed(root)
    fold = read_folds(root / "folds.json").folds[0]
    samples = root / "samples"
    embeddings = {s: np.load(samples / s / "embeddings.npy") for s in fold.train}
    basis = fit_cohort_pca([embeddings[s] for s in fold.train], n_components=8, seed=0)
    write_basis(basis, root / fold.name / "pca.npz")
    features = {s: basis.transform(x) for s, x in embeddings.items()}
    write_phenotypes(fit_phenotypes(features, fold.train, k=2, seed=0), root / fold.name / "phenotypes_c.npz")
    model = root / fold.name / "model"
    train_fold(
        samples,
        root / "folds.json",
        fold.name,
        root / "genes.txt",
        model,
        model_config=TINY,
        train_config=CONFIG,
        scope="cohort",
        basis_path=root / fold.name / "pca.npz",
        phenotypes_path=root / fold.name / "phenotypes_c.npz",
        progress=False,
    )
    predictions = root / fold.name / "predictions"
    predict_fold(samples, model, root / "folds.json", fold.name, predictions)
    genes_table = pcc_table(predictions / "predictions.h5ad", fold=fold.name)
    genes_table.to_csv(root / "pcc_genes.tsv", sep="\t", index=False)
    bundle = export_bundle(
        model,
        tmp / f"bundle_{level}",
        basis=None,  # the path model.json records
        stain_reference=REFERENCE,
        embeddings_description=DESCRIPTION | {"dim": EMBED_DIM},
        settings=SETTINGS,
        cohort={
            "name": root.name,
            "level": level,
            "format": "hest",
            "n_samples": 3,
            "protocol": "test split",
        },
        cv_metrics=predictions / "metrics.tsv",
        gene_pcc_table=root / "pcc_genes.tsv",
    )
    return Trained(root, fold.name, model, predictions / "predictions.h5ad", bundle, fold.test[0])


@pytest.fixture(scope="module")
def st(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    tmp = tmp_path_factory.mktemp("st")
    patients = {"S1": "P1", "S2": "P2", "S3": "P3"}
    root = write_cohort(tmp / "st_cohort", "st", patients, UNIVERSE[:6], UNIVERSE[:6])
    return _train(root, tmp, "st")


@pytest.fixture(scope="module")
def bulk(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    tmp = tmp_path_factory.mktemp("bulk")
    patients = {"T1a": "Q1", "T1b": "Q1", "T2": "Q2", "T3": "Q3", "T4": "Q4", "T5": "Q5"}
    root = write_cohort(tmp / "bulk_cohort", "bulk", patients, UNIVERSE[2:], UNIVERSE[2:])
    return _train(root, tmp, "bulk")


@pytest.fixture(scope="module")
def slide_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An H&E-coloured slide at 0.5 µm/px under the tiny cohorts' units (they reach x 4.7k px, y 0.2k)."""
    path = tmp_path_factory.mktemp("slide") / "slide.tif"
    return write_pyramid_tiff(path, smooth_rgb(256, 4864), mpp=0.5, downsamples=(1, 4))


# ------------------------------------------------------------------------------------------ the files


def test_bundle_holds_its_files_with_their_sha256_and_no_pickle(st: Trained) -> None:
    record = json.loads((st.bundle / BundleFile.RECORD).read_text())
    names = {p.name for p in st.bundle.iterdir()}
    assert names == set(record["files"]) | {BundleFile.RECORD}
    assert {BundleFile.WEIGHTS, BundleFile.MODEL, BundleFile.PCA, BundleFile.STAIN_REFERENCE} <= names
    assert {BundleFile.CV_METRICS, BundleFile.CV_GENE_PCC, BundleFile.CARD} <= names
    assert record["format"] == "bitro-bundle/1" and record["level"] == "st"
    assert (record["trained_level"], record["space"], record["features"]["scope"]) == (
        "spot",
        "counts",
        "cohort",
    )
    assert record["encoder"]["name"] == "efficientnet_lite0" and record["encoder"]["mpp"] == 0.5
    assert record["cv"]["scores"][0]["n_folds"] == 1 and record["cv"]["protocol"] == "test split"
    assert set(record["cv"]["gene_pcc"]["pcc"]) == set(record["genes"])
    for npz in st.bundle.glob("*.npz"):
        with np.load(npz, allow_pickle=False) as data:
            [data[k] for k in data.files]
    with zipfile.ZipFile(zip_path(st.bundle)) as archive:
        members = sorted(archive.namelist())
    assert members == sorted(f"{st.bundle.name}/{n}" for n in names)
    assert not [m for m in members if m.endswith((".pkl", ".pickle", ".pt", ".pth"))]
    card = (st.bundle / BundleFile.CARD).read_text()
    assert "bitro predict-slide" in card and record["encoder"]["weights_sha256"] in card
    assert not list(st.bundle.parent.glob(".*tmp*"))  # no temporary folder left behind


def test_bundle_from_its_zip_elsewhere_predicts_exactly_as_the_folder(st: Trained, tmp_path: Path) -> None:
    moved = tmp_path / "elsewhere" / "model.zip"
    moved.parent.mkdir()
    shutil.copyfile(zip_path(st.bundle), moved)
    from_zip, from_folder = load_bundle(moved), load_bundle(st.bundle)
    assert from_zip.genes == from_folder.genes and from_zip.basis is not None
    sample = st.root / "samples" / st.test
    a = predict_with_bundle(from_zip, sample)
    b = predict_with_bundle(from_folder, sample)
    np.testing.assert_array_equal(a.prediction, b.prediction)
    np.testing.assert_array_equal(a.pseudo_cells, b.pseudo_cells)


@pytest.mark.parametrize("which", ["st", "bulk"])
def test_bundle_predicts_a_sample_as_the_cv_path_did(
    which: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    trained: Trained = request.getfixturevalue(which)
    sample = tmp_path / trained.test
    shutil.copytree(trained.root / "samples" / trained.test, sample)
    (sample / "targets.h5ad").unlink()  # a slide without expression
    result = predict_with_bundle(load_bundle(zip_path(trained.bundle)), sample)
    cv = ad.read_h5ad(trained.predictions)
    cv = cv[cv.obs["sample_id"] == trained.test]
    assert np.isnan(result.truth).all()
    np.testing.assert_array_equal(result.unit_ids, cv.obs["unit_id"].to_numpy())
    np.testing.assert_allclose(result.prediction, np.asarray(cv.X), rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------------ refusals


def test_a_tampered_file_is_refused_by_its_sha256(st: Trained, tmp_path: Path) -> None:
    copy = tmp_path / "bundle"
    shutil.copytree(st.bundle, copy)
    weights = copy / BundleFile.WEIGHTS
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=r"model\.safetensors: sha256 .* differs"):
        load_bundle(copy)
    (copy / BundleFile.PCA).unlink()
    shutil.copyfile(st.bundle / BundleFile.WEIGHTS, weights)
    with pytest.raises(BundleError, match=r"pca\.npz: is missing"):
        load_bundle(copy)
    with pytest.raises(BundleError, match="not a bundle"):
        load_bundle(st.root)


@pytest.mark.parametrize(
    ("key", "value", "setting"),
    [
        ("weights_sha256", "b" * 64, "encoder weights sha256"),
        ("mpp", 0.25, r"crop µm/px \(crops.mpp\)"),
        ("encoder", "dinov3_vitl16", r"encoder \(features.encoder\)"),
        ("crop_size", 64, r"crop size in px \(crops.size\)"),
        ("mode", "tile-token", r"embedding mode \(features.mode\)"),
    ],
)
def test_each_feature_mismatch_is_refused_naming_its_setting(
    st: Trained, key: str, value: object, setting: str
) -> None:
    bundle = load_bundle(st.bundle)
    description = DESCRIPTION | {"dim": EMBED_DIM}
    check_features(bundle, description, source="embeddings.json")
    with pytest.raises(
        BundleMismatchError, match=rf"^embeddings.json: {setting} is {value!r} here but"
    ) as err:
        check_features(bundle, description | {key: value}, source="embeddings.json")
    assert str(err.value).count(" here but ") == 1


def test_other_genes_are_refused(st: Trained) -> None:
    bundle = load_bundle(st.bundle)
    check_genes(bundle, bundle.genes, source="genes.txt")
    with pytest.raises(BundleMismatchError, match=r"genes.txt: genes differ .* 1 missing \(F6\)"):
        check_genes(bundle, [*bundle.genes[:-1], "ZZZ"], source="genes.txt")
    with pytest.raises(BundleMismatchError, match="another order"):
        check_genes(bundle, bundle.genes[::-1], source="genes.txt")


# ------------------------------------------------------------------------------------------ outputs


def test_applying_a_spot_bundle_writes_the_slides_files_and_profile(
    st: Trained, slide_file: Path, tmp_path: Path
) -> None:
    bundle = load_bundle(st.bundle)
    out = tmp_path / "pred"
    written = apply_bundle(
        bundle, st.root / "samples" / st.test, out, slide=slide_file, mpp=0.5, n_genes=2, dpi=40
    )
    assert sorted(p.name for p in (out / PredictionFile.MAPS).iterdir()) == sorted(
        f"{g}.png" for g in bundle.best_genes(2)
    )
    spots = ad.read_h5ad(out / PredictionFile.SPOTS)
    assert spots.uns["bitro"]["trained_level"] == "spot"
    assert spots.uns["bitro"]["model"]["encoder_sha256"] == "a" * 64
    profile = read_bulk_table(out / PredictionFile.PROFILE)
    assert profile["sample_id"].tolist() == [st.test] and profile["n_units"].iloc[0] == written.n_units
    np.testing.assert_allclose(profile[bundle.genes].to_numpy()[0], np.nansum(spots.X, axis=0), rtol=1e-5)


def test_a_bulk_bundle_maps_patches_that_sum_to_the_slide(
    bulk: Trained, slide_file: Path, tmp_path: Path
) -> None:
    bundle = load_bundle(bulk.bundle)
    out = tmp_path / "pred"
    sample = bulk.root / "samples" / bulk.test
    written = apply_bundle(bundle, sample, out, slide=slide_file, mpp=0.5, genes=bundle.genes[:1], dpi=40)
    assert [p.name for p in (out / PredictionFile.MAPS).iterdir()] == [f"{bundle.genes[0]}.png"]
    spots = ad.read_h5ad(out / PredictionFile.SPOTS)
    assert spots.uns["bitro"]["trained_level"] == "bulk" and spots.n_obs > 1
    slide_row = predict_with_bundle(bundle, sample).prediction[0]
    np.testing.assert_allclose(written.profile, slide_row, rtol=1e-6)
    np.testing.assert_allclose(np.nansum(spots.X, axis=0), slide_row, rtol=1e-4)
    profile = read_bulk_table(out / PredictionFile.PROFILE)
    np.testing.assert_allclose(profile[bundle.genes].to_numpy()[0], slide_row, rtol=1e-6)


def test_profiles_gather_into_one_row_per_slide(tmp_path: Path) -> None:
    from bitro.predict.bulk import bulk_table

    paths = []
    for i, sample in enumerate(["A", "B", "C"]):
        table = bulk_table({sample: np.array([i, 2.0 * i])}, ["G1", "G2"], space="tpm", trained_level="bulk")
        paths.append(write_bulk_table(table, tmp_path / f"{sample}.tsv"))
    table = gather_profiles(paths)
    assert table["sample_id"].tolist() == ["A", "B", "C"]
    np.testing.assert_array_equal(table[["G1", "G2"]].to_numpy(), [[0, 0], [1, 2], [2, 4]])
    other = bulk_table({"D": np.array([1.0])}, ["G9"], space="tpm", trained_level="bulk")
    with pytest.raises(Exception, match="other genes"):
        gather_profiles([*paths, write_bulk_table(other, tmp_path / "D.tsv")])
    with pytest.raises(Exception, match="given twice"):
        gather_profiles([paths[0], paths[0]])
    assert isinstance(table, pd.DataFrame)


def test_best_genes_follow_the_cv_pcc(st: Trained) -> None:
    bundle = load_bundle(st.bundle)
    pcc = bundle.gene_pcc
    assert pcc is not None
    ranked = bundle.best_genes(len(bundle.genes))
    values = [pcc[g] if pcc[g] is not None else -np.inf for g in ranked]
    assert values == sorted(values, reverse=True)
    assert sorted(ranked) == sorted(bundle.genes)
