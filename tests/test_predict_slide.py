"""``bitro predict-slide`` end to end on a small virtual slide, and the bundle verbs' command lines.

The bundle's model is untrained (random weights): what is tested is that one bare slide goes through
every per-sample step with the bundle's settings and encoder, and that the verbs refuse what they must.
"""

from __future__ import annotations

import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from bitro._hashing import file_sha256
from bitro.bundle import BundleFile, export_bundle, zip_path
from bitro.cli import main
from bitro.demo import write_virtual_slide
from bitro.features.efficientnet import packaged_weights
from bitro.features.reduce import fit_pca, write_basis
from bitro.genes.normalise import TargetTransform
from bitro.layout import SampleFile
from bitro.model.bitro import BiTro, BiTroConfig
from bitro.predict.bulk import bulk_table, read_bulk_table, write_bulk_table
from bitro.predict.slide import PredictionFile
from bitro.train.saved import save_model
from tiny_cohorts import TINY

REPO = Path(__file__).resolve().parents[1]
GENES = ["EPCAM", "PTPRC", "COL1A1", "ACTB"]
SETTINGS = {
    "tissue": {"mask_mpp": 8},
    "units": {"patch_size_um": 55, "min_tissue_fraction": 0.5},
    "stain": {"method": "macenko", "fit_mpp": 1.0, "n_tiles": 8},
    "segmentation": {"backend": "classical", "mpp": 0.5, "polygons": False},
    "features": {"batch_size": 256, "graph_k": 8},
}


def _description(sha256: str) -> dict:
    return {
        "encoder": "efficientnet_lite0",
        "weights_sha256": sha256,
        "dim": 1280,
        "mode": "crop",
        "crop_size": 48,
        "mpp": 0.5,
        "stain_method": "macenko",
        "image_size": 48,
        "pooling": None,
    }


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained cohort-scope spot model on a PCA basis of 1280-d EfficientNet embeddings."""
    folder = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    model = BiTro(BiTroConfig(n_genes=len(GENES), in_dim=8, **TINY))
    counts = np.random.default_rng(0).poisson(20, size=(30, len(GENES))).astype(np.float64)
    transform = TargetTransform.fit(counts, GENES, space="counts")
    write_basis(
        fit_pca(np.random.default_rng(1).normal(size=(200, 1280)), n_components=8), folder / "pca.npz"
    )
    metadata = {
        "genes": GENES,
        "transform": transform.to_dict(),
        "phenotypes": None,
        "features": {"scope": "cohort", "basis": str(folder / "pca.npz")},
    }
    save_model(model.eval(), metadata, folder)
    return folder


def _bundle(model_dir: Path, out: Path, sha256: str) -> Path:
    export_bundle(
        model_dir,
        out,
        basis=model_dir / "pca.npz",
        stain_reference=REPO / "resources" / "stain" / "reference.json",
        embeddings_description=_description(sha256),
        settings=SETTINGS,
        cohort={"name": "virtual", "level": "st", "format": "hest", "n_samples": 3},
    )
    return zip_path(out)


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("slide") / "virtual.tif"
    write_virtual_slide(path, n_cells=1200, seed=5, progress=False)
    return path


def test_predict_slide_runs_every_step_on_a_bare_slide(model_dir: Path, slide: Path, tmp_path: Path) -> None:
    bundle = _bundle(model_dir, tmp_path / "bundle", file_sha256(packaged_weights()))
    out = tmp_path / "pred"
    argv = ["predict-slide", "--bundle", str(bundle), "--slide", str(slide), "--out", str(out)]
    assert main([*argv, "--genes", "PTPRC,EPCAM", "--quiet", "--dpi", "40"]) == 0
    sample = out / PredictionFile.SAMPLE
    for name in (
        SampleFile.UNITS,
        SampleFile.CELLS,
        SampleFile.STAIN,
        SampleFile.EMBEDDINGS,
        SampleFile.GRAPH,
    ):
        assert (sample / name).is_file(), name
    description = json.loads((sample / SampleFile.EMBEDDINGS_DESCRIPTION).read_text())
    assert (description["encoder"], description["crop_size"], description["mpp"]) == (
        "efficientnet_lite0",
        48,
        0.5,
    )
    assert description["stain_method"] == "macenko"
    assert sorted(p.name for p in (out / PredictionFile.MAPS).iterdir()) == ["EPCAM.png", "PTPRC.png"]
    spots = ad.read_h5ad(out / PredictionFile.SPOTS)
    assert spots.uns["bitro"]["sample_id"] == "virtual" and np.isfinite(spots.X).any()
    profile = read_bulk_table(out / PredictionFile.PROFILE)
    assert profile["sample_id"].tolist() == ["virtual"] and list(profile.columns[-4:]) == GENES
    assert ad.read_h5ad(out / PredictionFile.CELLS).n_obs > 100


def test_predict_slide_refuses_other_encoder_weights_before_any_work(
    model_dir: Path, slide: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = _bundle(model_dir, tmp_path / "bundle", "c" * 64)
    out = tmp_path / "pred"
    assert main(["predict-slide", "--bundle", str(bundle), "--slide", str(slide), "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("bitro predict-slide: error: --encoder-weights: encoder weights sha256 is")
    assert "c" * 64 in error and not (out / PredictionFile.SAMPLE / SampleFile.TISSUE).exists()


def test_predict_sample_refuses_embeddings_made_otherwise(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = _bundle(model_dir, tmp_path / "bundle", "d" * 64)
    sample = tmp_path / "S1"
    sample.mkdir()
    (sample / SampleFile.EMBEDDINGS_DESCRIPTION).write_text(
        json.dumps(_description("d" * 64) | {"mpp": 0.25})
    )
    argv = ["predict-sample", "--bundle", str(bundle), "--sample-dir", str(sample), "--format", "hest"]
    argv += ["--root", str(tmp_path), "--sample", "S1", "--out-dir", str(tmp_path / "out")]
    assert main(argv) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith(f"bitro predict-sample: error: {sample / 'embeddings.json'}: crop µm/px")
    assert "0.25 here but 0.5 in the bundle" in error


def test_export_model_and_predictions_table_verbs(model_dir: Path, tmp_path: Path) -> None:
    description = tmp_path / "embeddings.json"
    description.write_text(json.dumps(_description("e" * 64)))
    out = tmp_path / "bundle"
    argv = ["export-model", "--model-dir", str(model_dir), "--basis", str(model_dir / "pca.npz")]
    argv += ["--stain-reference", str(REPO / "resources" / "stain" / "reference.json")]
    argv += ["--embeddings-description", str(description), "--settings-json", json.dumps(SETTINGS)]
    cohort = {"name": "virtual", "level": "st", "samples": ["A", "B"]}
    for sample, n_units, n_cells in (("A", 3, 10), ("B", 2, 7)):  # counted into the cohort summary
        (tmp_path / "samples" / sample).mkdir(parents=True)
        pd.DataFrame({"unit_id": range(n_units)}).to_parquet(tmp_path / "samples" / sample / "units.parquet")
        pd.DataFrame({"cell_id": range(n_cells)}).to_parquet(tmp_path / "samples" / sample / "cells.parquet")
    argv += ["--cohort-json", json.dumps(cohort), "--samples-dir", str(tmp_path / "samples")]
    argv += ["--out", str(out), "--no-zip"]
    assert main(argv) == 0
    record = json.loads((out / BundleFile.RECORD).read_text())
    assert record["settings"] == SETTINGS and record["encoder"]["weights_sha256"] == "e" * 64
    assert (record["cohort"]["n_units"], record["cohort"]["n_cells"]) == (5, 17)
    assert not zip_path(out).exists()
    profiles = []
    for sample in ("A", "B"):
        table = bulk_table({sample: np.ones(len(GENES))}, GENES, space="counts", trained_level="spot")
        profiles.append(str(write_bulk_table(table, tmp_path / f"{sample}.tsv")))
    assert main(["predictions-table", "--profiles", *profiles, "--out", str(tmp_path / "bulk.tsv")]) == 0
    assert read_bulk_table(tmp_path / "bulk.tsv")["sample_id"].tolist() == ["A", "B"]
