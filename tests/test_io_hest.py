"""Tests for bitro.io.hest."""

from __future__ import annotations

import json
import re
import zipfile

import anndata as ad
import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from shapely.geometry import Point, mapping

from bitro.errors import InputError, MissingInputError
from bitro.io import read_sample
from bitro.io.hest import read_hest_sample

SID = "TENX99"
SIZE = 512


def _adata(n_spots: int = 12, genes: list[str] | None = None) -> ad.AnnData:
    rng = np.random.default_rng(0)
    genes = genes or ["EPCAM", "KRT8", "PTPRC", "COL1A1", "ACTB"]
    counts = sp.csr_matrix(rng.poisson(3, (n_spots, len(genes))).astype(np.float32))
    obs = pd.DataFrame(
        {
            "array_row": np.arange(n_spots),
            "array_col": np.arange(n_spots),
            "in_tissue": 1,
        },
        index=[f"spot{i:03d}" for i in range(n_spots)],
    )
    xy = np.column_stack([np.linspace(40, 470, n_spots), np.linspace(60, 450, n_spots)])
    obs["pxl_col_in_fullres"], obs["pxl_row_in_fullres"] = xy[:, 0], xy[:, 1]
    var = pd.DataFrame({"gene_ids": [f"ENSG{i:011d}" for i in range(len(genes))]}, index=genes)
    adata = ad.AnnData(X=counts, obs=obs, var=var)
    adata.obsm["spatial"] = xy
    return adata


def _metadata(**overrides) -> dict:
    meta = {
        "pixel_size_um_estimated": 0.55,
        "pixel_size_um_embedded": 0.5,
        "spot_diameter": 55.0,
        "inter_spot_dist": 100.0,
        "st_technology": "Visium",
        "species": "Homo sapiens",
        "organ": "Bowel",
        "oncotree_code": "COAD",
        "patient": "P7",
    }
    meta.update(overrides)
    return {k: v for k, v in meta.items() if v is not None}


def _cells() -> gpd.GeoDataFrame:
    polys = [Point(100 + 30 * i, 200).buffer(6, quad_segs=3) for i in range(5)]
    classes = ["Neoplastic", "Inflammatory", "Neoplastic", "Connective", "Dead"]
    return gpd.GeoDataFrame({"cell_id": range(5), "class": classes}, geometry=polys)


@pytest.fixture
def hest_root(tmp_path, write_slide, rgb_image):
    def build(*, adata=None, metadata=None, slide_mpp=0.5, parquet=True, geojson=False):
        root = tmp_path / "hest"
        for sub in ("st", "wsis", "metadata", "cellvit_seg"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        write_slide(root / "wsis" / f"{SID}.tif", rgb_image(SIZE, SIZE), mpp=slide_mpp, downsamples=(1, 2))
        (adata if adata is not None else _adata()).write_h5ad(root / "st" / f"{SID}.h5ad")
        meta = metadata if metadata is not None else _metadata()
        (root / "metadata" / f"{SID}.json").write_text(json.dumps(meta))
        cells = _cells()
        if parquet:
            cells.to_parquet(root / "cellvit_seg" / f"{SID}_cellvit_seg.parquet")
        if geojson:
            features = [
                {"type": "Feature", "geometry": mapping(g), "properties": {"classification": {"name": c}}}
                for g, c in zip(cells.geometry, cells["class"], strict=True)
            ]
            text = json.dumps({"type": "FeatureCollection", "features": features})
            with zipfile.ZipFile(root / "cellvit_seg" / f"{SID}_cellvit_seg.geojson.zip", "w") as archive:
                archive.writestr(f"{SID}_cellvit_seg.geojson", text)
        return root

    return build


def test_reads_sample(hest_root):
    root = hest_root()
    sample = read_hest_sample(root, SID)
    assert sample.kind == "st"
    assert sample.sample_id == SID
    assert sample.patient_id == "P7"
    assert sample.mpp == pytest.approx(0.55)  # estimated wins over embedded and slide
    assert sample.spot_diameter_um == pytest.approx(55.0)
    assert sample.slide_path == root / "wsis" / f"{SID}.tif"
    assert sample.metadata["organ"] == "Bowel"
    assert sample.expression.shape == (12, 5)
    assert sample.expression.obsm["spatial"].shape == (12, 2)
    assert sample.expression.obsm["spatial"].dtype == np.float64
    assert sample.cells is not None and len(sample.cells) == 5
    assert sample.cells["source"].eq("cellvit").all()
    assert sample.cells.loc[0, "x_um"] == pytest.approx(100 * 0.55, rel=1e-3)
    with sample.open_slide() as slide:
        assert slide.mpp == pytest.approx(0.55)


def test_read_sample_dispatch(hest_root):
    root = hest_root()
    assert read_sample("hest", root, SID).kind == "st"
    assert read_sample("st", root, SID, mpp=0.3).mpp == pytest.approx(0.3)
    with pytest.raises(ValueError, match="unknown sample kind"):
        read_sample("visium-hd", root, SID)


def test_pixel_size_precedence(hest_root):
    root = hest_root(metadata=_metadata(pixel_size_um_estimated=None))
    assert read_hest_sample(root, SID, cells="none").mpp == pytest.approx(0.5)
    root = hest_root(metadata=_metadata(pixel_size_um_estimated=None, pixel_size_um_embedded=None))
    assert read_hest_sample(root, SID, cells="none").mpp == pytest.approx(0.5)  # the slide's own
    root = hest_root(metadata=_metadata(pixel_size_um_estimated=None, pixel_size_um_embedded=0.61))
    assert read_hest_sample(root, SID, cells="none").mpp == pytest.approx(0.61)
    assert read_hest_sample(root, SID, mpp=0.7, cells="none").mpp == pytest.approx(0.7)


def test_no_pixel_size_anywhere_raises(hest_root):
    root = hest_root(
        metadata=_metadata(pixel_size_um_estimated=None, pixel_size_um_embedded=None), slide_mpp=None
    )
    with pytest.raises(InputError, match=re.escape(f"{SID}.tif")):
        read_hest_sample(root, SID)
    assert read_hest_sample(root, SID, mpp=0.5).mpp == pytest.approx(0.5)


def test_cells_choice(hest_root):
    root = hest_root(parquet=False, geojson=True)
    auto = read_hest_sample(root, SID)
    assert auto.cells is not None and len(auto.cells) == 5
    assert read_hest_sample(root, SID, cells="none").cells is None
    with pytest.raises(MissingInputError, match=re.escape("cellvit_seg.parquet")):
        read_hest_sample(root, SID, cells="parquet")
    root = hest_root(parquet=True, geojson=True)
    from_parquet = read_hest_sample(root, SID, cells="parquet").cells
    from_geojson = read_hest_sample(root, SID, cells="geojson").cells
    np.testing.assert_allclose(from_parquet[["x_px", "y_px"]], from_geojson[["x_px", "y_px"]])
    assert from_parquet["class"].tolist() == from_geojson["class"].tolist()


def test_patient_falls_back_to_sample_id(hest_root):
    root = hest_root(metadata=_metadata(patient=None))
    assert read_hest_sample(root, SID).patient_id == SID


def test_missing_files(hest_root):
    root = hest_root()
    (root / "st" / f"{SID}.h5ad").unlink()
    with pytest.raises(MissingInputError, match=re.escape(f"{SID}.h5ad")):
        read_hest_sample(root, SID)
    root = hest_root()
    (root / "wsis" / f"{SID}.tif").unlink()
    with pytest.raises(MissingInputError, match=re.escape(f"{SID}.tif")):
        read_hest_sample(root, SID)
    root = hest_root()
    (root / "metadata" / f"{SID}.json").unlink()
    with pytest.raises(MissingInputError, match=re.escape(f"{SID}.json")):
        read_hest_sample(root, SID)


def _with_counts(value: float) -> ad.AnnData:
    adata = _adata()
    dense = adata.X.toarray()
    dense[2, 1] = value
    adata.X = sp.csr_matrix(dense)
    return adata


@pytest.mark.parametrize(
    ("adata_factory", "message"),
    [
        (lambda: _adata(genes=["EPCAM", "KRT8", "EPCAM", "COL1A1", "ACTB"]), "duplicated gene names"),
        (lambda: _with_counts(np.nan), "NaN"),
        (lambda: _with_counts(np.inf), "infinite"),
        (lambda: _with_counts(-1.0), "negative"),
    ],
)
@pytest.mark.filterwarnings("ignore:Variable names are not unique")
def test_bad_expression_rejected(hest_root, adata_factory, message):
    root = hest_root(adata=adata_factory())
    with pytest.raises(InputError, match=re.escape(f"{SID}.h5ad")) as info:
        read_hest_sample(root, SID)
    assert message in str(info.value)


def test_spatial_missing_rejected(hest_root):
    adata = _adata()
    del adata.obsm["spatial"]
    root = hest_root(adata=adata)
    with pytest.raises(InputError, match=rf"{SID}.h5ad.*spatial"):
        read_hest_sample(root, SID)


def test_spots_outside_image_rejected(hest_root):
    adata = _adata()
    adata.obsm["spatial"][3] = (SIZE + 10, 20)
    root = hest_root(adata=adata)
    with pytest.raises(InputError, match=re.escape(f"{SID}.h5ad")) as info:
        read_hest_sample(root, SID)
    assert "outside the image" in str(info.value) and "spot003" in str(info.value)
