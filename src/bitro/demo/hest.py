"""Write the demo's ST cohort in the HEST-1k layout (:func:`bitro.layout.hest_files`): spot counts,
metadata and a simulated CellViT segmentation per section; :mod:`bitro.io.hest` reads it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.spatial import cKDTree

from bitro.demo.config import DemoConfig
from bitro.demo.expression import (
    ExpressionModel,
)
from bitro.demo.sections import (
    SlideResult,
    _counts_for,
    _slide_params,
    _write_params,
    _write_truth,
    demo_sample_ids,
)
from bitro.demo.segmentation import simulate_cellvit, write_cellvit
from bitro.demo.tissue import (
    TissueParams,
)
from bitro.layout import (
    HEST_EXPRESSION_DIR,
    HEST_METADATA_DIR,
    HEST_SEGMENTATION_DIR,
    hest_expression,
    hest_metadata,
    hest_segmentations,
)

SPOT_DIAMETER_UM = 55.0
SPOT_PITCH_UM = 100.0


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
