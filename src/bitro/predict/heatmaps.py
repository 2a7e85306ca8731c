"""Heat maps of one slide's predicted genes, drawn over its H&E: one PNG per gene.

Each PNG shows the slide's H&E thumbnail cropped to the predicted units (or cells), each unit a disc
coloured by ``log1p`` of its predicted amount, with a colour bar and the gene's name in the title. The
colour scale runs from the gene's minimum to its 99th percentile over the slide, as in the report's maps.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bitro.io.slides import Slide
from bitro.io.thumbnails import SlideImage, slide_image
from bitro.plot._figure import DPI, new_figure, save_png, unit_diameter
from bitro.plot.maps import colour_norm, draw_map
from bitro.predict._record import amounts, check_space, gene_names

#: Longer side (px) of the H&E thumbnail the maps are drawn over.
IMAGE_SIZE = 2000
#: Side of the figure (inches) along the longer side of the drawn region.
FIGURE_INCHES = 6.0


def heatmap_name(gene: str) -> str:
    """File name of a gene's heat map: ``{gene}.png``, characters unsafe in file names replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", gene) + ".png"


def write_heatmaps(
    out_dir: str | os.PathLike[str],
    prediction: np.ndarray,
    genes: Sequence[str],
    xy_px: np.ndarray,
    *,
    slide: SlideImage | Slide | str | os.PathLike[str],
    chosen: Sequence[str],
    space: str,
    sample_id: str,
    diameter_px: float | None = None,
    what: str = "spots",
    dpi: int = DPI,
) -> dict[str, Path]:
    """Write one heat map per gene of ``chosen`` into ``out_dir``; returns gene → PNG path.

    Parameters
    ----------
    out_dir
        Folder of the PNGs, named by :func:`heatmap_name`; each is written atomically.
    prediction
        (units, genes) predicted amounts in ``space`` (NaN rows: not predicted, drawn grey).
    genes
        Gene names of the columns of ``prediction``.
    xy_px
        (units, 2) centres in level-0 pixels.
    slide
        The H&E: a slide or its path (read at :data:`IMAGE_SIZE`), or a thumbnail already read.
    chosen
        The genes to draw (e.g. the model's best-predicted genes by cross-validation PCC).
    space
        ``"counts"`` or ``"tpm"``, named on the colour bar.
    sample_id
        Named in the titles.
    diameter_px
        Disc diameter in level-0 pixels (a spot's diameter); default the units' median spacing.
    what
        What the discs are (``"spots"``, ``"patches"``, ``"cells"``), named in the titles.
    dpi
        Resolution of the PNGs.
    """
    values = amounts(prediction, len(xy_px), "prediction")
    names = gene_names(genes, values.shape[1])
    missing = [g for g in chosen if g not in names]
    if missing:
        raise ValueError(f"genes not among the predicted genes: {missing[:5]}")
    files = [heatmap_name(g) for g in chosen]
    if len(set(files)) != len(files):
        raise ValueError(f"genes {list(chosen)} do not have distinct file names")
    label = {"counts": "counts", "tpm": "TPM"}[check_space(space)]
    image = slide if isinstance(slide, SlideImage) else slide_image(slide, max_size=IMAGE_SIZE)
    xy = np.asarray(xy_px, dtype=np.float64)
    diameter = unit_diameter(xy) if diameter_px is None else float(diameter_px)
    extent = np.ptp(xy, axis=0) + 2 * diameter if len(xy) else np.ones(2)
    ratio = float(np.clip(extent[1] / extent[0], 0.25, 4.0))
    size = (FIGURE_INCHES, FIGURE_INCHES * ratio) if ratio <= 1 else (FIGURE_INCHES / ratio, FIGURE_INCHES)
    out = Path(out_dir)
    written: dict[str, Path] = {}
    for gene in chosen:
        shown = np.log1p(values[:, names.index(gene)].astype(np.float64))
        figure = new_figure(size[0] + 1.2, size[1] + 0.6)
        ax = figure.subplots()
        draw_map(ax, xy, shown, norm=colour_norm(shown), diameter=diameter, image=image)
        ax.set_title(f"{sample_id}: {gene}, predicted {what}", fontsize=10)
        figure.colorbar(ax.collections[0], ax=ax, shrink=0.8, label=f"log1p predicted {label}")
        written[gene] = save_png(figure, out / heatmap_name(gene), dpi=dpi)
    return written
