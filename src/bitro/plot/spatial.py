"""Spot-level maps of one fold (paper Fig. 3): measured beside predicted, per test sample, best genes."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import anndata as ad
import numpy as np

from bitro.errors import MissingInputError
from bitro.io.thumbnails import SlideImage, slide_image
from bitro.io.validate import require_file
from bitro.plot._figure import DPI
from bitro.plot.genes import top_genes
from bitro.plot.maps import MapFigure, SampleMaps, finite_rows, write_map_figure

log = logging.getLogger("bitro")

#: Where a sample's slide is: sample id → path, or a function of the sample id (``None``: no slide).
SlideLookup = Mapping[str, str | os.PathLike[str]] | Callable[[str], str | os.PathLike[str] | None]
#: Longer side (px) of the H&E thumbnail drawn beneath a sample's maps.
IMAGE_SIZE = 1500


def sample_image(
    slides: SlideLookup | None, sample_id: str, *, max_size: int = IMAGE_SIZE
) -> SlideImage | None:
    """The H&E thumbnail of ``sample_id``'s slide, or ``None`` without one (a missing file is logged)."""
    if slides is None:
        return None
    path = slides(sample_id) if callable(slides) else slides.get(sample_id)
    if path is None:
        return None
    try:
        return slide_image(path, max_size=max_size)
    except MissingInputError as exc:
        log.warning("%s: %s; its maps are drawn without the H&E", sample_id, exc)
        return None


def read_anndata(data: ad.AnnData | str | os.PathLike[str], what: str) -> ad.AnnData:
    """``data`` itself, or the h5ad file it names."""
    if isinstance(data, ad.AnnData):
        return data
    return ad.read_h5ad(require_file(data, what))


def dense(matrix: object) -> np.ndarray:
    """A float64 ndarray of a dense or sparse matrix."""
    array = matrix.toarray() if hasattr(matrix, "toarray") else matrix
    return np.asarray(array, dtype=np.float64)


def plot_spatial(
    predictions: ad.AnnData | str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    top_n: int = 4,
    dpi: int = DPI,
    title: str | None = None,
    slides: SlideLookup | None = None,
) -> MapFigure:
    """Write ``out`` (PNG): for each test sample in ``predictions.h5ad``, its ``top_n`` genes.

    A sample's genes are those of highest PCC across its scored units (``obs["scored"]``: Xenium keeps the
    pseudo-spots wholly inside the test strip), on log1p of ``layers["truth"]`` and ``X``, the numbers the
    fold's ``metrics.tsv`` averages. Each gene gets the measured map beside the predicted one on a shared
    colour scale, units drawn at ``obsm["spatial"]`` (level-0 pixels), the PCC in the title. Where
    ``slides`` gives a sample's slide (sample id → path, or a function of the id), its maps are drawn over
    the slide's H&E, as in the paper's Fig. 3.
    """
    adata = read_anndata(predictions, "predictions")
    scored = adata.obs["scored"].to_numpy(bool) if "scored" in adata.obs else np.ones(adata.n_obs, bool)
    truth_all, pred_all = dense(adata.layers["truth"]), dense(adata.X)
    genes = adata.var_names.astype(str).tolist()
    samples = []
    for sample_id in adata.obs["sample_id"].astype(str).unique():
        rows = scored & (adata.obs["sample_id"].astype(str).to_numpy() == sample_id)
        truth, pred = truth_all[rows], pred_all[rows]
        keep = finite_rows(truth, pred)
        truth, pred = truth[keep], pred[keep]
        chosen = top_genes(truth, pred, genes, top_n)
        columns = [genes.index(g.gene) for g in chosen]
        samples.append(
            SampleMaps(
                sample_id=sample_id,
                xy=np.asarray(adata.obsm["spatial"], dtype=np.float64)[rows][keep],
                genes=chosen,
                prediction=np.log1p(pred[:, columns]),
                truth=np.log1p(truth[:, columns]),
                image=sample_image(slides, sample_id),
            )
        )
    heading = title or "Spots: measured and predicted expression of the best predicted genes"
    return write_map_figure(samples, Path(out), title=heading, dpi=dpi, what="spots")
