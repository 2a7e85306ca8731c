"""The demo cohorts read back through bitro.io agree with the truth the generator planted."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from bitro.demo import demo_sample_ids, preset
from bitro.io import read_hest_sample, read_sample, read_tcga_cohort, read_xenium_section
from bitro.preprocess.targets import make_targets
from bitro.preprocess.units import make_units

ROOT = Path(__file__).resolve().parents[1]


def test_committed_sample_sheets_match_the_default_demo() -> None:
    ids = demo_sample_ids(preset("default"))
    for cohort in ("hest", "tcga", "xenium"):
        name = {"hest": "demo_st", "tcga": "demo_bulk", "xenium": "demo_xenium"}[cohort]
        sheet = pd.read_csv(ROOT / "config" / "samples" / f"{name}.tsv", sep="\t")
        assert sheet["sample_id"].tolist() == ids[cohort]
    bulk = pd.read_csv(ROOT / "config" / "samples" / "demo_bulk.tsv", sep="\t")
    assert (bulk["patient_id"] == bulk["sample_id"].str[:12]).all()


def test_hest_demo_reads_with_segmentation_close_to_truth(small_demo: tuple[Path, dict]) -> None:
    root, summary = small_demo
    for sample_id in summary["ids"]["hest"]:
        sample = read_hest_sample(root / "hest", sample_id)
        assert sample.mpp == pytest.approx(0.5) and sample.spot_diameter_um == 55.0
        assert sample.patient_id == "P1"
        truth = ad.read_h5ad(root / "hest" / "truth" / f"{sample_id}_cells.h5ad")
        assert sample.cells is not None
        # CellViT-like segmentation: 5–12 % missed, ~3 % spurious.
        assert 0.80 < len(sample.cells) / truth.n_obs < 1.05
        in_spot = truth.obs["spot"].astype(str) != ""
        spots = truth.obs.loc[in_spot, "spot"].astype(str)
        thinned = pd.DataFrame(truth[in_spot.to_numpy()].layers["thinned"].toarray(), index=spots.to_numpy())
        per_spot = thinned.groupby(level=0).sum()
        counts = sample.expression[per_spot.index].X.toarray()
        assert np.array_equal(counts, per_spot.to_numpy())


def test_tcga_demo_pairs_slides_with_their_sample(small_demo: tuple[Path, dict]) -> None:
    root, summary = small_demo
    samples = read_tcga_cohort(root / "tcga")
    assert sorted(s.sample_id for s in samples) == sorted(summary["ids"]["tcga"])
    by_patient: dict[str, list] = {}
    for sample in samples:
        assert sample.kind == "bulk" and sample.expression.n_obs == 1
        assert sample.expression.X.sum() == pytest.approx(1e6, rel=1e-5)
        by_patient.setdefault(sample.patient_id, []).append(sample)
    two = [group for group in by_patient.values() if len(group) == 2]
    assert len(two) == 1, "the small preset has one patient with two slides"
    first, second = two[0]
    assert np.array_equal(first.expression.X, second.expression.X)


def test_xenium_demo_cells_land_on_true_nuclei(small_demo: tuple[Path, dict]) -> None:
    root, summary = small_demo
    section = summary["ids"]["xenium"][0]
    sample = read_xenium_section(root / "xenium" / section)
    truth = ad.read_h5ad(root / "xenium" / section / "truth" / f"{section}_cells.h5ad")
    assert sample.expression.n_obs == truth.n_obs
    xy = np.asarray(sample.expression.obsm["spatial"])
    true_xy = truth.obs[["x_px", "y_px"]].to_numpy()
    assert np.abs(xy - true_xy).max() < 0.01
    assert sample.mpp == pytest.approx(0.5, rel=0.02)


@pytest.mark.parametrize("layout", ["hest", "tcga", "xenium"])
def test_units_and_targets_on_demo(small_demo: tuple[Path, dict], layout: str) -> None:
    root, summary = small_demo
    sample_id = summary["ids"][layout][0]
    sample = read_sample(layout, root / layout, sample_id)
    units = make_units(sample, patch_size_um=55.0)
    targets = make_targets(sample, units)
    with sample.open_slide() as slide:
        w, h = slide.dimensions
    assert ((units["x_px"] >= 0) & (units["x_px"] <= w) & (units["y_px"] >= 0) & (units["y_px"] <= h)).all()
    assert units["in_tissue"].mean() > 0.5
    if layout == "hest":
        assert targets.n_obs == sample.expression.n_obs
        flags = sample.expression.obs["in_tissue"].astype(bool)
        assert units["in_tissue"].tolist() == flags[units["barcode"].astype(str)].tolist()
        # Spots the HEST table marks out of tissue hold few cells (only at the tissue edge).
        totals = np.asarray(targets.X.sum(axis=1)).ravel()
        inside = units["in_tissue"].to_numpy()
        assert totals[~inside].mean() < 0.2 * totals[inside].mean()
    elif layout == "xenium":
        # Patches tile the slide up to its last whole patch: nearly every cell falls in exactly one.
        assert 0.9 * sample.expression.n_obs < targets.obs["n_cells"].sum() <= sample.expression.n_obs
        assert targets.X.sum() <= sample.expression.X.sum()
    else:
        assert targets.n_obs == 1 and targets.uns["bitro"]["space"] == "tpm"
