"""Tests for bitro.io.xenium."""

from __future__ import annotations

import json
import math
import re

import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from bitro.errors import InputError, MissingInputError
from bitro.io import read_sample
from bitro.io.xenium import read_10x_h5, read_xenium_section

PIXEL_SIZE = 0.2125
HE_MPP = 0.5
WIDTH, HEIGHT = 600, 400
THETA = math.radians(30.0)
SCALE = HE_MPP / PIXEL_SIZE  # morphology px per H&E px
TX, TY = 900.0, 150.0
ALIGNMENT = np.array(
    [
        [SCALE * math.cos(THETA), -SCALE * math.sin(THETA), TX],
        [SCALE * math.sin(THETA), SCALE * math.cos(THETA), TY],
        [0.0, 0.0, 1.0],
    ]
)
GENES = ["EPCAM", "KRT8", "PTPRC", "COL1A1"]
CONTROLS = [
    ("NegControlProbe_00042", "Negative Control Probe"),
    ("UnassignedCodeword_0007", "Unassigned Codeword"),
]


def _he_to_um(xy_px: np.ndarray) -> np.ndarray:
    homog = np.column_stack([xy_px, np.ones(len(xy_px))])
    return (homog @ ALIGNMENT.T)[:, :2] * PIXEL_SIZE


def _um_to_he_by_hand(x_um: float, y_um: float) -> tuple[float, float]:
    """Invert scale · rotation + translation step by step."""
    dx, dy = x_um / PIXEL_SIZE - TX, y_um / PIXEL_SIZE - TY
    c, s = math.cos(THETA), math.sin(THETA)
    return (c * dx + s * dy) / SCALE, (-s * dx + c * dy) / SCALE


def _write_h5(path, counts: np.ndarray, barcodes: list[str], names: list[str], types: list[str]):
    """Write a 10x feature-barcode matrix; ``counts`` is features × cells."""
    csc = sp.csc_matrix(counts.T).T.tocsc()  # features × cells, columns = cells
    with h5py.File(path, "w") as handle:
        matrix = handle.create_group("matrix")
        matrix.create_dataset("barcodes", data=np.array(barcodes, dtype="S"))
        matrix.create_dataset("data", data=csc.data.astype(np.int32))
        matrix.create_dataset("indices", data=csc.indices.astype(np.int64))
        matrix.create_dataset("indptr", data=csc.indptr.astype(np.int64))
        matrix.create_dataset("shape", data=np.array(counts.shape, dtype=np.int32))
        features = matrix.create_group("features")
        features.create_dataset("id", data=np.array([f"ID_{n}" for n in names], dtype="S"))
        features.create_dataset("name", data=np.array(names, dtype="S"))
        features.create_dataset("feature_type", data=np.array(types, dtype="S"))
        features.create_dataset("genome", data=np.array(["Unknown"] * len(names), dtype="S"))
        features.create_dataset("_all_tag_keys", data=np.array(["genome"], dtype="S"))


@pytest.fixture
def xenium(tmp_path, write_slide, rgb_image):
    def build(*, he_mpp=HE_MPP, cells_px=None, gene_names=None, drop_cell=None, negative=False):
        root = tmp_path / "section1"
        root.mkdir(exist_ok=True)
        rng = np.random.default_rng(5)
        if cells_px is None:
            cells_px = np.column_stack([rng.uniform(30, WIDTH - 30, 9), rng.uniform(30, HEIGHT - 30, 9)])
        n = len(cells_px)
        ids = [f"cell{i:02d}-1" for i in range(n)]
        xy_um = _he_to_um(cells_px)
        cells = pd.DataFrame(
            {
                "cell_id": ids,
                "x_centroid": xy_um[:, 0],
                "y_centroid": xy_um[:, 1],
                "transcript_counts": rng.integers(10, 100, n),
                "control_probe_counts": 0,
                "total_counts": rng.integers(10, 100, n),
                "cell_area": rng.uniform(30, 80, n),
                "nucleus_area": rng.uniform(10, 30, n),
            }
        )
        # cells.parquet in reverse order, matrix in forward order: the reader must align by cell_id
        table = cells.iloc[::-1]
        if drop_cell is not None:
            table = table[table["cell_id"] != ids[drop_cell]]
        table.to_parquet(root / "cells.parquet", index=False)
        square = np.array([[-3, -3], [3, -3], [3, 3], [-3, 3], [-3, -3]], dtype=float)
        verts = [(cid, x + dx, y + dy) for cid, (x, y) in zip(ids, xy_um, strict=True) for dx, dy in square]
        pd.DataFrame(verts, columns=["cell_id", "vertex_x", "vertex_y"]).to_parquet(
            root / "cell_boundaries.parquet", index=False
        )
        names = (gene_names or GENES) + [c[0] for c in CONTROLS]
        types = ["Gene Expression"] * len(GENES) + [c[1] for c in CONTROLS]
        counts = rng.poisson(2, (len(names), n)).astype(np.int64)
        if negative:
            counts[1, 2] = -4
        _write_h5(root / "cell_feature_matrix.h5", counts, ids, names, types)
        experiment = {"pixel_size": PIXEL_SIZE, "run_name": "demo", "region_name": "section1"}
        (root / "experiment.xenium").write_text(json.dumps(experiment))
        np.savetxt(root / "he_imagealignment.csv", ALIGNMENT, delimiter=",")
        image = rgb_image(HEIGHT, WIDTH)
        write_slide(root / "he_image.ome.tif", image, mpp=he_mpp, downsamples=(1, 2), ome=True)
        return root, cells_px, counts, ids

    return build


def test_reads_section_and_round_trips_coordinates(xenium):
    root, cells_px, counts, ids = xenium()
    sample = read_xenium_section(root)
    assert sample.kind == "xenium"
    assert sample.sample_id == "section1" and sample.patient_id == "section1"
    assert sample.mpp == pytest.approx(HE_MPP)
    assert sample.metadata["alignment_mpp"] == pytest.approx(HE_MPP)
    adata = sample.expression
    assert adata.obs_names.tolist() == ids
    assert adata.var_names.tolist() == GENES
    np.testing.assert_array_equal(adata.X.toarray(), counts[: len(GENES)].T)
    xy = adata.obsm["spatial"]
    np.testing.assert_allclose(xy, cells_px, atol=1e-6)
    for i in range(len(ids)):
        by_hand = _um_to_he_by_hand(adata.obs["x_um"].iloc[i], adata.obs["y_um"].iloc[i])
        np.testing.assert_allclose(xy[i], by_hand, atol=1e-9)
    assert "transcript_counts" in adata.obs.columns

    cells = sample.cells
    assert cells["cell_id"].tolist() == ids
    np.testing.assert_allclose(cells[["x_px", "y_px"]].to_numpy(), cells_px, atol=1e-6)
    np.testing.assert_allclose(cells["x_um"], cells["x_px"] * HE_MPP)
    assert (cells["source"] == "xenium").all()
    first = cells["geometry"].iloc[0]
    corners_um = [(adata.obs["x_um"].iloc[0] + dx, adata.obs["y_um"].iloc[0] + dy) for dx, dy in [(-3, -3)]]
    np.testing.assert_allclose(first.exterior.coords[0], _um_to_he_by_hand(*corners_um[0]), atol=1e-9)
    np.testing.assert_allclose((first.centroid.x, first.centroid.y), cells_px[0], atol=1e-6)
    assert first.area == pytest.approx((6.0 / HE_MPP) ** 2)  # a 6 µm square in 0.5 µm px


def test_matrix_matches_scanpy(xenium):
    sc = pytest.importorskip("scanpy")
    root, *_ = xenium()
    ours, barcodes, features = read_10x_h5(root / "cell_feature_matrix.h5")
    theirs = sc.read_10x_h5(root / "cell_feature_matrix.h5")  # gene-expression rows only
    genes = (features["feature_type"] == "Gene Expression").to_numpy()
    assert theirs.obs_names.tolist() == barcodes
    assert theirs.var_names.tolist() == features.loc[genes, "name"].tolist()
    np.testing.assert_array_equal(ours[:, genes].toarray(), theirs.X.toarray())
    sample = read_xenium_section(root)
    np.testing.assert_array_equal(sample.expression.X.toarray(), theirs.X.toarray())
    assert sample.expression.var["gene_ids"].tolist() == theirs.var["gene_ids"].tolist()


def test_mpp_from_alignment_and_override(xenium):
    root, *_ = xenium(he_mpp=None)
    sample = read_xenium_section(root, sample_id="S1")
    assert sample.sample_id == "S1"
    assert sample.mpp == pytest.approx(HE_MPP)
    assert sample.metadata["mpp_source"] == "he_imagealignment.csv"
    assert read_sample("xenium", root, "S1", mpp=0.4).mpp == pytest.approx(0.4)


def test_matrix_cell_missing_from_cells_table(xenium):
    root, *_ = xenium(drop_cell=4)
    with pytest.raises(InputError, match=re.escape("cell_feature_matrix.h5")) as info:
        read_xenium_section(root)
    assert "cell04-1" in str(info.value) and "cells.parquet" in str(info.value)


def test_duplicated_feature_names(xenium):
    root, *_ = xenium(gene_names=["EPCAM", "KRT8", "EPCAM", "COL1A1"])
    with pytest.raises(InputError, match=re.escape("cell_feature_matrix.h5")) as info:
        read_xenium_section(root)
    assert "duplicated feature names" in str(info.value)


def test_negative_counts(xenium):
    root, *_ = xenium(negative=True)
    with pytest.raises(InputError, match=re.escape("cell_feature_matrix.h5")) as info:
        read_xenium_section(root)
    assert "negative" in str(info.value)


def test_cells_outside_image(xenium):
    cells_px = np.array([[100.0, 100.0], [WIDTH + 40.0, 200.0], [300.0, 300.0]])
    root, *_ = xenium(cells_px=cells_px)
    with pytest.raises(InputError, match=re.escape("cells.parquet")) as info:
        read_xenium_section(root)
    assert "outside the image" in str(info.value) and "cell01-1" in str(info.value)


def test_missing_files(xenium):
    root, *_ = xenium()
    (root / "he_imagealignment.csv").unlink()
    with pytest.raises(MissingInputError, match=re.escape("he_imagealignment.csv")):
        read_xenium_section(root)
    root, *_ = xenium()
    (root / "cells.parquet").unlink()
    with pytest.raises(MissingInputError, match=re.escape("cells.parquet")):
        read_xenium_section(root)


def test_bad_alignment(xenium):
    root, *_ = xenium()
    (root / "he_imagealignment.csv").write_text("1,0\n0,1\n")
    with pytest.raises(InputError, match=re.escape("he_imagealignment.csv")):
        read_xenium_section(root)
