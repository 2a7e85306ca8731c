"""What the demo's three layouts share: the sample ids, a slide job (tissue, cells, rendered slide),
running the jobs, the planted truth and the parameters written beside each cohort."""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anndata as ad
import geopandas as gpd
import numpy as np
import pandas as pd
import scipy.sparse as sp
from tqdm.auto import tqdm

from bitro.demo.config import GENERATOR_VERSION, DemoConfig
from bitro.demo.expression import (
    PATIENT_GENES,
    ExpressionModel,
    cell_means,
    sample_counts,
)
from bitro.demo.morphology import CELL_TYPES, CellTable, nucleus_outline, polygons_from_vertices
from bitro.demo.render import SlideRenderer, SlideStyle, draw_slide_style, write_pyramidal_tiff
from bitro.demo.tissue import (
    TissueFields,
    TissueParams,
    generate_cells,
)

TCGA_PROJECT = "TCGA-DM"


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
