"""Write a demo Xenium section as an output bundle (:func:`bitro.layout.xenium_files`): cells, their
boundaries, the cell feature matrix, the H&E alignment and experiment.xenium; :mod:`bitro.io.xenium`
reads it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from bitro.demo.config import DemoConfig
from bitro.demo.expression import (
    HOUSEKEEPING,
    MITO,
    RIBO,
    ExpressionModel,
)
from bitro.demo.morphology import nucleus_outline
from bitro.demo.sections import SlideResult, _counts_for, _slide_params, _write_params, _write_truth
from bitro.layout import (
    XENIUM_ALIGNMENT,
    XENIUM_CELL_BOUNDARIES,
    XENIUM_CELLS,
    XENIUM_EXPERIMENT,
    XENIUM_MATRIX,
    XENIUM_NUCLEUS_BOUNDARIES,
)

XENIUM_PIXEL_SIZE = 0.2125


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
