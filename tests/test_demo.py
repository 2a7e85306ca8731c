"""Tests of the virtual-tissue demo generator (bitro.demo)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import anndata as ad
import geopandas as gpd
import h5py
import numpy as np
import openslide
import pandas as pd
import pytest
import shapely
import tifffile
from scipy import stats

from bitro.demo import DemoConfig, demo_sample_ids, generate_demo, preset, write_virtual_slide

SMALL = preset("small", seed=3)


@pytest.fixture(scope="module")
def demo(small_demo: tuple[Path, dict]) -> tuple[Path, dict]:
    return small_demo


@pytest.fixture(scope="module")
def demo_again(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo_b")
    generate_demo(out, config=SMALL, progress=False)
    return out


@pytest.fixture(scope="module")
def demo_other_seed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo_c")
    cfg = preset("small", seed=4)
    generate_demo(out, config=cfg, progress=False)
    return out


def _slides(root: Path) -> list[Path]:
    return sorted(
        [
            *root.glob("hest/wsis/*.tif"),
            *root.glob("tcga/slides/*.tif"),
            *root.glob("xenium/*/he_image.ome.tif"),
        ]
    )


def _level0(path: Path) -> np.ndarray:
    with tifffile.TiffFile(path) as tf:
        return tf.pages[0].asarray()


def test_sample_ids_default() -> None:
    ids = demo_sample_ids(DemoConfig())
    assert ids["hest"] == [f"DEMO0{i}" for i in range(1, 7)]
    assert len(ids["tcga"]) == 12
    assert ids["tcga"][:4] == [
        "TCGA-DM-A001-01Z-00-DX1",
        "TCGA-DM-A001-01Z-00-DX2",
        "TCGA-DM-A002-01Z-00-DX1",
        "TCGA-DM-A002-01Z-00-DX2",
    ]
    assert ids["tcga"][-1] == "TCGA-DM-A010-01Z-00-DX1"
    assert ids["xenium"] == ["XENIUM_DEMO"]


def test_layout_complete(demo: tuple[Path, dict]) -> None:
    root, summary = demo
    ids = summary["ids"]
    assert ids == demo_sample_ids(SMALL)
    for sid in ids["hest"]:
        for rel in (
            f"st/{sid}.h5ad",
            f"wsis/{sid}.tif",
            f"metadata/{sid}.json",
            f"cellvit_seg/{sid}_cellvit_seg.parquet",
            f"cellvit_seg/{sid}_cellvit_seg.geojson",
            f"truth/{sid}_cells.h5ad",
            f"truth/{sid}_cells.parquet",
        ):
            assert (root / "hest" / rel).is_file(), rel
    assert (root / "hest/truth/params.json").is_file()
    for sid in ids["tcga"]:
        assert len(list((root / "tcga/slides").glob(f"{sid}.*.tif"))) == 1
        assert (root / "tcga/truth" / f"{sid}_cells.h5ad").is_file()
    for name in (
        "experiment.xenium",
        "cells.parquet",
        "cell_boundaries.parquet",
        "nucleus_boundaries.parquet",
        "cell_feature_matrix.h5",
        "he_image.ome.tif",
        "he_imagealignment.csv",
        "truth/XENIUM_DEMO_cells.h5ad",
        "truth/params.json",
    ):
        assert (root / "xenium/XENIUM_DEMO" / name).is_file(), name
    assert not list(root.glob(".demo-tmp-*"))


def test_tcga_file_names(demo: tuple[Path, dict]) -> None:
    root, _ = demo
    pat = re.compile(
        r"^TCGA-DM-A\d{3}-01Z-00-DX\d\.[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}\.tif$"
    )
    names = [p.name for p in (root / "tcga/slides").iterdir()]
    assert len(names) == 4  # 3 patients, one of them with two slides
    assert all(pat.match(n) for n in names), names


def test_deterministic(demo: tuple[Path, dict], demo_again: Path, demo_other_seed: Path) -> None:
    root, _ = demo
    a = _slides(root)
    b = _slides(demo_again)
    assert [p.relative_to(root) for p in a] == [p.relative_to(demo_again) for p in b]
    for pa, pb in zip(a, b, strict=True):
        np.testing.assert_array_equal(_level0(pa), _level0(pb))
    for rel in ("hest/st/DEMO01.h5ad", "hest/truth/DEMO02_cells.h5ad"):
        x, y = ad.read_h5ad(root / rel), ad.read_h5ad(demo_again / rel)
        assert (x.X != y.X).nnz == 0
        pd.testing.assert_frame_equal(x.obs, y.obs)
        for k in x.layers:
            assert (x.layers[k] != y.layers[k]).nnz == 0
    for rel in (
        "tcga/expression/tpm.tsv",
        "xenium/XENIUM_DEMO/cells.parquet",
        "hest/cellvit_seg/DEMO01_cellvit_seg.parquet",
    ):
        if rel.endswith(".tsv"):
            pd.testing.assert_frame_equal(
                pd.read_csv(root / rel, sep="\t"), pd.read_csv(demo_again / rel, sep="\t")
            )
        else:
            pd.testing.assert_frame_equal(pd.read_parquet(root / rel), pd.read_parquet(demo_again / rel))
    # a different seed gives different pixels and counts
    c = sorted(demo_other_seed.glob("hest/wsis/*.tif"))
    assert not np.array_equal(_level0(sorted(root.glob("hest/wsis/*.tif"))[0]), _level0(c[0]))
    t1 = pd.read_csv(root / "tcga/expression/tpm.tsv", sep="\t")
    t2 = pd.read_csv(demo_other_seed / "tcga/expression/tpm.tsv", sep="\t")
    assert not np.allclose(t1.iloc[:, 1:].to_numpy(), t2.iloc[:, 1:].to_numpy())


def test_openslide_opens_every_slide(demo: tuple[Path, dict]) -> None:
    root, _ = demo
    slides = _slides(root)
    assert len(slides) == 3 + 4 + 1
    for p in slides:
        s = openslide.OpenSlide(p)
        try:
            assert float(s.properties["openslide.mpp-x"]) == pytest.approx(0.5)
            assert float(s.properties["openslide.mpp-y"]) == pytest.approx(0.5)
            assert s.level_count >= 2
            assert s.level_downsamples[1] == pytest.approx(4.0, rel=0.01)
            region = np.asarray(s.read_region((0, 0), 0, (64, 64)).convert("RGB"))
            assert region.mean() > 200  # glass in the corner
        finally:
            s.close()


def test_tables_readable_and_valid(demo: tuple[Path, dict]) -> None:
    root, _ = demo
    st = ad.read_h5ad(root / "hest/st/DEMO01.h5ad")
    assert st.X.format == "csr" and np.issubdtype(st.X.dtype, np.integer)
    for col in ("array_row", "array_col", "in_tissue", "pxl_col_in_fullres", "pxl_row_in_fullres"):
        assert col in st.obs
    assert st.obsm["spatial"].shape == (st.n_obs, 2)
    assert st.var_names.is_unique
    assert (st.obs.array_row + st.obs.array_col).mod(2).eq(0).all()
    meta = json.loads((root / "hest/metadata/DEMO01.json").read_text())
    assert meta["pixel_size_um_estimated"] == 0.5 and meta["st_technology"] == "Visium"
    assert meta["spots_under_tissue"] == int(st.obs.in_tissue.sum()) > 10
    seg = gpd.read_parquet(root / "hest/cellvit_seg/DEMO01_cellvit_seg.parquet")
    assert set(seg["class"]) <= {"Neoplastic", "Inflammatory", "Connective", "Dead", "Epithelial"}
    assert seg.geometry.geom_type.eq("Polygon").all() and shapely.is_valid(seg.geometry.values).all()
    assert seg["cell_id"].is_unique
    gj = json.loads((root / "hest/cellvit_seg/DEMO01_cellvit_seg.geojson").read_text())
    assert len(gj["features"]) == len(seg)
    assert gj["features"][0]["properties"]["classification"]["name"] in set(seg["class"])
    truth = gpd.read_parquet(root / "hest/truth/DEMO01_cells.parquet")
    assert shapely.is_valid(truth.geometry.values).all()
    cells = ad.read_h5ad(root / "hest/truth/DEMO01_cells.h5ad")
    assert len(truth) == cells.n_obs
    for col in ("cell_type", "x_px", "y_px", "x_um", "y_um", "nucleus_area_um2", "spot", "depth_um"):
        assert col in cells.obs
    assert cells.obs.cell_type.nunique() >= 5
    # segmentation misses some and adds some
    assert 0.8 * cells.n_obs < len(seg) < 1.05 * cells.n_obs
    # realistic density
    area_um2 = 600 * 600 * 0.72
    assert 60 < area_um2 / cells.n_obs < 260


def test_spot_counts_equal_sum_of_thinned_cells(demo: tuple[Path, dict]) -> None:
    root, summary = demo
    for sid in summary["ids"]["hest"]:
        st = ad.read_h5ad(root / f"hest/st/{sid}.h5ad")
        cells = ad.read_h5ad(root / f"hest/truth/{sid}_cells.h5ad")
        assert list(st.var_names) == list(cells.var_names)
        thinned = cells.layers["thinned"].toarray()
        x = cells.X.toarray()
        assert (thinned <= x).all()
        spot = cells.obs["spot"].to_numpy()
        assert (thinned[spot == ""] == 0).all()
        expected = np.zeros(st.shape, dtype=np.int64)
        idx = st.obs_names.get_indexer(spot[spot != ""])
        assert (idx >= 0).all()
        np.add.at(expected, idx, thinned[spot != ""])
        np.testing.assert_array_equal(st.X.toarray().astype(np.int64), expected)
        tot = np.asarray(st.X.sum(axis=1)).ravel()[st.obs.in_tissue.to_numpy() == 1]
        assert 500 < np.median(tot) < 20000


def test_spots_inside_image(demo: tuple[Path, dict]) -> None:
    root, summary = demo
    for sid in summary["ids"]["hest"]:
        st = ad.read_h5ad(root / f"hest/st/{sid}.h5ad")
        meta = json.loads((root / f"hest/metadata/{sid}.json").read_text())
        xy = st.obsm["spatial"]
        r = meta["spot_diameter"] / 2 / meta["pixel_size_um_estimated"]
        assert (xy[:, 0] - r >= 0).all() and (xy[:, 0] + r <= meta["fullres_px_width"]).all()
        assert (xy[:, 1] - r >= 0).all() and (xy[:, 1] + r <= meta["fullres_px_height"]).all()
        np.testing.assert_allclose(xy[:, 0], st.obs.pxl_col_in_fullres)
        # neighbouring spots are 100 µm apart
        d = np.sort(np.hypot(*(xy[1:] - xy[0]).T))[0]
        assert d * 0.5 == pytest.approx(100.0, abs=1.5)


def test_bulk_tpm(demo: tuple[Path, dict]) -> None:
    root, _ = demo
    t = pd.read_csv(root / "tcga/expression/tpm.tsv", sep="\t")
    assert t.columns[0] == "gene_id"
    assert list(t.columns[1:]) == [f"TCGA-DM-A00{i}-01A-11R-A00Z-07" for i in (1, 2, 3)]
    np.testing.assert_allclose(t.iloc[:, 1:].sum().to_numpy(), 1e6, rtol=1e-6)
    gm = pd.read_csv(root / "tcga/expression/gene_map.tsv", sep="\t")
    assert list(gm.columns) == ["gene_id", "gene_name", "gene_type"]
    assert list(gm.gene_id) == list(t.gene_id)
    # bulk = sum of the sample's slides' cells (A001 has two slides)
    params = json.loads((root / "tcga/truth/params.json").read_text())
    lengths = np.array(params["genes"]["lengths"])
    counts = sum(
        np.asarray(ad.read_h5ad(root / f"tcga/truth/{s}_cells.h5ad").X.sum(axis=0)).ravel()
        for s in ("TCGA-DM-A001-01Z-00-DX1", "TCGA-DM-A001-01Z-00-DX2")
    )
    rate = counts / lengths
    np.testing.assert_allclose(t["TCGA-DM-A001-01A-11R-A00Z-07"], rate / rate.sum() * 1e6, rtol=1e-5)


def test_gene_ids(demo: tuple[Path, dict]) -> None:
    root, _ = demo
    st = ad.read_h5ad(root / "hest/st/DEMO01.h5ad")
    ids = st.var["gene_ids"]
    assert ids.is_unique
    assert ids.str.match(r"^ENSG9\d{10}\.\d+$").all()
    assert {"EPCAM", "PTPRC", "CD68", "COL1A1", "PECAM1", "MKI67"} <= set(st.var_names)
    assert any(s.startswith("MT-") for s in st.var_names)
    assert DemoConfig().n_genes == 100


def test_xenium_alignment_lands_on_nuclei(demo: tuple[Path, dict]) -> None:
    root, _ = demo
    x = root / "xenium/XENIUM_DEMO"
    exp = json.loads((x / "experiment.xenium").read_text())
    assert exp["pixel_size"] == pytest.approx(0.2125)
    m = np.loadtxt(x / "he_imagealignment.csv", delimiter=",")
    assert m.shape == (3, 3)
    assert not np.allclose(m[:2, :2], np.diag(np.diag(m[:2, :2])))  # a rotation is present
    cells = pd.read_parquet(x / "cells.parquet")
    morph = np.c_[cells.x_centroid, cells.y_centroid, np.ones(len(cells))] / np.array(
        [exp["pixel_size"]] * 2 + [1]
    )
    px = (np.linalg.inv(m) @ morph.T).T[:, :2]
    truth = ad.read_h5ad(x / "truth/XENIUM_DEMO_cells.h5ad")
    np.testing.assert_allclose(px, truth.obs[["x_px", "y_px"]].to_numpy(), atol=1e-3)
    nuclei = gpd.read_parquet(x / "truth/XENIUM_DEMO_cells.parquet")
    inside = shapely.contains_xy(nuclei.geometry.values, px[:, 0], px[:, 1])
    assert inside.mean() > 0.99
    with h5py.File(x / "cell_feature_matrix.h5") as f:
        shape = tuple(f["matrix/shape"][:])
        ftype = [v.decode() for v in f["matrix/features/feature_type"][:]]
        assert shape == (len(ftype), len(cells))
        assert "Negative Control Probe" in ftype and ftype.count("Gene Expression") == SMALL.xenium_panel_size
        assert [v.decode() for v in f["matrix/barcodes"][:]] == list(cells.cell_id)
    nb = pd.read_parquet(x / "nucleus_boundaries.parquet")
    assert list(nb.columns) == ["cell_id", "vertex_x", "vertex_y"]
    assert nb.cell_id.nunique() == len(cells)


def _od(rgb: np.ndarray) -> np.ndarray:
    return -np.log(np.clip(rgb.astype(np.float64), 1, 255) / 255.0).sum(axis=-1)


def test_cell_types_differ_in_rendered_appearance(demo: tuple[Path, dict]) -> None:
    root, _ = demo
    img = _level0(root / "hest/wsis/DEMO01.tif")
    cells = ad.read_h5ad(root / "hest/truth/DEMO01_cells.h5ad").obs
    od = _od(img)
    dark = od > 1.2
    h, w = od.shape
    res: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for t in ("tumour", "lymphocyte", "fibroblast", "macrophage"):
        c = cells[cells.cell_type == t]
        x = c.x_px.to_numpy().astype(int)
        y = c.y_px.to_numpy().astype(int)
        ok = (x > 10) & (y > 10) & (x < w - 10) & (y < h - 10)
        x, y = x[ok], y[ok]
        centre = np.mean([od[y + dy, x + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)], axis=0)
        win = np.array([dark[yy - 8 : yy + 9, xx - 8 : xx + 9].sum() for yy, xx in zip(y, x, strict=True)])
        res[t] = (centre, win)
    # lymphocytes: darkest nuclei; macrophages: palest
    assert stats.ttest_ind(res["lymphocyte"][0], res["tumour"][0]).pvalue < 1e-6
    assert res["lymphocyte"][0].mean() > res["tumour"][0].mean()
    assert res["lymphocyte"][0].mean() > res["fibroblast"][0].mean() > res["macrophage"][0].mean()
    # tumour nuclei (in packed nests) are larger than lymphocyte nuclei: more dark pixels around the centre
    assert stats.ttest_ind(res["tumour"][1], res["lymphocyte"][1]).pvalue < 1e-6
    assert res["tumour"][1].mean() > res["lymphocyte"][1].mean()


def test_stain_batch_effect(demo: tuple[Path, dict]) -> None:
    root, summary = demo
    means = []
    for sid in summary["ids"]["hest"]:
        img = _level0(root / f"hest/wsis/{sid}.tif")
        c = ad.read_h5ad(root / f"hest/truth/{sid}_cells.h5ad").obs
        c = c[c.cell_type == "lymphocyte"]
        x = np.clip(c.x_px.to_numpy().astype(int), 0, img.shape[1] - 1)
        y = np.clip(c.y_px.to_numpy().astype(int), 0, img.shape[0] - 1)
        means.append(img[y, x].astype(float).mean(axis=0))
    assert np.abs(means[0] - means[1]).max() > 4.0
    params = json.loads((root / "hest/truth/params.json").read_text())
    s1, s2, _ = (params["slides"][s]["stain"] for s in summary["ids"]["hest"])
    assert s1["h_vector"] != s2["h_vector"]
    assert {"h_angle_deg", "e_angle_deg", "h_scale", "e_scale"} <= set(s1)
    assert params["seed"] == SMALL.seed and "type_profiles" in params


def test_write_virtual_slide(tmp_path: Path) -> None:
    out = tmp_path / "big.tif"
    st = write_virtual_slide(out, n_cells=20_000, seed=1, progress=False)
    assert 12_000 < st["cells"] < 30_000
    s = openslide.OpenSlide(out)
    try:
        assert s.dimensions == (st["width"], st["height"])
        assert float(s.properties["openslide.mpp-x"]) == pytest.approx(0.5)
        assert s.level_count >= 2
    finally:
        s.close()
    assert not list(tmp_path.glob("*.part"))
