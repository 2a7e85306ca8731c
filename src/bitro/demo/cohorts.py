"""Write the demo cohorts in the HEST-1k, TCGA and Xenium layouts (see docs/formats.md)."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anndata as ad
import geopandas as gpd
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.spatial import cKDTree
from tqdm.auto import tqdm

from bitro.demo.config import GENERATOR_VERSION, DemoConfig
from bitro.demo.expression import (
    HOUSEKEEPING,
    MITO,
    PATIENT_GENES,
    RIBO,
    ExpressionModel,
    build_expression_model,
    cell_means,
    sample_counts,
    tpm,
)
from bitro.demo.morphology import CELL_TYPES, CellTable, nucleus_outline, polygons_from_vertices
from bitro.demo.render import SlideRenderer, SlideStyle, draw_slide_style, write_pyramidal_tiff
from bitro.demo.segmentation import simulate_cellvit, write_cellvit
from bitro.demo.tissue import (
    TissueFields,
    TissueParams,
    draw_patient_params,
    generate_cells,
    jitter_section_params,
)
from bitro.layout import (
    HEST_EXPRESSION_DIR,
    HEST_METADATA_DIR,
    HEST_SEGMENTATION_DIR,
    HEST_SLIDE_DIR,
    TCGA_EXPRESSION_DIR,
    XENIUM_ALIGNMENT,
    XENIUM_CELL_BOUNDARIES,
    XENIUM_CELLS,
    XENIUM_EXPERIMENT,
    XENIUM_HE_IMAGE,
    XENIUM_MATRIX,
    XENIUM_NUCLEUS_BOUNDARIES,
    hest_expression,
    hest_metadata,
    hest_segmentations,
    hest_slides,
    tcga_expression,
    tcga_slides_dir,
)

SPOT_DIAMETER_UM = 55.0
SPOT_PITCH_UM = 100.0
XENIUM_PIXEL_SIZE = 0.2125
TCGA_PROJECT = "TCGA-DM"


# --------------------------------------------------------------------------- ids
def _tcga_layout(cfg: DemoConfig) -> list[tuple[str, list[str]]]:
    """(patient barcode, [slide barcodes]) of the TCGA cohort."""
    out = []
    for i in range(1, cfg.n_tcga_patients + 1):
        pat = f"{TCGA_PROJECT}-A{i:03d}"
        n = 2 if i <= cfg.tcga_two_slide_patients else 1
        out.append((pat, [f"{pat}-01Z-00-DX{k}" for k in range(1, n + 1)]))
    return out


def demo_sample_ids(config: DemoConfig | None = None) -> dict[str, list[str]]:
    """Sample ids of each cohort of the demo.

    Parameters
    ----------
    config
        Demo configuration (default :class:`DemoConfig`).

    Returns
    -------
    dict
        ``{"hest": [...], "tcga": [slide barcodes], "xenium": [...]}``.
    """
    cfg = config or DemoConfig()
    n_hest = cfg.n_hest_patients * cfg.hest_sections_per_patient
    xen = ["XENIUM_DEMO" if i == 0 else f"XENIUM_DEMO{i + 1}" for i in range(cfg.n_xenium)]
    return {
        "hest": [f"DEMO{i:02d}" for i in range(1, n_hest + 1)],
        "tcga": [s for _, slides in _tcga_layout(cfg) for s in slides],
        "xenium": xen,
    }


# --------------------------------------------------------------------------- slide jobs
@dataclass
class SlideJob:
    """One slide to lay out and render (runs in a worker process)."""

    slide_id: str
    kind: str
    patient: str
    width_um: float
    height_um: float
    params: TissueParams
    seed: list[int]
    tif_path: Path
    mpp: float
    quality: int


@dataclass
class SlideResult:
    """What a worker hands back: the planted cells and the slide's properties."""

    job: SlideJob
    cells: CellTable
    style: SlideStyle
    tissue: np.ndarray
    grid_um: float
    width_px: int
    height_px: int
    levels: list[tuple[int, int]]
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    def in_tissue(self, x_um: np.ndarray, y_um: np.ndarray) -> np.ndarray:
        """Whether µm positions are inside the tissue outline."""
        from scipy import ndimage

        coords = np.stack([np.asarray(y_um) / self.grid_um, np.asarray(x_um) / self.grid_um])
        return ndimage.map_coordinates(self.tissue, coords, order=1, mode="nearest") > 0


def run_slide_job(job: SlideJob, progress: bool = False) -> SlideResult:
    """Lay out the tissue, place cells and render the slide to ``job.tif_path``."""
    t0 = time.perf_counter()
    rng = np.random.default_rng([*job.seed, 1])
    fields = TissueFields(rng, job.width_um, job.height_um, job.params)
    cells = generate_cells(fields, [*job.seed, 2])
    style = draw_slide_style(np.random.default_rng([*job.seed, 3]))
    renderer = SlideRenderer(cells, fields, style, job.mpp, [*job.seed, 4])
    w = round(job.width_um / job.mpp)
    h = round(job.height_um / job.mpp)
    levels = write_pyramidal_tiff(
        job.tif_path,
        renderer.render,
        h,
        w,
        mpp=job.mpp,
        quality=job.quality,
        progress=progress,
        desc=job.slide_id,
    )
    return SlideResult(
        job=job,
        cells=cells,
        style=style,
        tissue=fields.tissue,
        grid_um=fields.grid_um,
        width_px=w,
        height_px=h,
        levels=levels,
        seconds=time.perf_counter() - t0,
    )


def _run_jobs(jobs: list[SlideJob], workers: int, progress: bool) -> dict[str, SlideResult]:
    out: dict[str, SlideResult] = {}
    bar = tqdm(total=len(jobs), desc="demo slides", disable=not progress)
    n = min(max(1, workers), len(jobs), os.cpu_count() or 1)
    if n <= 1:
        for j in jobs:
            out[j.slide_id] = run_slide_job(j)
            bar.update()
    else:
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
        with ProcessPoolExecutor(max_workers=n, mp_context=ctx) as ex:
            # largest first for load balance
            order = sorted(jobs, key=lambda j: -j.width_um * j.height_um)
            for res in ex.map(run_slide_job, order):
                out[res.job.slide_id] = res
                bar.update()
    bar.close()
    return out


# --------------------------------------------------------------------------- tables
def _cell_obs(res: SlideResult, spot: np.ndarray | None = None) -> pd.DataFrame:
    c = res.cells
    mpp = res.job.mpp
    n = len(c)
    return pd.DataFrame(
        {
            "cell_type": pd.Categorical(
                np.array(CELL_TYPES)[c.cell_type.astype(np.int64)], categories=CELL_TYPES
            ),
            "x_px": c.x / mpp,
            "y_px": c.y / mpp,
            "x_um": c.x,
            "y_um": c.y,
            "nucleus_area_um2": c.nucleus_area().astype(np.float64),
            "spot": spot if spot is not None else np.full(n, "", dtype=object),
            "depth_um": c.depth.astype(np.float64),
        },
        index=pd.Index([f"cell{i:06d}" for i in range(n)], name="cell_id"),
    )


def _write_truth(
    truth_dir: Path,
    sid: str,
    res: SlideResult,
    model: ExpressionModel,
    counts: np.ndarray,
    layers: dict[str, np.ndarray],
    spot: np.ndarray | None = None,
) -> None:
    obs = _cell_obs(res, spot)
    var = pd.DataFrame({"gene_ids": model.ids}, index=pd.Index(model.symbols))
    adata = ad.AnnData(
        X=sp.csr_matrix(counts),
        obs=obs,
        var=var,
        layers={k: sp.csr_matrix(v) for k, v in layers.items()},
    )
    adata.write_h5ad(truth_dir / f"{sid}_cells.h5ad")
    geom = polygons_from_vertices(nucleus_outline(res.cells, scale=1.0 / res.job.mpp))
    gdf = gpd.GeoDataFrame(
        {"cell_id": obs.index.to_numpy(), "cell_type": obs["cell_type"].astype(str).to_numpy()},
        geometry=gpd.GeoSeries(geom),
    )
    gdf.to_parquet(truth_dir / f"{sid}_cells.parquet")


def _visium_spots(rng: np.random.Generator, width_px: int, height_px: int, mpp: float) -> pd.DataFrame:
    """Visium lattice (55 µm spots, 100 µm pitch) over the image; spots wholly inside the image."""
    r_px = SPOT_DIAMETER_UM / 2 / mpp
    dx = SPOT_PITCH_UM / 2 / mpp  # one array_col step
    dy = SPOT_PITCH_UM * np.sqrt(3) / 2 / mpp  # one array_row step
    ox = rng.uniform(0, 2 * dx)
    oy = rng.uniform(0, dy)
    row0, col0 = int(rng.integers(3, 10)) * 2, int(rng.integers(3, 10)) * 2
    rows = []
    for r in range(int(height_px / dy) + 2):
        for c in range(int(width_px / dx) + 3):
            if (r + c) % 2:
                continue
            x = round(ox + (c - 1) * dx)
            y = round(oy + (r - 1) * dy)
            if x - r_px < 0 or y - r_px < 0 or x + r_px > width_px or y + r_px > height_px:
                continue
            rows.append((r + row0, c + col0, x, y))
    df = pd.DataFrame(rows, columns=["array_row", "array_col", "pxl_col_in_fullres", "pxl_row_in_fullres"])
    # keep (array_row + array_col) even as on a Visium slide
    df = df[(df.array_row + df.array_col) % 2 == 0].reset_index(drop=True)
    bases = np.array(list("ACGT"))
    seen: set[str] = set()
    bcs = []
    while len(bcs) < len(df):
        b = "".join(bases[rng.integers(0, 4, 16)]) + "-1"
        if b not in seen:
            seen.add(b)
            bcs.append(b)
    df.index = pd.Index(bcs)
    return df


# --------------------------------------------------------------------------- cohorts
def _patient_effects(rng: np.random.Generator) -> dict[str, float]:
    eff = {"proliferation": float(rng.normal(0.0, 0.5))}
    for g, sd in zip(PATIENT_GENES, (1.0, 0.8, 0.8), strict=True):
        eff[g] = float(rng.normal(0.0, sd))
    return eff


def _counts_for(
    cfg: DemoConfig, model: ExpressionModel, res: SlideResult, effects: dict[str, float], key: list[int]
) -> np.ndarray:
    mu = cell_means(model, res.cells, effects)
    return sample_counts(np.random.default_rng([cfg.seed, 60, *key]), mu, cfg.nb_dispersion)


def _write_hest(
    root: Path,
    cfg: DemoConfig,
    model: ExpressionModel,
    results: dict[str, SlideResult],
    patients: dict[str, tuple[TissueParams, dict[str, float]]],
    params: dict[str, Any],
) -> None:
    for d in (HEST_EXPRESSION_DIR, HEST_METADATA_DIR, HEST_SEGMENTATION_DIR, "truth"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for i, sid in enumerate(demo_sample_ids(cfg)["hest"]):
        res = results[sid]
        patient = res.job.patient
        mpp = cfg.mpp
        counts = _counts_for(cfg, model, res, patients[patient][1], [1, i])
        rng = np.random.default_rng([cfg.seed, 70, i])
        spots = _visium_spots(rng, res.width_px, res.height_px, mpp)
        sx = spots["pxl_col_in_fullres"].to_numpy(float)
        sy = spots["pxl_row_in_fullres"].to_numpy(float)
        in_tissue = res.in_tissue(sx * mpp, sy * mpp).astype(np.int64)
        # cells whose centroid lies inside a spot
        cx, cy = res.cells.x / mpp, res.cells.y / mpp
        n_cells = len(res.cells)
        cell_spot = np.full(n_cells, -1, dtype=np.int64)
        if len(spots) and n_cells:
            d, j = cKDTree(np.c_[sx, sy]).query(np.c_[cx, cy])
            inside = d <= SPOT_DIAMETER_UM / 2 / mpp
            cell_spot[inside] = j[inside]
        raw_spot = np.zeros((len(spots), model.n_genes), dtype=np.int64)
        np.add.at(raw_spot, cell_spot[cell_spot >= 0], counts[cell_spot >= 0])
        tot = raw_spot.sum(axis=1)
        mean_tot = tot[in_tissue == 1].mean() if (in_tissue == 1).any() and tot.any() else 1.0
        capture = float(min(1.0, cfg.st_umi_per_spot / max(mean_tot, 1.0) * np.exp(rng.normal(0, 0.15))))
        thinned = np.zeros_like(counts)
        m = cell_spot >= 0
        thinned[m] = rng.binomial(counts[m], capture)
        spot_counts = np.zeros((len(spots), model.n_genes), dtype=np.int64)
        np.add.at(spot_counts, cell_spot[m], thinned[m])
        spot_names = np.where(cell_spot >= 0, spots.index.to_numpy()[np.maximum(cell_spot, 0)], "")
        obs = pd.DataFrame(
            {
                "array_row": spots["array_row"].to_numpy(np.int64),
                "array_col": spots["array_col"].to_numpy(np.int64),
                "in_tissue": in_tissue,
                "pxl_col_in_fullres": spots["pxl_col_in_fullres"].to_numpy(np.int64),
                "pxl_row_in_fullres": spots["pxl_row_in_fullres"].to_numpy(np.int64),
            },
            index=spots.index,
        )
        adata = ad.AnnData(
            X=sp.csr_matrix(spot_counts.astype(np.int32)),
            obs=obs,
            var=pd.DataFrame({"gene_ids": model.ids}, index=pd.Index(model.symbols)),
            obsm={"spatial": np.c_[sx, sy].astype(np.float64)},
        )
        adata.write_h5ad(hest_expression(root, sid))
        meta = {
            "pixel_size_um_estimated": mpp,
            "pixel_size_um_embedded": mpp,
            "spot_diameter": SPOT_DIAMETER_UM,
            "inter_spot_dist": SPOT_PITCH_UM,
            "st_technology": "Visium",
            "species": "Homo sapiens",
            "organ": "Breast",
            "oncotree_code": "IDC",
            "patient": patient,
            "tissue": "Breast",
            "disease_state": "Cancer",
            "fullres_px_width": res.width_px,
            "fullres_px_height": res.height_px,
            "magnification": "20x",
            "spots_under_tissue": int(in_tissue.sum()),
            "nb_genes": model.n_genes,
        }
        hest_metadata(root, sid).write_text(json.dumps(meta, indent=2))
        seg = simulate_cellvit(np.random.default_rng([cfg.seed, 80, 1, i]), res.cells, mpp)
        parquet, geojson, _ = hest_segmentations(root, sid)
        write_cellvit(seg, parquet, geojson)
        _write_truth(root / "truth", sid, res, model, counts, {"thinned": thinned}, spot_names.astype(object))
        params["slides"][sid] = _slide_params(res) | {"capture_efficiency": capture}
    _write_params(root, cfg, model, params)


def _slide_params(res: SlideResult) -> dict[str, Any]:
    ct, n = np.unique(res.cells.cell_type, return_counts=True)
    return {
        "patient": res.job.patient,
        "stain": res.style.to_dict(),
        "tissue": res.job.params.to_dict(),
        "width_px": res.width_px,
        "height_px": res.height_px,
        "n_cells": len(res.cells),
        "cell_type_counts": {CELL_TYPES[int(t)]: int(k) for t, k in zip(ct, n, strict=True)},
    }


def _write_params(root: Path, cfg: DemoConfig, model: ExpressionModel, params: dict[str, Any]) -> None:
    out = {
        "seed": cfg.seed,
        "generator_version": GENERATOR_VERSION,
        "config": cfg.to_dict(),
        "genes": {"symbols": model.symbols, "ids": model.ids, "lengths": model.lengths.tolist()},
        "type_profiles": {t: model.profiles[k].tolist() for k, t in enumerate(CELL_TYPES)},
        **params,
    }
    (root / "truth").mkdir(parents=True, exist_ok=True)
    (root / "truth" / "params.json").write_text(json.dumps(out, indent=1))


def _write_tcga(
    root: Path,
    cfg: DemoConfig,
    model: ExpressionModel,
    results: dict[str, SlideResult],
    patients: dict[str, tuple[TissueParams, dict[str, float]]],
    params: dict[str, Any],
) -> None:
    for d in (TCGA_EXPRESSION_DIR, "truth"):
        (root / d).mkdir(parents=True, exist_ok=True)
    bulk: dict[str, np.ndarray] = {}
    k = 0
    for pat, slides in _tcga_layout(cfg):
        total = np.zeros(model.n_genes, dtype=np.int64)
        for sid in slides:
            res = results[sid]
            counts = _counts_for(cfg, model, res, patients[pat][1], [2, k])
            k += 1
            total += counts.sum(axis=0)
            _write_truth(root / "truth", sid, res, model, counts, {})
            params["slides"][sid] = _slide_params(res) | {"file": res.job.tif_path.name}
        aliquot = f"{pat}-01A-11R-A00Z-07"
        bulk[aliquot] = total
        params["aliquots"][aliquot] = {"slides": slides, "total_counts": int(total.sum())}
    counts = np.stack(list(bulk.values()), axis=1).astype(np.float64)
    t = tpm(counts, model.lengths)
    df = pd.DataFrame(t, columns=list(bulk.keys()))
    df.insert(0, "gene_id", model.ids)
    tpm_path, gene_map_path = tcga_expression(root)
    df.to_csv(tpm_path, sep="\t", index=False, float_format="%.6g")
    model.gene_table().to_csv(gene_map_path, sep="\t", index=False)
    _write_params(root, cfg, model, params)


def _xenium_alignment(rng: np.random.Generator, width_px: int, height_px: int, mpp: float) -> np.ndarray:
    """H&E px → morphology px: scale (mpp / 0.2125, ±1 %), rotation (±3°) and a translation."""
    s = mpp / XENIUM_PIXEL_SIZE * float(np.exp(rng.normal(0, 0.01)))
    th = np.radians(rng.uniform(-3.0, 3.0))
    a = np.array([[s * np.cos(th), -s * np.sin(th)], [s * np.sin(th), s * np.cos(th)]])
    corners = np.array([[0, 0], [width_px, 0], [0, height_px], [width_px, height_px]], float) @ a.T
    t = -corners.min(axis=0) + rng.uniform(150.0, 600.0, 2)
    m = np.eye(3)
    m[:2, :2] = a
    m[:2, 2] = t
    return m


def _xenium_cell_id(i: int) -> str:
    letters = "abcdefghijklmnop"
    v = i + 0x1A2B3C4
    s = "".join(letters[(v >> (4 * k)) & 0xF] for k in range(7, -1, -1))
    return f"{s}-1"


def _write_xenium(
    root: Path,
    sid: str,
    cfg: DemoConfig,
    model: ExpressionModel,
    res: SlideResult,
    effects: dict[str, float],
    index: int,
    params: dict[str, Any],
) -> None:
    (root / "truth").mkdir(parents=True, exist_ok=True)
    mpp = cfg.mpp
    rng = np.random.default_rng([cfg.seed, 90, index])
    counts = _counts_for(cfg, model, res, effects, [3, index])
    excluded = set(MITO) | set(RIBO) | set(HOUSEKEEPING)
    panel = [i for i, s in enumerate(model.symbols) if s not in excluded][: cfg.xenium_panel_size]
    detected = np.zeros_like(counts)
    detected[:, panel] = rng.binomial(counts[:, panel], cfg.xenium_efficiency)
    n = len(res.cells)
    neg = rng.poisson(0.02, (n, cfg.xenium_n_negative)).astype(np.int32)
    m = _xenium_alignment(rng, res.width_px, res.height_px, mpp)
    np.savetxt(root / XENIUM_ALIGNMENT, m, delimiter=",", fmt="%.10g")

    def to_um(x_px: np.ndarray, y_px: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mx = m[0, 0] * x_px + m[0, 1] * y_px + m[0, 2]
        my = m[1, 0] * x_px + m[1, 1] * y_px + m[1, 2]
        return mx * XENIUM_PIXEL_SIZE, my * XENIUM_PIXEL_SIZE

    um_scale = float(np.sqrt(abs(np.linalg.det(m[:2, :2])))) * XENIUM_PIXEL_SIZE / mpp  # Xenium µm per H&E µm
    cids = np.array([_xenium_cell_id(i) for i in range(n)], dtype=object)
    xu, yu = to_um(res.cells.x / mpp, res.cells.y / mpp)
    gene_counts = detected[:, panel].sum(axis=1)
    cell_area = np.pi * res.cells.cyto_major * res.cells.cyto_minor * um_scale**2
    nuc_area = res.cells.nucleus_area() * um_scale**2
    cells_df = pd.DataFrame(
        {
            "cell_id": cids,
            "x_centroid": xu,
            "y_centroid": yu,
            "transcript_counts": gene_counts.astype(np.int64),
            "control_probe_counts": neg.sum(axis=1).astype(np.int64),
            "total_counts": (gene_counts + neg.sum(axis=1)).astype(np.int64),
            "cell_area": np.maximum(cell_area, nuc_area).astype(np.float64),
            "nucleus_area": nuc_area.astype(np.float64),
        }
    )
    cells_df.to_parquet(root / XENIUM_CELLS, index=False)
    # boundaries: 12 vertices + the first repeated, as Xenium writes them
    nv = 12
    nuc = nucleus_outline(res.cells, n_vertices=nv, scale=1.0 / mpp)
    c = res.cells
    phi = np.linspace(0, 2 * np.pi, nv, endpoint=False)[None, :]
    u = c.cyto_major[:, None] * np.cos(phi)
    v = c.cyto_minor[:, None] * np.sin(phi)
    ct, st = np.cos(c.theta)[:, None], np.sin(c.theta)[:, None]
    cyto = np.stack([(c.x[:, None] + ct * u - st * v) / mpp, (c.y[:, None] + st * u + ct * v) / mpp], -1)
    for name, verts in ((XENIUM_CELL_BOUNDARIES, cyto), (XENIUM_NUCLEUS_BOUNDARIES, nuc)):
        closed = np.concatenate([verts, verts[:, :1]], axis=1)
        bx, by = to_um(closed[..., 0], closed[..., 1])
        pd.DataFrame(
            {
                "cell_id": np.repeat(cids, nv + 1),
                "vertex_x": bx.ravel().astype(np.float32),
                "vertex_y": by.ravel().astype(np.float32),
            }
        ).to_parquet(root / name, index=False)
    # feature matrix (10x HDF5, features × cells, CSC over cells)
    feat_names = [model.symbols[i] for i in panel] + [
        f"NegControlProbe_{k:05d}" for k in range(cfg.xenium_n_negative)
    ]
    feat_ids = [model.ids[i] for i in panel] + [
        f"NegControlProbe_{k:05d}" for k in range(cfg.xenium_n_negative)
    ]
    feat_types = ["Gene Expression"] * len(panel) + ["Negative Control Probe"] * cfg.xenium_n_negative
    mat = sp.csr_matrix(
        np.concatenate([detected[:, panel], neg], axis=1).astype(np.int32)
    )  # cells × features
    with h5py.File(root / XENIUM_MATRIX, "w") as f:
        g = f.create_group("matrix")
        g.create_dataset("barcodes", data=np.array(cids.tolist(), dtype="S"))
        g.create_dataset("data", data=mat.data.astype(np.uint32))
        g.create_dataset("indices", data=mat.indices.astype(np.int64))
        g.create_dataset("indptr", data=mat.indptr.astype(np.int64))
        g.create_dataset("shape", data=np.array([mat.shape[1], mat.shape[0]], dtype=np.int32))
        fg = g.create_group("features")
        fg.create_dataset("id", data=np.array(feat_ids, dtype="S"))
        fg.create_dataset("name", data=np.array(feat_names, dtype="S"))
        fg.create_dataset("feature_type", data=np.array(feat_types, dtype="S"))
        fg.create_dataset("genome", data=np.array(["Unknown"] * len(feat_ids), dtype="S"))
        fg.create_dataset("_all_tag_keys", data=np.array([b"genome"]))
    exp = {
        "major_version": 5,
        "minor_version": 0,
        "run_name": f"{sid}_run",
        "region_name": sid,
        "pixel_size": XENIUM_PIXEL_SIZE,
        "panel_num_targets_predesigned": len(panel),
        "panel_num_targets_custom": 0,
        "analysis_sw_version": "xenium-2.0.0.10",
    }
    (root / XENIUM_EXPERIMENT).write_text(json.dumps(exp, indent=2))
    _write_truth(root / "truth", sid, res, model, counts, {"detected": detected})
    params["slides"][sid] = _slide_params(res) | {
        "alignment": m.tolist(),
        "panel": [model.symbols[i] for i in panel],
        "efficiency": cfg.xenium_efficiency,
    }
    _write_params(root, cfg, model, params)


# --------------------------------------------------------------------------- driver
def generate_demo(
    outdir: str | os.PathLike[str], *, config: DemoConfig | None = None, progress: bool = True
) -> dict:
    """Write the demo cohorts (HEST-1k, TCGA, Xenium) under ``outdir``.

    Everything is first written to a hidden temporary directory inside ``outdir`` and then moved into
    place cohort by cohort (replacing earlier ``hest/``, ``tcga/``, ``xenium/``), so a killed run leaves
    no half-written cohort.

    Parameters
    ----------
    outdir
        Output directory (created).
    config
        Demo configuration (default :class:`DemoConfig`).
    progress
        Show tqdm progress bars.

    Returns
    -------
    dict
        ``{"root", "seconds", "ids": demo_sample_ids, "paths": {"hest", "tcga", "xenium": [...]},
        "n_cells": {slide: n}}``.
    """
    t0 = time.perf_counter()
    cfg = config or DemoConfig()
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".demo-tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        ids = demo_sample_ids(cfg)
        model = build_expression_model(np.random.default_rng([cfg.seed, 50]), cfg.n_genes, cfg.cell_library)
        jobs: list[SlideJob] = []
        hest_pat: dict[str, tuple[TissueParams, dict[str, float]]] = {}
        (tmp / "hest" / HEST_SLIDE_DIR).mkdir(parents=True)
        for p in range(cfg.n_hest_patients):
            name = f"P{p + 1}"
            prng = np.random.default_rng([cfg.seed, 10, p])
            hest_pat[name] = (draw_patient_params(prng), _patient_effects(prng))
        for i, sid in enumerate(ids["hest"]):
            pname = f"P{i // cfg.hest_sections_per_patient + 1}"
            sparams = jitter_section_params(np.random.default_rng([cfg.seed, 11, i]), hest_pat[pname][0])
            w, h = cfg.st_size_um
            tif = hest_slides(tmp / "hest", sid)[0]
            jobs.append(
                SlideJob(sid, "hest", pname, w, h, sparams, [cfg.seed, 1, i], tif, cfg.mpp, cfg.jpeg_quality)
            )
        tcga_slides_dir(tmp / "tcga").mkdir(parents=True)
        tcga_pat: dict[str, tuple[TissueParams, dict[str, float]]] = {}
        k = 0
        for p, (pat, slides) in enumerate(_tcga_layout(cfg)):
            prng = np.random.default_rng([cfg.seed, 20, p])
            tcga_pat[pat] = (draw_patient_params(prng), _patient_effects(prng))
            for sid in slides:
                srng = np.random.default_rng([cfg.seed, 21, k])
                sparams = jitter_section_params(srng, tcga_pat[pat][0])
                uid = uuid.UUID(bytes=srng.bytes(16), version=4)
                w, h = cfg.bulk_size_um
                tif = tcga_slides_dir(tmp / "tcga") / f"{sid}.{uid}.tif"
                jobs.append(
                    SlideJob(
                        sid, "tcga", pat, w, h, sparams, [cfg.seed, 2, k], tif, cfg.mpp, cfg.jpeg_quality
                    )
                )
                k += 1
        xen_eff: dict[str, dict[str, float]] = {}
        for i, sid in enumerate(ids["xenium"]):
            (tmp / "xenium" / sid).mkdir(parents=True)
            prng = np.random.default_rng([cfg.seed, 30, i])
            xp = draw_patient_params(prng)
            xen_eff[sid] = _patient_effects(prng)
            w, h = cfg.xenium_size_um
            tif = tmp / "xenium" / sid / XENIUM_HE_IMAGE
            jobs.append(
                SlideJob(
                    sid, "xenium", f"X{i + 1}", w, h, xp, [cfg.seed, 3, i], tif, cfg.mpp, cfg.jpeg_quality
                )
            )
        results = _run_jobs(jobs, cfg.workers, progress)
        if ids["hest"]:
            hp: dict[str, Any] = {"slides": {}, "patients": _patients_json(hest_pat)}
            _write_hest(tmp / "hest", cfg, model, results, hest_pat, hp)
        if ids["tcga"]:
            tp: dict[str, Any] = {"slides": {}, "aliquots": {}, "patients": _patients_json(tcga_pat)}
            _write_tcga(tmp / "tcga", cfg, model, results, tcga_pat, tp)
        for i, sid in enumerate(ids["xenium"]):
            xpar: dict[str, Any] = {"slides": {}, "patient_effects": xen_eff[sid]}
            _write_xenium(tmp / "xenium" / sid, sid, cfg, model, results[sid], xen_eff[sid], i, xpar)
        cohorts = [c for c in ("hest", "tcga", "xenium") if ids[c]]
        for c in cohorts:
            target = out / c
            if target.exists():
                shutil.rmtree(target)
            (tmp / c).replace(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "root": str(out),
        "seconds": time.perf_counter() - t0,
        "ids": ids,
        "paths": {
            "hest": str(out / "hest"),
            "tcga": str(out / "tcga"),
            "xenium": [str(out / "xenium" / s) for s in ids["xenium"]],
        },
        "slides": {
            sid: {
                "path": str(out / r.job.kind / r.job.tif_path.relative_to(tmp / r.job.kind)),
                "n_cells": len(r.cells),
                "width_px": r.width_px,
                "height_px": r.height_px,
                "seconds": r.seconds,
            }
            for sid, r in results.items()
        },
    }


def _patients_json(p: dict[str, tuple[TissueParams, dict[str, float]]]) -> dict[str, Any]:
    return {k: {"tissue": v[0].to_dict(), "effects": v[1]} for k, v in p.items()}
