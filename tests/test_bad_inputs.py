"""Bad inputs, caught before the hours of compute: a corpus of faults, one parametrised test per layout.

Each case copies a small valid cohort of the demo (generated once per session), breaks one thing, runs
the preflight (``bitro doctor``) or a verb, and checks the outcome a user must see: the preflight fails
(exit 1) with a problem naming the file and writes no stamp; a verb exits 2 with one line
``bitro <verb>: error: <file>: <problem>`` and leaves no output, not even a temporary file, behind.

Faults no check can see are listed in :data:`UNDETECTABLE`, with the reason, and a test shows that
they pass.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import geopandas as gpd
import h5py
import numpy as np
import pandas as pd
import pytest
import shapely
import yaml
from scipy import sparse

from bitro.cli import main
from conftest import run_snakemake

HEST = ("DEMO01", "DEMO02")
XENIUM = "XENIUM_DEMO"
SKIP = "versions,gpu"


# --------------------------------------------------------------------------------------------------
# the valid material, built once
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Valid:
    """The demo's cohorts and a few per-sample files made from them by the verbs."""

    demo: Path
    ids: dict
    work: Path  # units.parquet, targets, folds.json, … of a valid HEST sample

    @property
    def tcga_ids(self) -> list[str]:
        return list(self.ids["tcga"])


@pytest.fixture(scope="module")
def valid(small_demo: tuple[Path, dict], tmp_path_factory: pytest.TempPathFactory) -> Valid:
    root, summary = small_demo
    work = tmp_path_factory.mktemp("valid_work")
    sample = ["--format", "hest", "--root", str(root / "hest")]
    for name in HEST:
        folder = work / name
        args = [*sample, "--sample", name]
        assert main(["units", *args, "--out", str(folder / "units.parquet")]) == 0
        units = ["--units", str(folder / "units.parquet")]
        assert main(["targets", *args, *units, "--out", str(folder / "targets.h5ad")]) == 0
    from bitro.folds.splits import leave_one_out, write_folds

    write_folds(leave_one_out("c", [*HEST, "DEMO03"]), work / "folds.json")
    (work / "genes.txt").write_text("".join(f"G{i}\n" for i in range(3)))
    return Valid(root, summary["ids"], work)


@pytest.fixture(scope="module")
def tiny_dinov3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    torch.manual_seed(0)
    config = DINOv3ViTConfig(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=64,
        patch_size=16,
        image_size=64,
        num_register_tokens=2,
    )
    folder = tmp_path_factory.mktemp("dinov3_tiny")
    DINOv3ViTModel(config).save_pretrained(folder, safe_serialization=True)
    return folder


# --------------------------------------------------------------------------------------------------
# building a case
# --------------------------------------------------------------------------------------------------


def copy_hest(valid: Valid, dest: Path, samples: tuple[str, ...] = HEST) -> Path:
    """The files of ``samples`` of the demo's HEST cohort (the slide, spots, metadata, CellViT cells)."""
    src = valid.demo / "hest"
    for name in samples:
        for sub, file in (
            ("st", f"{name}.h5ad"),
            ("metadata", f"{name}.json"),
            ("wsis", f"{name}.tif"),
            ("cellvit_seg", f"{name}_cellvit_seg.parquet"),
        ):
            (dest / sub).mkdir(parents=True, exist_ok=True)
            shutil.copy(src / sub / file, dest / sub / file)
    return dest


def write_sheet(path: Path, rows: list[tuple[str, str]], mpp: str = "") -> Path:
    path.write_text("sample_id\tpatient_id\tmpp\n" + "".join(f"{s}\t{p}\t{mpp}\n" for s, p in rows))
    return path


def hest_cohort(valid: Valid, case: Path) -> dict:
    root = copy_hest(valid, case / "hest")
    sheet = write_sheet(case / "hest.tsv", [(s, f"P{i}") for i, s in enumerate(HEST)])
    return {"level": "st", "format": "hest", "root": str(root), "samples": str(sheet)}


def tcga_cohort(valid: Valid, case: Path) -> dict:
    shutil.copytree(valid.demo / "tcga", case / "tcga", ignore=shutil.ignore_patterns("truth"))
    sheet = write_sheet(case / "tcga.tsv", [(s, s[:12]) for s in valid.tcga_ids])
    return {"level": "bulk", "format": "tcga", "root": str(case / "tcga"), "samples": str(sheet)}


def xenium_cohort(valid: Valid, case: Path) -> dict:
    shutil.copytree(valid.demo / "xenium", case / "xenium", ignore=shutil.ignore_patterns("truth"))
    sheet = write_sheet(case / "xenium.tsv", [(XENIUM, XENIUM)])
    cohort = {"level": "xenium", "format": "xenium", "root": str(case / "xenium"), "samples": str(sheet)}
    return cohort | {"segmentation": {"backend": "precomputed"}}


def truncate(path: Path, fraction: float = 0.6) -> None:
    with path.open("r+b") as handle:
        handle.truncate(int(path.stat().st_size * fraction))


def garbage(path: Path) -> None:
    path.write_bytes(os.urandom(4096))


def edit_h5ad(path: Path, edit: Callable[[ad.AnnData], ad.AnnData | None]) -> None:
    adata = ad.read_h5ad(path)
    result = edit(adata)
    adata = adata if result is None else result
    path.unlink()
    adata.write_h5ad(path)


def edit_json(path: Path, edit: Callable[[dict], object]) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def edit_parquet(path: Path, edit: Callable[[gpd.GeoDataFrame], gpd.GeoDataFrame]) -> None:
    frame = edit(gpd.read_parquet(path))
    frame.to_parquet(path)


def edit_table(path: Path, edit: Callable[[pd.DataFrame], pd.DataFrame], **read: object) -> None:
    frame = edit(pd.read_csv(path, sep="\t", dtype={"gene_id": str}, **read))
    frame.to_csv(path, sep="\t", index=False)


def edit_matrix(bundle: Path, edit: Callable[[sparse.csr_matrix], sparse.csr_matrix]) -> None:
    """Rewrite ``cell_feature_matrix.h5``'s counts (features × cells, CSC as 10x stores them)."""
    with h5py.File(bundle / "cell_feature_matrix.h5", "r+") as handle:
        group = handle["matrix"]
        shape = tuple(int(v) for v in group["shape"][()])
        matrix = sparse.csc_matrix(
            (group["data"][()], group["indices"][()], group["indptr"][()]), shape=shape
        )
        matrix = sparse.csc_matrix(edit(matrix))
        for key, value in (("data", matrix.data), ("indices", matrix.indices), ("indptr", matrix.indptr)):
            del group[key]
            group.create_dataset(key, data=value)
        group["shape"][...] = np.array(matrix.shape)


# --------------------------------------------------------------------------------------------------
# running a case
# --------------------------------------------------------------------------------------------------


def run_doctor(case: Path, config: dict, skip: str = SKIP) -> tuple[int, list[dict]]:
    """``bitro doctor`` on ``config``: exit status and failed results (no stamp unless it passed)."""
    path = case / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    stamp, report = case / "doctor.ok", case / "report.json"
    argv = ["doctor", "--config", str(path), "--skip", skip, "--json", str(report), "--stamp", str(stamp)]
    try:
        code = main(argv)
    except SystemExit as stop:
        code = int(stop.code or 0)
    failed = [r for r in json.loads(report.read_text())["results"] if r["status"] == "fail"]
    assert (code == 0) == stamp.exists()
    return code, failed


def assert_preflight_fails(case: Path, config: dict, names: str, skip: str = SKIP) -> None:
    code, failed = run_doctor(case, config, skip)
    assert code == 1, f"doctor passed a bad input ({names})"
    assert any(names in r["message"] for r in failed), failed


def assert_verb_fails(argv: list[str], names: str, out: Path | None, capsys: pytest.CaptureFixture) -> None:
    """Exit status 2, one ``bitro <verb>: error:`` line naming ``names``, nothing left under ``out``."""
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as stop:
        code = int(stop.code or 0)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("bitro ")]
    assert len(lines) == 1 and lines[0].startswith(f"bitro {argv[0]}: error: "), err
    assert names in lines[0], lines[0]
    assert "Traceback" not in err, err
    if out is not None:
        assert not out.exists(), out
        leftovers = [p.name for p in out.parent.glob(f".{out.stem}*")] if out.parent.is_dir() else []
        assert not leftovers, leftovers


# --------------------------------------------------------------------------------------------------
# HEST-1k
# --------------------------------------------------------------------------------------------------


def _spots(root: Path) -> Path:
    return root / "st" / "DEMO01.h5ad"


def _meta(root: Path) -> Path:
    return root / "metadata" / "DEMO01.json"


def _slide(root: Path) -> Path:
    return root / "wsis" / "DEMO01.tif"


def _seg(root: Path) -> Path:
    return root / "cellvit_seg" / "DEMO01_cellvit_seg.parquet"


def _log1p(adata: ad.AnnData) -> ad.AnnData:
    adata.X = np.log1p(adata.X.toarray() if sparse.issparse(adata.X) else adata.X).astype(np.float32)
    return adata


def _set_x(value: Callable[[np.ndarray], np.ndarray]) -> Callable[[ad.AnnData], ad.AnnData]:
    def edit(adata: ad.AnnData) -> ad.AnnData:
        x = adata.X.toarray() if sparse.issparse(adata.X) else np.asarray(adata.X)
        adata.X = value(x.astype(np.float64))
        return adata

    return edit


def _first_value(value: float) -> Callable[[np.ndarray], np.ndarray]:
    def change(x: np.ndarray) -> np.ndarray:
        x[0, 0] = value
        return x

    return change


def _obs(column: str, value: object) -> Callable[[ad.AnnData], ad.AnnData]:
    def edit(adata: ad.AnnData) -> ad.AnnData:
        adata.obs[column] = value
        return adata

    return edit


def _rename_var(adata: ad.AnnData) -> ad.AnnData:
    names = adata.var_names.tolist()
    names[1] = names[0]
    adata.var_names = names
    return adata


def _rename_obs(adata: ad.AnnData) -> ad.AnnData:
    names = adata.obs_names.tolist()
    names[1] = names[0]
    adata.obs_names = names
    return adata


def _spatial(value: Callable[[np.ndarray], np.ndarray]) -> Callable[[ad.AnnData], ad.AnnData]:
    def edit(adata: ad.AnnData) -> ad.AnnData:
        adata.obsm["spatial"] = value(np.asarray(adata.obsm["spatial"], dtype=np.float64))
        return adata

    return edit


def _no_spatial(adata: ad.AnnData) -> ad.AnnData:
    del adata.obsm["spatial"]
    return adata


def _nan_first(xy: np.ndarray) -> np.ndarray:
    xy[0, 0] = np.nan
    return xy


def _seg_edit(edit: Callable[[gpd.GeoDataFrame], gpd.GeoDataFrame]) -> Callable[[Path], None]:
    return lambda root: edit_parquet(_seg(root), edit)


def _dup_ids(frame: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    frame["cell_id"] = frame["cell_id"].to_numpy()
    frame.loc[frame.index[1], "cell_id"] = frame["cell_id"].iloc[0]
    return frame


def _scaled(factor: float) -> Callable[[gpd.GeoDataFrame], gpd.GeoDataFrame]:
    def edit(frame: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
        frame["geometry"] = frame.geometry.scale(xfact=factor, yfact=factor, origin=(0, 0))
        return frame

    return edit


def _points(frame: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    frame["geometry"] = frame.geometry.centroid
    return frame


@dataclass(frozen=True)
class Fault:
    """One bad input: how to make it from a valid copy, and the file the error must name."""

    id: str
    make: Callable[[Path], None]
    names: str


HEST_FAULTS = [
    Fault("slide-missing", lambda r: _slide(r).unlink(), "DEMO01.tif"),
    Fault("slide-garbage", lambda r: garbage(_slide(r)), "DEMO01.tif"),
    Fault("slide-truncated", lambda r: truncate(_slide(r)), "DEMO01.tif"),
    Fault("slide-empty-file", lambda r: _slide(r).write_bytes(b""), "DEMO01.tif"),
    Fault("spots-h5ad-missing", lambda r: _spots(r).unlink(), "DEMO01.h5ad"),
    Fault("spots-h5ad-garbage", lambda r: garbage(_spots(r)), "DEMO01.h5ad"),
    Fault("metadata-missing", lambda r: _meta(r).unlink(), "DEMO01.json"),
    Fault("metadata-not-json", lambda r: _meta(r).write_text("{not json"), "DEMO01.json"),
    Fault("metadata-not-an-object", lambda r: _meta(r).write_text("[1, 2]"), "DEMO01.json"),
    Fault(
        "mpp-out-of-range",
        lambda r: edit_json(_meta(r), lambda m: m.update(pixel_size_um_estimated=25.0)),
        "DEMO01.tif",
    ),
    Fault(
        "spot-diameter-missing",
        lambda r: edit_json(_meta(r), lambda m: m.pop("spot_diameter")),
        "DEMO01.json",
    ),
    Fault("spots-outside-slide", lambda r: edit_h5ad(_spots(r), _spatial(lambda xy: xy * 50)), "DEMO01.h5ad"),
    Fault("spatial-missing", lambda r: edit_h5ad(_spots(r), _no_spatial), "DEMO01.h5ad"),
    Fault("spatial-nan", lambda r: edit_h5ad(_spots(r), _spatial(_nan_first)), "DEMO01.h5ad"),
    Fault("genes-duplicated", lambda r: edit_h5ad(_spots(r), _rename_var), "DEMO01.h5ad"),
    Fault("barcodes-duplicated", lambda r: edit_h5ad(_spots(r), _rename_obs), "DEMO01.h5ad"),
    Fault("counts-negative", lambda r: edit_h5ad(_spots(r), _set_x(_first_value(-3))), "DEMO01.h5ad"),
    Fault("counts-nan", lambda r: edit_h5ad(_spots(r), _set_x(_first_value(np.nan))), "DEMO01.h5ad"),
    Fault("counts-log1p-normalised", lambda r: edit_h5ad(_spots(r), _log1p), "DEMO01.h5ad"),
    Fault("counts-all-zero", lambda r: edit_h5ad(_spots(r), _set_x(np.zeros_like)), "DEMO01.h5ad"),
    Fault("zero-spots", lambda r: edit_h5ad(_spots(r), lambda a: a[:0].copy()), "DEMO01.h5ad"),
    Fault("in-tissue-all-zero", lambda r: edit_h5ad(_spots(r), _obs("in_tissue", 0)), "DEMO01.h5ad"),
    Fault("in-tissue-not-a-flag", lambda r: edit_h5ad(_spots(r), _obs("in_tissue", 7)), "DEMO01.h5ad"),
    Fault("segmentation-missing", lambda r: _seg(r).unlink(), "DEMO01_cellvit_seg"),
    Fault("segmentation-garbage", lambda r: garbage(_seg(r)), "DEMO01_cellvit_seg.parquet"),
    Fault("segmentation-empty", _seg_edit(lambda f: f.iloc[:0]), "DEMO01_cellvit_seg.parquet"),
    Fault("segmentation-duplicated-cell-id", _seg_edit(_dup_ids), "DEMO01_cellvit_seg.parquet"),
    Fault("segmentation-points-not-outlines", _seg_edit(_points), "DEMO01_cellvit_seg.parquet"),
    Fault("segmentation-for-another-level", _seg_edit(_scaled(8.0)), "DEMO01_cellvit_seg.parquet"),
]


@pytest.mark.parametrize("fault", HEST_FAULTS, ids=[f.id for f in HEST_FAULTS])
def test_hest_faults_fail_the_preflight(valid: Valid, tmp_path: Path, fault: Fault) -> None:
    cohort = hest_cohort(valid, tmp_path) | {"segmentation": {"backend": "precomputed"}}
    fault.make(Path(cohort["root"]))
    assert_preflight_fails(tmp_path, {"cohorts": {"c": cohort}}, fault.names)


HEST_VERB_FAULTS = [
    # (id, fault, verb, needs units)
    ("tissue-on-truncated-slide", "slide-truncated", "tissue", False),
    ("units-on-truncated-slide", "slide-truncated", "units", False),
    ("units-on-zero-spots", "zero-spots", "units", False),
    ("units-without-spot-diameter", "spot-diameter-missing", "units", False),
    ("targets-on-log1p-counts", "counts-log1p-normalised", "targets", True),
    ("targets-on-all-zero-counts", "counts-all-zero", "targets", True),
    ("targets-on-all-out-of-tissue", "in-tissue-all-zero", "targets", True),
    ("cells-on-empty-segmentation", "segmentation-empty", "cells", True),
    ("cells-on-duplicated-cell-ids", "segmentation-duplicated-cell-id", "cells", True),
    ("cells-on-segmentation-for-another-level", "segmentation-for-another-level", "cells", True),
    ("stain-on-truncated-slide", "slide-truncated", "stain", False),
    ("crops-on-truncated-slide", "slide-truncated", "crops", False),
]
BY_ID = {f.id: f for f in HEST_FAULTS}


@pytest.mark.parametrize(
    ("fault_id", "verb", "needs_units"),
    [case[1:] for case in HEST_VERB_FAULTS],
    ids=[case[0] for case in HEST_VERB_FAULTS],
)
def test_hest_faults_fail_the_verbs(
    valid: Valid, tmp_path: Path, capsys: pytest.CaptureFixture, fault_id: str, verb: str, needs_units: bool
) -> None:
    root = copy_hest(valid, tmp_path / "hest", ("DEMO01",))
    fault = BY_ID[fault_id]
    fault.make(root)
    out = (
        tmp_path
        / "out"
        / {"tissue": "tissue.npz", "units": "units.parquet", "targets": "targets.h5ad"}.get(
            verb, f"{verb}.out"
        )
    )
    argv = [verb, "--format", "hest", "--root", str(root), "--sample", "DEMO01"]
    if needs_units:
        argv += ["--units", str(valid.work / "DEMO01" / "units.parquet")]
    if verb == "cells":
        out = tmp_path / "out" / "cells.parquet"
        argv += ["--backend", "precomputed"]
    if verb == "stain":
        out = tmp_path / "out" / "stain.json"
        argv += ["--reference", str(Path(__file__).parents[1] / "resources" / "stain" / "reference.json")]
    if verb == "crops":
        out = tmp_path / "out" / "crops.zarr"
        cells = tmp_path / "cells.parquet"
        pd.DataFrame(
            {
                "cell_id": [0],
                "x_px": [600.0],
                "y_px": [600.0],
                "x_um": [300.0],
                "y_um": [300.0],
                "area_um2": [40.0],
                "unit_id": [0],
                "source": ["t"],
                "class": pd.array([None], dtype="string"),
                "geometry": [None],
            }
        ).to_parquet(cells)
        argv += ["--cells", str(cells)]
    assert_verb_fails([*argv, "--out", str(out)], fault.names, out, capsys)


def test_invalid_outlines_are_repaired_and_counted(
    valid: Valid, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A self-intersecting (bow-tie) outline is repaired with make_valid, the count logged and warned."""

    def bow_tie(frame: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
        x0, y0, x1, y1 = frame.geometry.iloc[0].bounds
        tie = shapely.Polygon([(x0, y0), (x1, y1), (x1, y0), (x0, y1)])
        frame.loc[frame.index[:3], "geometry"] = [tie, tie, tie]
        return frame

    cohort = hest_cohort(valid, tmp_path) | {"segmentation": {"backend": "precomputed"}}
    _seg_edit(bow_tie)(Path(cohort["root"]))
    code, failed = run_doctor(tmp_path, {"cohorts": {"c": cohort}})
    report = json.loads((tmp_path / "report.json").read_text())
    warned = [r["message"] for r in report["results"] if r["status"] == "warn"]
    assert code == 0 and not failed
    assert any("3 of" in m and "make_valid" in m and "DEMO01_cellvit_seg.parquet" in m for m in warned), (
        warned
    )

    out = tmp_path / "cells.parquet"
    units = valid.work / "DEMO01" / "units.parquet"
    argv = ["cells", "--format", "hest", "--root", cohort["root"], "--sample", "DEMO01"]
    assert main([*argv, "--units", str(units), "--backend", "precomputed", "--out", str(out)]) == 0
    outlines = shapely.from_wkb(pd.read_parquet(out)["geometry"].dropna().to_numpy())
    assert shapely.is_valid(outlines).all()


# --------------------------------------------------------------------------------------------------
# TCGA
# --------------------------------------------------------------------------------------------------


def _tpm(root: Path) -> Path:
    return root / "expression" / "tpm.tsv"


def _gene_map(root: Path) -> Path:
    return root / "expression" / "gene_map.tsv"


def _tcga_slide(root: Path, barcode: str = "TCGA-DM-A002-01Z-00-DX1") -> Path:
    return next((root / "slides").glob(f"{barcode}.*"))


def _column(root: Path, index: int = 1) -> str:
    return pd.read_csv(_tpm(root), sep="\t", nrows=0).columns[index]


def _aliquot_of(root: Path, patient: str) -> str:
    return next(c for c in pd.read_csv(_tpm(root), sep="\t", nrows=0).columns if c.startswith(patient))


def _tpm_value(value: object) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def edit(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.astype({frame.columns[1]: object})
        frame.iloc[0, 1] = value
        return frame

    return edit


def _zero_aliquot(root: Path) -> None:
    aliquot = _aliquot_of(root, "TCGA-DM-A002")
    edit_table(_tpm(root), lambda f: f.assign(**{aliquot: 0.0}))


def _drop_aliquot(root: Path) -> None:
    aliquot = _aliquot_of(root, "TCGA-DM-A002")
    edit_table(_tpm(root), lambda f: f.drop(columns=aliquot))


def _duplicate_gene(frame: pd.DataFrame) -> pd.DataFrame:
    frame.loc[1, "gene_id"] = frame.loc[0, "gene_id"]
    return frame


TCGA_FAULTS = [
    Fault("tpm-missing", lambda r: _tpm(r).unlink(), "tpm.tsv"),
    Fault("gene-map-missing", lambda r: _gene_map(r).unlink(), "gene_map.tsv"),
    Fault("tpm-garbage", lambda r: _tpm(r).write_bytes(b"\xff\xfe\x00" * 300), "tpm.tsv"),
    Fault(
        "tpm-first-column-not-gene-id",
        lambda r: edit_table(_tpm(r), lambda f: f.rename(columns={"gene_id": "id"})),
        "tpm.tsv",
    ),
    Fault("tpm-negative", lambda r: edit_table(_tpm(r), _tpm_value(-1.0)), "tpm.tsv"),
    Fault("tpm-not-a-number", lambda r: edit_table(_tpm(r), _tpm_value("high")), "tpm.tsv"),
    Fault("tpm-duplicated-gene-id", lambda r: edit_table(_tpm(r), _duplicate_gene), "tpm.tsv"),
    Fault("tpm-no-sample-columns", lambda r: edit_table(_tpm(r), lambda f: f[["gene_id"]]), "tpm.tsv"),
    Fault("tpm-all-zero-for-a-slide", _zero_aliquot, "tpm.tsv"),
    Fault("slide-without-rna-seq", _drop_aliquot, "tpm.tsv"),
    Fault(
        "gene-map-missing-columns",
        lambda r: edit_table(_gene_map(r), lambda f: f.drop(columns="gene_name")),
        "gene_map.tsv",
    ),
    Fault(
        "slide-file-not-a-barcode",
        lambda r: (r / "slides" / "scan_0001.svs").write_bytes(b"x"),
        "scan_0001.svs",
    ),
    Fault("slide-garbage", lambda r: garbage(_tcga_slide(r)), "TCGA-DM-A002-01Z-00-DX1"),
    Fault("slide-truncated", lambda r: truncate(_tcga_slide(r)), "TCGA-DM-A002-01Z-00-DX1"),
    Fault("slide-missing", lambda r: _tcga_slide(r).unlink(), "TCGA-DM-A002-01Z-00-DX1"),
]


@pytest.mark.parametrize("fault", TCGA_FAULTS, ids=[f.id for f in TCGA_FAULTS])
def test_tcga_faults_fail_the_preflight(valid: Valid, tmp_path: Path, fault: Fault) -> None:
    cohort = tcga_cohort(valid, tmp_path)
    fault.make(Path(cohort["root"]))
    assert_preflight_fails(tmp_path, {"cohorts": {"c": cohort}}, fault.names)


def _renamed(rows: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(s, f"PATIENT{i}") for i, (s, _) in enumerate(rows)]


def _split_patient(rows: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(s, p + ("-B" if s.endswith("DX2") else "")) for s, p in rows]


def _unknown_slide(rows: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [*rows, ("TCGA-DM-A099-01Z-00-DX1", "TCGA-DM-A099")]


def _only(*patients: str) -> Callable[[list[tuple[str, str]]], list[tuple[str, str]]]:
    return lambda rows: [r for r in rows if r[1] in patients]


TCGA_SHEET_FAULTS = [
    ("sheet-patient-contradicts-barcode", _renamed, "tcga.tsv"),
    ("sheet-one-patient-given-two-ids", _split_patient, "tcga.tsv"),
    ("sheet-slide-not-in-layout", _unknown_slide, "TCGA-DM-A099"),
    ("bulk-one-patient", _only("TCGA-DM-A001"), "tcga.tsv"),
    ("bulk-two-patients", _only("TCGA-DM-A001", "TCGA-DM-A002"), "tcga.tsv"),
]


@pytest.mark.parametrize(
    ("edit", "names"), [c[1:] for c in TCGA_SHEET_FAULTS], ids=[c[0] for c in TCGA_SHEET_FAULTS]
)
def test_tcga_sheet_faults_fail_the_preflight(
    valid: Valid, tmp_path: Path, edit: Callable, names: str
) -> None:
    cohort = tcga_cohort(valid, tmp_path)
    write_sheet(Path(cohort["samples"]), edit([(s, s[:12]) for s in valid.tcga_ids]))
    assert_preflight_fails(tmp_path, {"cohorts": {"c": cohort}}, names)


def test_bulk_k_fold_needs_k_plus_two_patients(valid: Valid, tmp_path: Path) -> None:
    cohort = tcga_cohort(valid, tmp_path)
    config = {"cohorts": {"c": cohort}, "evaluation": {"bulk_folds": 5}}
    code, failed = run_doctor(tmp_path, config)
    assert code == 1
    assert any("5-fold needs at least 7 patients; the cohort has 3" in r["message"] for r in failed), failed


# --------------------------------------------------------------------------------------------------
# Xenium
# --------------------------------------------------------------------------------------------------


def _bundle(root: Path) -> Path:
    return root / XENIUM


def _cells_table(edit: Callable[[pd.DataFrame], pd.DataFrame]) -> Callable[[Path], None]:
    def make(root: Path) -> None:
        path = _bundle(root) / "cells.parquet"
        edit(pd.read_parquet(path)).to_parquet(path)

    return make


def _dup_cell(frame: pd.DataFrame) -> pd.DataFrame:
    frame.loc[1, "cell_id"] = frame.loc[0, "cell_id"]
    return frame


def _nan_centroid(frame: pd.DataFrame) -> pd.DataFrame:
    frame.loc[0, "x_centroid"] = np.nan
    return frame


def _far(frame: pd.DataFrame) -> pd.DataFrame:
    frame.loc[0, "x_centroid"] = 1e6
    return frame


def _boundaries(edit: Callable[[pd.DataFrame], pd.DataFrame]) -> Callable[[Path], None]:
    def make(root: Path) -> None:
        path = _bundle(root) / "cell_boundaries.parquet"
        edit(pd.read_parquet(path)).to_parquet(path)

    return make


def _two_vertices(frame: pd.DataFrame) -> pd.DataFrame:
    first = frame["cell_id"].iloc[0]
    rows = frame.index[frame["cell_id"] == first]
    return frame.drop(index=rows[2:])


def _float_counts(matrix: sparse.csc_matrix) -> sparse.csc_matrix:
    matrix = matrix.astype(np.float64)
    matrix.data = np.log1p(matrix.data)
    return matrix


def _negative(matrix: sparse.csc_matrix) -> sparse.csc_matrix:
    matrix = matrix.astype(np.int64)
    matrix.data[0] = -2
    return matrix


def _experiment(edit: Callable[[dict], object]) -> Callable[[Path], None]:
    return lambda root: edit_json(_bundle(root) / "experiment.xenium", edit)


def _feature_names(root: Path) -> None:
    with h5py.File(_bundle(root) / "cell_feature_matrix.h5", "r+") as handle:
        names = handle["matrix/features/name"]
        values = names[()]
        values[1] = values[0]
        names[...] = values


def _alignment(text: str) -> Callable[[Path], None]:
    return lambda root: (_bundle(root) / "he_imagealignment.csv").write_text(text)


XENIUM_FAULTS = [
    Fault("experiment-missing", lambda r: (_bundle(r) / "experiment.xenium").unlink(), "experiment.xenium"),
    Fault("experiment-no-pixel-size", _experiment(lambda e: e.pop("pixel_size")), "experiment.xenium"),
    Fault("cells-table-missing", lambda r: (_bundle(r) / "cells.parquet").unlink(), "cells.parquet"),
    Fault("cells-table-garbage", lambda r: garbage(_bundle(r) / "cells.parquet"), "cells.parquet"),
    Fault(
        "cells-table-missing-column", _cells_table(lambda f: f.drop(columns="x_centroid")), "cells.parquet"
    ),
    Fault("cells-duplicated-cell-id", _cells_table(_dup_cell), "cells.parquet"),
    Fault("cells-nan-centroid", _cells_table(_nan_centroid), "cells.parquet"),
    Fault("cells-outside-image", _cells_table(_far), "cells.parquet"),
    Fault("matrix-cell-not-in-cells-table", _cells_table(lambda f: f.iloc[1:]), "cell_feature_matrix.h5"),
    Fault(
        "matrix-missing", lambda r: (_bundle(r) / "cell_feature_matrix.h5").unlink(), "cell_feature_matrix.h5"
    ),
    Fault(
        "matrix-garbage", lambda r: garbage(_bundle(r) / "cell_feature_matrix.h5"), "cell_feature_matrix.h5"
    ),
    Fault(
        "matrix-log1p-normalised", lambda r: edit_matrix(_bundle(r), _float_counts), "cell_feature_matrix.h5"
    ),
    Fault("matrix-negative", lambda r: edit_matrix(_bundle(r), _negative), "cell_feature_matrix.h5"),
    Fault("matrix-all-zero", lambda r: edit_matrix(_bundle(r), lambda m: m * 0), "cell_feature_matrix.h5"),
    Fault("matrix-duplicated-gene-names", _feature_names, "cell_feature_matrix.h5"),
    Fault("he-image-missing", lambda r: (_bundle(r) / "he_image.ome.tif").unlink(), "he_image"),
    Fault("he-image-truncated", lambda r: truncate(_bundle(r) / "he_image.ome.tif"), "he_image.ome.tif"),
    Fault(
        "alignment-missing", lambda r: (_bundle(r) / "he_imagealignment.csv").unlink(), "imagealignment.csv"
    ),
    Fault("alignment-not-3x3", _alignment("1,0\n0,1\n"), "he_imagealignment.csv"),
    Fault("alignment-singular", _alignment("0,0,0\n0,0,0\n0,0,1\n"), "he_imagealignment.csv"),
    Fault("boundaries-two-vertices", _boundaries(_two_vertices), "cell_boundaries.parquet"),
]


@pytest.mark.parametrize("fault", XENIUM_FAULTS, ids=[f.id for f in XENIUM_FAULTS])
def test_xenium_faults_fail_the_preflight(valid: Valid, tmp_path: Path, fault: Fault) -> None:
    cohort = xenium_cohort(valid, tmp_path)
    fault.make(Path(cohort["root"]))
    assert_preflight_fails(tmp_path, {"cohorts": {"c": cohort}}, fault.names)


def test_xenium_zero_cells_fail_the_preflight(valid: Valid, tmp_path: Path) -> None:
    cohort = xenium_cohort(valid, tmp_path)
    edit_matrix(_bundle(Path(cohort["root"])), lambda m: m[:, :0])
    with h5py.File(_bundle(Path(cohort["root"])) / "cell_feature_matrix.h5", "r+") as handle:
        del handle["matrix/barcodes"]
        handle["matrix"].create_dataset("barcodes", data=np.array([], dtype="S8"))
    assert_preflight_fails(tmp_path, {"cohorts": {"c": cohort}}, "cell_feature_matrix.h5")


# --------------------------------------------------------------------------------------------------
# sample sheets and config
# --------------------------------------------------------------------------------------------------


def _sheet(text: str) -> Callable[[Path], None]:
    return lambda sheet: sheet.write_text(text)


SHEET_FAULTS = [
    ("sheet-missing", lambda s: s.unlink(), "hest.tsv"),
    ("sheet-not-tsv", lambda s: s.write_bytes(b"\xff\xfe\x00\x00" * 50), "hest.tsv"),
    ("sheet-no-patient-column", _sheet("sample_id\nDEMO01\nDEMO02\n"), "hest.tsv"),
    ("sheet-duplicated-sample-id", _sheet("sample_id\tpatient_id\nDEMO01\tP1\nDEMO01\tP2\n"), "hest.tsv"),
    ("sheet-empty-sample-id", _sheet("sample_id\tpatient_id\nDEMO01\tP1\n\tP2\n"), "hest.tsv"),
    (
        "sheet-mpp-negative",
        _sheet("sample_id\tpatient_id\tmpp\nDEMO01\tP1\t-0.5\nDEMO02\tP2\t\n"),
        "hest.tsv",
    ),
    (
        "sheet-mpp-not-a-number",
        _sheet("sample_id\tpatient_id\tmpp\nDEMO01\tP1\tabc\nDEMO02\tP2\t\n"),
        "hest.tsv",
    ),
    ("sheet-sample-not-in-layout", _sheet("sample_id\tpatient_id\nDEMO01\tP1\nDEMO99\tP2\n"), "DEMO99"),
    ("st-one-sample", _sheet("sample_id\tpatient_id\nDEMO01\tP1\n"), "hest.tsv"),
    ("st-one-patient-group-by-patient", _sheet("sample_id\tpatient_id\nDEMO01\tP\nDEMO02\tP\n"), "hest.tsv"),
]


@pytest.mark.parametrize(("edit", "names"), [c[1:] for c in SHEET_FAULTS], ids=[c[0] for c in SHEET_FAULTS])
def test_sheet_faults_fail_the_preflight(valid: Valid, tmp_path: Path, edit: Callable, names: str) -> None:
    cohort = hest_cohort(valid, tmp_path)
    edit(Path(cohort["samples"]))
    assert_preflight_fails(tmp_path, {"cohorts": {"c": cohort}}, names)


def test_n_genes_beyond_the_measured_genes_fails_unless_up_to(valid: Valid, tmp_path: Path) -> None:
    cohort = hest_cohort(valid, tmp_path)
    config = {"cohorts": {"c": cohort}, "genes": {"n_genes": 500}}
    assert_preflight_fails(tmp_path, config, "hest.tsv")
    _, failed = run_doctor(tmp_path, config)
    assert any("genes.n_genes is 500" in r["message"] and "genes.up_to" in r["message"] for r in failed)
    code, failed = run_doctor(tmp_path, config | {"genes": {"n_genes": 500, "up_to": True}})
    assert code == 0, failed


def test_a_config_that_breaks_the_schema_names_the_key(tmp_path: Path) -> None:
    root = Path(__file__).parents[1]
    config = {"cohorts": {"c": {"level": "st", "format": "hest", "root": "r", "samples": "s.tsv"}}}
    config["genes"] = {"n_genes": 0}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(config))
    assert (
        main(["doctor", "--config", str(path), "--repo", str(root), "--skip", "versions,gpu,weights,slides"])
        == 1
    )


CONFIG_FAULTS = [
    ("config-missing", lambda p: None, "missing.yaml"),
    ("config-not-yaml", lambda p: p.write_text("cohorts: [unclosed\n"), "c.yaml"),
    ("config-not-a-mapping", lambda p: p.write_text("- a\n- b\n"), "c.yaml"),
]


@pytest.mark.parametrize(("make", "names"), [c[1:] for c in CONFIG_FAULTS], ids=[c[0] for c in CONFIG_FAULTS])
def test_config_faults_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture, make: Callable, names: str
) -> None:
    path = tmp_path / "c.yaml"
    make(path)
    target = path if names == "c.yaml" else tmp_path / names
    assert_verb_fails(
        ["doctor", "--config", str(target), "--out", str(tmp_path / "r.txt")],
        names,
        tmp_path / "r.txt",
        capsys,
    )


def test_config_json_that_is_not_json(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert_verb_fails(["doctor", "--config-json", "{oops"], "--config-json", None, capsys)


# --------------------------------------------------------------------------------------------------
# weights
# --------------------------------------------------------------------------------------------------


def dinov3_copy(source: Path, dest: Path) -> Path:
    shutil.copytree(source, dest)
    return dest


def _state_edit(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def make(folder: Path) -> None:
        from safetensors.torch import load_file, save_file

        state = load_file(str(folder / "model.safetensors"))
        edit(state)
        save_file(state, str(folder / "model.safetensors"))

    return make


def _drop_tensor(state: dict) -> None:
    state.pop(next(k for k in state if k.endswith("weight")))


def _widen(state: dict) -> None:
    import torch

    name = next(k for k in state if k.endswith("weight") and state[k].ndim == 2)
    state[name] = torch.zeros(state[name].shape[0] + 1, state[name].shape[1])


def _extra(state: dict) -> None:
    import torch

    state["head.extra.weight"] = torch.zeros(3, 3)


def _cut_header(folder: Path) -> None:
    path = folder / "model.safetensors"
    (length,) = struct.unpack("<Q", path.read_bytes()[:8])
    truncate(path, (8 + length // 2) / path.stat().st_size)


def _sums(text: str) -> Callable[[Path], None]:
    return lambda folder: (folder / "SHA256SUMS").write_text(text)


WEIGHTS_FAULTS = [
    Fault(
        "dinov3-truncated-no-digest", lambda f: truncate(f / "model.safetensors", 0.7), "model.safetensors"
    ),
    Fault("dinov3-header-cut", _cut_header, "model.safetensors"),
    Fault("dinov3-garbage", lambda f: garbage(f / "model.safetensors"), "model.safetensors"),
    Fault("dinov3-empty-file", lambda f: (f / "model.safetensors").write_bytes(b""), "model.safetensors"),
    Fault("dinov3-tensor-missing", _state_edit(_drop_tensor), "model.safetensors"),
    Fault("dinov3-tensor-wrong-shape", _state_edit(_widen), "model.safetensors"),
    Fault("dinov3-tensor-unexpected", _state_edit(_extra), "model.safetensors"),
    Fault("dinov3-config-missing", lambda f: (f / "config.json").unlink(), "config.json"),
    Fault("dinov3-weights-missing", lambda f: (f / "model.safetensors").unlink(), "model.safetensors"),
    Fault("dinov3-digest-mismatch", _sums(f"{'0' * 64}  model.safetensors\n"), "model.safetensors"),
    Fault("dinov3-sha256sums-malformed", _sums("not a checksum line\n"), "SHA256SUMS"),
]


@pytest.mark.parametrize("fault", WEIGHTS_FAULTS, ids=[f.id for f in WEIGHTS_FAULTS])
def test_weights_faults_fail_the_preflight(tiny_dinov3: Path, tmp_path: Path, fault: Fault) -> None:
    folder = dinov3_copy(tiny_dinov3, tmp_path / "dinov3")
    fault.make(folder)
    config = {"features": {"encoder": "dinov3_vitl16", "weights": str(folder)}, "cohorts": {}}
    assert_preflight_fails(tmp_path, config, fault.names, skip="versions,gpu,slides,config")


def test_whole_weights_without_a_digest_pass_their_shape_check(tiny_dinov3: Path, tmp_path: Path) -> None:
    config = {"features": {"encoder": "dinov3_vitl16", "weights": str(tiny_dinov3)}, "cohorts": {}}
    code, failed = run_doctor(tmp_path, config, skip="versions,gpu,slides,config")
    report = json.loads((tmp_path / "report.json").read_text())
    assert code == 0, failed
    assert any("tensors fit the architecture" in r["message"] for r in report["results"])


EFFICIENTNET_FAULTS = [
    ("efficientnet-pth-garbage", lambda p: garbage(p)),
    ("efficientnet-pth-truncated", lambda p: truncate(p, 0.5)),
    ("efficientnet-pth-tensor-missing", "drop"),
]


@pytest.mark.parametrize("make", [c[1] for c in EFFICIENTNET_FAULTS], ids=[c[0] for c in EFFICIENTNET_FAULTS])
def test_configured_efficientnet_weights_are_checked(tmp_path: Path, make: Callable | str) -> None:
    import torch

    from bitro.features.efficientnet import packaged_weights

    path = tmp_path / "lite0.pth"
    shutil.copy(packaged_weights(), path)
    if make == "drop":
        state = torch.load(path, map_location="cpu", weights_only=True)
        state.pop("_fc.bias")
        torch.save(state, path)
    else:
        make(path)
    config = {"features": {"encoder": "efficientnet_lite0", "weights": str(path)}, "cohorts": {}}
    assert_preflight_fails(tmp_path, config, "lite0.pth", skip="versions,gpu,slides,config")


@pytest.mark.parametrize("fault_id", ["dinov3-truncated-no-digest", "dinov3-tensor-wrong-shape"])
def test_embed_refuses_bad_weights_in_one_line(
    tiny_dinov3: Path, tmp_path: Path, capsys: pytest.CaptureFixture, fault_id: str
) -> None:
    folder = dinov3_copy(tiny_dinov3, tmp_path / "dinov3")
    next(f for f in WEIGHTS_FAULTS if f.id == fault_id).make(folder)
    out = tmp_path / "out" / "embeddings.npy"
    argv = ["embed", "--crops", str(tmp_path / "crops.zarr"), "--encoder", "dinov3_vitl16"]
    assert_verb_fails([*argv, "--weights", str(folder), "--out", str(out)], "dinov3", out, capsys)


# --------------------------------------------------------------------------------------------------
# the command line
# --------------------------------------------------------------------------------------------------


def _embeddings(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "embeddings.npy", np.zeros((n, 16), np.float16))
    (folder / "embeddings.json").write_text(json.dumps({"n_cells": n, "dim": 16}))
    return folder / "embeddings.npy"


def _empty_cells(folder: Path) -> Path:
    from bitro.preprocess.cells import CELLS_COLUMNS, write_cells

    folder.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame({c: pd.Series(dtype=object) for c in CELLS_COLUMNS})
    table = table.astype({"x_um": float, "y_um": float, "x_px": float, "y_px": float, "unit_id": int})
    write_cells(table, folder / "cells.parquet")
    return folder / "cells.parquet"


def _cli_cases(valid: Valid, tmp: Path) -> dict[str, tuple[list[str], str, Path | None]]:
    """id → (argv, what the error must name, the output that must not exist)."""
    hest = ["--format", "hest", "--root", str(valid.demo / "hest"), "--sample", "DEMO01"]
    out = tmp / "out"
    folds, genes = str(valid.work / "folds.json"), str(valid.work / "genes.txt")
    targets = [str(valid.work / s / "targets.h5ad") for s in HEST]
    one = write_sheet(tmp / "one.tsv", [("DEMO01", "P1")])
    dup = write_sheet(tmp / "dup.tsv", [("DEMO01", "P1"), ("DEMO01", "P2")])
    contradiction = write_sheet(
        tmp / "contra.tsv", [(s, s[:12] + ("-B" if s.endswith("DX2") else "")) for s in valid.tcga_ids]
    )
    two_patients = write_sheet(tmp / "two.tsv", [(s, s[:12]) for s in valid.tcga_ids[:3]])
    no_id = tmp / "no_id.tsv"
    no_id.write_text("name\tpatient_id\nDEMO01\tP1\n")
    empty_targets = tmp / "empty_targets.h5ad"
    adata = ad.read_h5ad(targets[0])
    adata[:0].copy().write_h5ad(empty_targets)
    empty_embeddings = _embeddings(tmp / "empty_emb", 0)
    empty_cells = _empty_cells(tmp / "empty_cells")
    garbage_slide = tmp / "garbage.tif"
    garbage(garbage_slide)
    truncated_slide = tmp / "truncated.tif"
    shutil.copy(valid.demo / "hest" / "wsis" / "DEMO01.tif", truncated_slide)
    truncate(truncated_slide)
    fold_args = ["--samples-dir", str(valid.work)]
    return {
        "targets-without-units": (
            ["targets", *hest, "--out", str(out / "t.h5ad")],
            "--units",
            out / "t.h5ad",
        ),
        "targets-units-missing": (
            ["targets", *hest, "--units", str(tmp / "nope.parquet"), "--out", str(out / "t.h5ad")],
            "nope.parquet",
            out / "t.h5ad",
        ),
        "targets-units-garbage": (
            ["targets", *hest, "--units", str(garbage_slide), "--out", str(out / "t.h5ad")],
            "garbage.tif",
            out / "t.h5ad",
        ),
        "train-unknown-fold": (
            [
                "train",
                "--samples-dir",
                str(valid.work),
                "--folds",
                folds,
                "--fold",
                "fold9",
                "--genes",
                genes,
                "--out-dir",
                str(out / "fold9"),
            ],
            "folds.json",
            out / "fold9" / "model.safetensors",
        ),
        "train-folds-missing": (
            [
                "train",
                "--samples-dir",
                str(valid.work),
                "--folds",
                str(tmp / "none.json"),
                "--fold",
                "fold0",
                "--genes",
                genes,
                "--out-dir",
                str(out / "fold0"),
            ],
            "none.json",
            out / "fold0" / "model.safetensors",
        ),
        "predict-unknown-fold": (
            [
                "predict",
                "--samples-dir",
                str(valid.work),
                "--model-dir",
                str(tmp),
                "--folds",
                folds,
                "--fold",
                "fold7",
                "--out-dir",
                str(out / "p"),
            ],
            "folds.json",
            out / "p" / "predictions.h5ad",
        ),
        "cohort-pca-unknown-fold": (
            ["cohort-pca", "--folds", folds, "--fold", "fold8", *fold_args, "--out", str(out / "pca.npz")],
            "folds.json",
            out / "pca.npz",
        ),
        "phenotypes-unknown-fold": (
            ["phenotypes", "--folds", folds, "--fold", "fold8", *fold_args, "--out", str(out / "ph.npz")],
            "folds.json",
            out / "ph.npz",
        ),
        "reduce-empty-embeddings": (
            ["reduce", "--embeddings", str(empty_embeddings), "--out", str(out / "features.npy")],
            "embeddings.npy",
            out / "features.npy",
        ),
        "reduce-embeddings-missing": (
            ["reduce", "--embeddings", str(tmp / "no.npy"), "--out", str(out / "features.npy")],
            "no.npy",
            out / "features.npy",
        ),
        "graph-empty-cells": (
            ["graph", "--cells", str(empty_cells), "--out", str(out / "graph.npz")],
            "cells.parquet",
            out / "graph.npz",
        ),
        "graph-cells-missing": (
            ["graph", "--cells", str(tmp / "none.parquet"), "--out", str(out / "graph.npz")],
            "none.parquet",
            out / "graph.npz",
        ),
        "genes-more-than-available": (
            [
                "genes",
                "--targets",
                *targets,
                "--level",
                "st",
                "--n-genes",
                "500",
                "--out",
                str(out / "g.txt"),
            ],
            str(valid.work),
            out / "g.txt",
        ),
        "genes-empty-sample": (
            [
                "genes",
                "--targets",
                targets[0],
                str(empty_targets),
                "--level",
                "st",
                "--out",
                str(out / "g.txt"),
            ],
            "empty_targets.h5ad",
            out / "g.txt",
        ),
        "genes-list-missing": (
            [
                "genes",
                "--targets",
                *targets,
                "--level",
                "st",
                "--gene-list",
                str(tmp / "nolist.txt"),
                "--out",
                str(out / "g.txt"),
            ],
            "nolist.txt",
            out / "g.txt",
        ),
        "folds-one-sample": (
            [
                "folds",
                "--cohort",
                "c",
                "--level",
                "st",
                "--sample-sheet",
                str(one),
                "--out",
                str(out / "f.json"),
            ],
            "one.tsv",
            out / "f.json",
        ),
        "folds-duplicated-sample-id": (
            [
                "folds",
                "--cohort",
                "c",
                "--level",
                "st",
                "--sample-sheet",
                str(dup),
                "--out",
                str(out / "f.json"),
            ],
            "dup.tsv",
            out / "f.json",
        ),
        "folds-sheet-contradicts-tcga-barcodes": (
            [
                "folds",
                "--cohort",
                "c",
                "--level",
                "bulk",
                "--sample-sheet",
                str(contradiction),
                "--out",
                str(out / "f.json"),
            ],
            "contra.tsv",
            out / "f.json",
        ),
        "folds-bulk-two-patients": (
            [
                "folds",
                "--cohort",
                "c",
                "--level",
                "bulk",
                "--sample-sheet",
                str(two_patients),
                "--out",
                str(out / "f.json"),
            ],
            "two.tsv",
            out / "f.json",
        ),
        "folds-sheet-missing": (
            [
                "folds",
                "--cohort",
                "c",
                "--level",
                "st",
                "--sample-sheet",
                str(tmp / "x.tsv"),
                "--out",
                str(out / "f.json"),
            ],
            "x.tsv",
            out / "f.json",
        ),
        "folds-sheet-without-sample-id": (
            [
                "folds",
                "--cohort",
                "c",
                "--level",
                "st",
                "--sample-sheet",
                str(no_id),
                "--out",
                str(out / "f.json"),
            ],
            "no_id.tsv",
            out / "f.json",
        ),
        "info-garbage-slide": (["info", str(garbage_slide)], "garbage.tif", None),
        "info-truncated-slide": (["info", str(truncated_slide)], "truncated.tif", None),
        "embed-crop-mode-without-crops": (["embed", "--out", str(out / "e.npy")], "--crops", out / "e.npy"),
        "crops-empty-cells": (
            ["crops", *hest, "--cells", str(empty_cells), "--out", str(out / "crops.zarr")],
            "cells.parquet",
            out / "crops.zarr",
        ),
        "stain-reference-missing": (
            ["stain", *hest, "--reference", str(tmp / "ref.json"), "--out", str(out / "stain.json")],
            "ref.json",
            out / "stain.json",
        ),
        "transfer-mode-none": (
            [
                "transfer",
                "--target-samples-dir",
                str(valid.work),
                "--target-folds",
                folds,
                "--fold",
                "fold0",
                "--target-genes",
                genes,
                "--pretrain-dir",
                str(tmp),
                "--mode",
                "none",
                "--out-dir",
                str(out / "t"),
            ],
            "--mode none",
            out / "t" / "model.safetensors",
        ),
    }


CLI_IDS = [
    "targets-without-units",
    "targets-units-missing",
    "targets-units-garbage",
    "train-unknown-fold",
    "train-folds-missing",
    "predict-unknown-fold",
    "cohort-pca-unknown-fold",
    "phenotypes-unknown-fold",
    "reduce-empty-embeddings",
    "reduce-embeddings-missing",
    "graph-empty-cells",
    "graph-cells-missing",
    "genes-more-than-available",
    "genes-empty-sample",
    "genes-list-missing",
    "folds-one-sample",
    "folds-duplicated-sample-id",
    "folds-sheet-contradicts-tcga-barcodes",
    "folds-bulk-two-patients",
    "folds-sheet-missing",
    "folds-sheet-without-sample-id",
    "info-garbage-slide",
    "info-truncated-slide",
    "embed-crop-mode-without-crops",
    "crops-empty-cells",
    "stain-reference-missing",
    "transfer-mode-none",
]


@pytest.mark.parametrize("case_id", CLI_IDS)
def test_cli_faults_are_one_line_errors(
    valid: Valid, tmp_path: Path, capsys: pytest.CaptureFixture, case_id: str
) -> None:
    argv, names, out = _cli_cases(valid, tmp_path)[case_id]
    assert_verb_fails(argv, names, out, capsys)


def test_the_up_to_switch_keeps_what_there_is(valid: Valid, tmp_path: Path) -> None:
    targets = [str(valid.work / s / "targets.h5ad") for s in HEST]
    out = tmp_path / "genes.txt"
    assert (
        main(
            [
                "genes",
                "--targets",
                *targets,
                "--level",
                "st",
                "--n-genes",
                "500",
                "--up-to",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    kept = out.read_text().split()
    assert 0 < len(kept) < 500


def test_a_verb_shows_the_traceback_with_verbose(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "f.npy"
    assert main(["-v", "reduce", "--embeddings", str(tmp_path / "no.npy"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("bitro reduce: error: ")


# --------------------------------------------------------------------------------------------------
# no patient on two sides of a split
# --------------------------------------------------------------------------------------------------


def test_no_patient_can_sit_on_two_sides_whatever_the_sheet_says(valid: Valid, tmp_path: Path) -> None:
    from bitro.folds.splits import Fold, Folds, patient_split, write_folds

    ids = valid.tcga_ids
    # A sheet that gives the two slides of TCGA-DM-A001 two patient ids is refused by `bitro folds` …
    contradiction = write_sheet(
        tmp_path / "s.tsv", [(s, s[:12] + ("-B" if s.endswith("DX2") else "")) for s in ids]
    )
    argv = ["folds", "--cohort", "c", "--level", "bulk", "--sample-sheet", str(contradiction)]
    assert main([*argv, "--out", str(tmp_path / "f.json")]) == 2
    # … and a split made from such ids anyway cannot be written: the barcodes say who is who.
    leaky = Folds("c", "patient", [Fold("fold0", train=[ids[0], ids[2]], validation=[ids[3]], test=[ids[1]])])
    with pytest.raises(ValueError, match="TCGA-DM-A001"):
        write_folds(leaky, tmp_path / "leaky.json")
    # Every split of a sheet that agrees with its barcodes keeps each patient on one side.
    for seed in range(20):
        for n_folds in (1, 3):
            many = [f"TCGA-DM-B{p:03d}-01Z-00-DX{d}" for p in range(8) for d in (1, 2)]
            folds = patient_split("c", many, [s[:12] for s in many], n_folds=n_folds, seed=seed)
            write_folds(folds, tmp_path / "ok.json")
            for fold in folds.folds:
                sides = [{s[:12] for s in getattr(fold, r)} for r in ("train", "validation", "test")]
                assert not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])


# --------------------------------------------------------------------------------------------------
# in_tissue and empty samples in training
# --------------------------------------------------------------------------------------------------


def test_spots_outside_tissue_neither_train_nor_score() -> None:
    from bitro.features.graph import UnitGraphs
    from bitro.folds.bags import make_bags
    from bitro.folds.samples import SampleData

    graph = UnitGraphs(
        unit_ids=np.array([0, 1, 2]),
        cell_index=np.arange(3, dtype=np.int32),
        cell_offsets=np.array([0, 1, 2, 3]),
        edges=np.zeros((2, 0), np.int32),
        edge_offsets=np.zeros(4, np.int64),
        k=8,
        self_loops=False,
    )
    sample = SampleData(
        "s",
        "st",
        np.zeros((3, 4), np.float32),
        np.zeros((3, 2), np.float32),
        np.zeros(3, np.int64),
        np.arange(3),
        graph,
        np.zeros((3, 2)),
        np.ones((3, 2)),
        "counts",
        np.array([True, False, True]),
    )
    assert [b.target_row for b in make_bags(sample, 0)] == [0, 2]


# --------------------------------------------------------------------------------------------------
# faults no check can see
# --------------------------------------------------------------------------------------------------

#: id → why no check can tell it from a valid input.
UNDETECTABLE = {
    "segmentation-scaled-by-0.9": (
        "outlines 10 % too small still lie on the slide and look like nuclei: only the image could tell, "
        "and the preflight does not segment"
    ),
    "spots-shifted-by-half-a-spot": (
        "spots moved within the slide are still spots on the slide; whether they sit on the right tissue "
        "needs the expression compared with the image, which is what the model learns"
    ),
    "sheet-swaps-two-sample-ids": (
        "a sheet that names two existing samples in swapped rows lists valid, distinct samples; nothing "
        "records which slide a patient id belongs to outside TCGA barcodes"
    ),
}


def test_the_undetectable_faults_pass_the_preflight(valid: Valid, tmp_path: Path) -> None:
    cohort = hest_cohort(valid, tmp_path) | {"segmentation": {"backend": "precomputed"}}
    root = Path(cohort["root"])
    _seg_edit(_scaled(0.9))(root)
    spacing = json.loads(_meta(root).read_text())["spot_diameter"] / 2 / 0.5
    edit_h5ad(_spots(root), _spatial(lambda xy: xy + spacing))
    write_sheet(Path(cohort["samples"]), [("DEMO02", "P0"), ("DEMO01", "P1")])
    code, failed = run_doctor(tmp_path, {"cohorts": {"c": cohort}})
    assert code == 0, failed


def test_the_corpus_covers_the_cases_tried() -> None:
    """At least the 77 bad inputs of the issue, each with a readable id, none twice."""
    ids = (
        [f"hest/{f.id}" for f in HEST_FAULTS]
        + [f"hest-verbs/{c[0]}" for c in HEST_VERB_FAULTS]
        + [f"tcga/{f.id}" for f in TCGA_FAULTS]
        + [f"tcga/{c[0]}" for c in TCGA_SHEET_FAULTS]
        + [f"xenium/{f.id}" for f in XENIUM_FAULTS]
        + [f"sheets/{c[0]}" for c in SHEET_FAULTS]
        + [f"config/{c[0]}" for c in CONFIG_FAULTS]
        + [f"weights/{f.id}" for f in WEIGHTS_FAULTS]
        + [f"weights/{c[0]}" for c in EFFICIENTNET_FAULTS]
        + [f"cli/{i}" for i in CLI_IDS]
    )
    assert len(ids) >= 77 and len(set(ids)) == len(ids)


# --------------------------------------------------------------------------------------------------
# the workflow stops before any per-sample job
# --------------------------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]


def snakemake(workdir: Path, *args: str) -> tuple[int, str]:
    done = run_snakemake(workdir, *args, timeout=300)
    return done.returncode, done.stdout


def workflow_project(valid: Valid, workdir: Path, cohort: dict) -> list[str]:
    """A project of one cohort; the per-sample files a run of its first rules would make."""
    (workdir / "config").mkdir(parents=True)
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump({"cohorts": {"c": cohort}}))
    sheet = pd.read_csv(cohort["samples"], sep="\t", dtype=str)
    return [f"results/c/samples/{s}/tissue.npz" for s in sheet["sample_id"]]


@pytest.mark.parametrize(
    ("layout", "rows"),
    [
        ("hest", [("DEMO01", "P1")]),
        ("hest", [("DEMO01", "P"), ("DEMO02", "P")]),
        ("tcga", "contradiction"),
        ("tcga", "two-patients"),
    ],
    ids=["st-one-sample", "st-one-patient", "tcga-sheet-contradicts-barcodes", "bulk-two-patients"],
)
def test_a_dry_run_stops_on_a_cohort_that_cannot_be_split(
    valid: Valid, tmp_path: Path, layout: str, rows: list | str
) -> None:
    if layout == "hest":
        cohort = hest_cohort(valid, tmp_path)
        write_sheet(Path(cohort["samples"]), list(rows))
    else:
        cohort = tcga_cohort(valid, tmp_path)
        ids = valid.tcga_ids
        if rows == "contradiction":
            write_sheet(Path(cohort["samples"]), _split_patient([(s, s[:12]) for s in ids]))
        else:
            write_sheet(Path(cohort["samples"]), [(s, s[:12]) for s in ids if "A003" not in s])
    workflow_project(valid, tmp_path, cohort)
    code, out = snakemake(tmp_path, "--dry-run")
    assert code != 0 and Path(cohort["samples"]).name in out, out
    assert "rule prepare" not in out and "rule doctor" not in out


def test_a_real_run_stops_at_the_preflight_before_any_per_sample_job(valid: Valid, tmp_path: Path) -> None:
    """Normalised values where counts are required: the run stops at the check, nothing per sample made."""
    cohort = hest_cohort(valid, tmp_path)
    edit_h5ad(Path(cohort["root"]) / "st" / "DEMO02.h5ad", _log1p)
    tissue = workflow_project(valid, tmp_path, cohort)
    code, out = snakemake(tmp_path, "--dry-run", *tissue)
    assert code == 0 and "rule doctor" in out  # the plan holds the check first
    code, out = snakemake(tmp_path, *tissue)
    assert code != 0
    assert "DEMO02.h5ad" in out and "raw integer counts" in out, out
    assert not (tmp_path / "results" / "c" / "samples").exists()
    assert not (tmp_path / "results" / "doctor" / "c.ok").exists()
