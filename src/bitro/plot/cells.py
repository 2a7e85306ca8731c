"""Cell-level maps of one fold (paper Fig. 4): pseudo-cell profiles, beside measured cells for Xenium."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import anndata as ad
import numpy as np

from bitro.plot._figure import DPI
from bitro.plot.genes import GeneScore, top_genes
from bitro.plot.maps import MapFigure, SampleMaps, finite_rows, write_map_figure
from bitro.plot.spatial import dense, read_anndata

#: Cells drawn per sample at most (a random subset beyond; scores always use every cell).
MAX_CELLS = 200_000


def plot_cells(
    cells: ad.AnnData | str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    genes: Sequence[GeneScore] | None = None,
    top_n: int = 4,
    dpi: int = DPI,
    max_cells: int = MAX_CELLS,
    seed: int = 0,
    title: str | None = None,
    score: str = "",
) -> MapFigure:
    """Write ``out`` (PNG): the pseudo-cell profiles of ``cells_pred.h5ad`` as maps of cells.

    With ``layers["truth"]`` (Xenium: the cells' measured counts), each test sample shows its ``top_n``
    genes by PCC across its scored cells (in the test strip, measured; log1p), measured beside predicted
    on a shared colour scale, the PCC in the title. Without truth (bulk), every sample shows ``genes``
    (default: the first ``top_n``), predicted only, one colour scale per gene, ``score`` naming the scope
    of their PCC in the titles (e.g. ``"slide-level "``). Cells are drawn at
    ``obsm["spatial"]`` (level-0 pixels); at most ``max_cells`` per sample, chosen at random by ``seed``.
    """
    adata = read_anndata(cells, "pseudo-cells")
    names = adata.var_names.astype(str).tolist()
    has_truth = "truth" in adata.layers
    truth_all = dense(adata.layers["truth"]) if has_truth else None
    pred_all = dense(adata.X)
    in_strip = (
        adata.obs["in_test_strip"].to_numpy(bool)
        if "in_test_strip" in adata.obs
        else np.ones(adata.n_obs, dtype=bool)
    )
    sample_of = adata.obs["sample_id"].astype(str).to_numpy()
    xy_all = np.asarray(adata.obsm["spatial"], dtype=np.float64)
    rng = np.random.default_rng(seed)
    fixed = list(genes) if genes is not None else [GeneScore(g, float("nan")) for g in names[:top_n]]
    samples = []
    for sample_id in dict.fromkeys(sample_of):
        rows = sample_of == sample_id
        pred = pred_all[rows]
        truth = truth_all[rows] if truth_all is not None else None
        xy = xy_all[rows]
        if truth is not None:
            keep = in_strip[rows] & finite_rows(truth, pred)
            truth, pred, xy = truth[keep], pred[keep], xy[keep]
            chosen = top_genes(truth, pred, names, top_n)
        else:
            chosen = fixed
        columns = [names.index(g.gene) for g in chosen]
        drawn = np.arange(len(xy))
        if len(drawn) > max_cells:
            drawn = np.sort(rng.choice(len(xy), size=max_cells, replace=False))
        samples.append(
            SampleMaps(
                sample_id=sample_id,
                xy=xy[drawn],
                genes=chosen,
                prediction=np.log1p(np.clip(pred[drawn][:, columns], 0.0, None)),
                truth=None if truth is None else np.log1p(truth[drawn][:, columns]),
            )
        )
    heading = title or (
        "Cells: measured counts and predicted pseudo-cell profiles"
        if has_truth
        else "Cells: predicted pseudo-cell profiles"
    )
    return write_map_figure(samples, Path(out), title=heading, dpi=dpi, what="cells", score=score)
