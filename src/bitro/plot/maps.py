"""Grids of expression maps: units or cells drawn where they lie on the slide, coloured by log1p value.

Every map draws discs in slide units (level-0 pixels, y down as in the image) whose diameter is the
median nearest-neighbour spacing, so spots and patches tile like the paper's Fig. 3 and 4 whatever the
figure size. Measured and predicted maps of a gene share one colour scale (minimum to 99th percentile).
Where the slide's H&E is given, the discs are drawn over it (slightly transparent), as in the paper's
Fig. 3; otherwise on a blank background.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.collections import EllipseCollection
from matplotlib.colors import Normalize

from bitro.io.thumbnails import SlideImage
from bitro.plot._figure import DPI, new_figure, save_png, unit_diameter
from bitro.plot.genes import GeneScore

CMAP = "viridis"
PANEL_INCHES = 2.4
#: Opacity of the discs drawn over an H&E image (the tissue shows through a little).
OVER_IMAGE_ALPHA = 0.85


@dataclass
class SampleMaps:
    """What to draw for one sample: positions, the chosen genes and their log1p values (rows = points).

    ``truth`` is None for predicted-only maps (bulk pseudo-cells, which have no measured counterpart).
    ``image`` is the sample's H&E, drawn beneath its maps when given.
    """

    sample_id: str
    xy: np.ndarray
    genes: list[GeneScore]
    prediction: np.ndarray
    truth: np.ndarray | None = None
    image: SlideImage | None = None


@dataclass(frozen=True)
class MapPanel:
    """One drawn gene of one sample: its score and the titles shown above its maps."""

    sample_id: str
    gene: str
    pcc: float
    titles: tuple[str, ...]
    n_points: int


@dataclass
class MapFigure:
    """A written map figure and what each of its panels shows."""

    path: Path
    panels: list[MapPanel] = field(default_factory=list)


def colour_norm(*values: np.ndarray) -> Normalize:
    """A colour scale from the minimum to the 99th percentile of the finite values given."""
    finite = np.concatenate([np.asarray(v, dtype=np.float64).ravel() for v in values] or [np.zeros(0)])
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return Normalize(0.0, 1.0, clip=True)
    low, high = float(finite.min()), float(np.percentile(finite, 99))
    if high <= low:
        high = low + max(abs(low) * 1e-3, 1e-6)
    return Normalize(low, high, clip=True)


def draw_map(
    ax: Axes,
    xy: np.ndarray,
    values: np.ndarray,
    *,
    norm: Normalize,
    diameter: float,
    image: SlideImage | None = None,
    alpha: float | None = None,
) -> None:
    """Draw one disc of ``diameter`` (slide units) per point, coloured by ``values``; NaN points are grey.

    With ``image``, the slide's H&E is drawn beneath the discs (placed in level-0 pixels by its scale),
    and the discs are drawn with opacity ``alpha`` (default :data:`OVER_IMAGE_ALPHA`; 1 without image).
    """
    xy = np.asarray(xy, dtype=np.float64)
    values = np.ma.masked_invalid(np.asarray(values, dtype=np.float64))
    if image is not None:
        ax.imshow(image.pixels, extent=image.extent, interpolation="antialiased", zorder=0)
        alpha = OVER_IMAGE_ALPHA if alpha is None else alpha
    discs = EllipseCollection(
        np.full(len(xy), diameter),
        np.full(len(xy), diameter),
        np.zeros(len(xy)),
        units="xy",
        offsets=xy,
        offset_transform=ax.transData,
        cmap=colormaps[CMAP].with_extremes(bad="lightgrey"),
        norm=norm,
        linewidths=0,
        alpha=1.0 if alpha is None else alpha,
        zorder=1,
    )
    discs.set_array(values)
    ax.add_collection(discs, autolim=False)
    pad = diameter
    low, high = (xy.min(axis=0), xy.max(axis=0)) if len(xy) else (np.zeros(2), np.ones(2))
    ax.set_xlim(low[0] - pad, high[0] + pad)
    ax.set_ylim(high[1] + pad, low[1] - pad)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_color("0.85")


def _aspect(samples: Sequence[SampleMaps]) -> float:
    """The largest height / width ratio of the samples' extents."""
    ratios = []
    for sample in samples:
        if len(sample.xy):
            extent = np.ptp(np.asarray(sample.xy, dtype=np.float64), axis=0) + 1.0
            ratios.append(extent[1] / extent[0])
    return max(ratios, default=1.0)


def write_map_figure(
    samples: Sequence[SampleMaps],
    out: str | os.PathLike[str],
    *,
    title: str,
    dpi: int = DPI,
    what: str = "units",
    score: str = "",
) -> MapFigure:
    """Write a grid of maps to ``out`` (PNG) and return what each panel shows.

    With truth, every sample shows each of its genes as a pair, measured beside predicted, with one colour
    bar per pair. Without truth, every sample shows the same genes, predicted only, with one colour bar
    per gene. Genes run down the rows and samples across; tall samples (Xenium test strips) are laid out
    the other way round. ``what`` names the points ("spots", "cells") and ``score`` the PCC's scope in
    predicted-only titles.
    """
    paired = any(s.truth is not None for s in samples)
    n_ranks = max((len(s.genes) for s in samples), default=0) or 1
    n_samples = max(len(samples), 1)
    per_sample = 2 if paired else 1
    ratio = _aspect(samples)
    tall = ratio > 1.5
    if tall:  # rows = samples, columns = genes (× measured, predicted)
        width = float(np.clip(2.0 * PANEL_INCHES / ratio, 1.3, PANEL_INCHES))
        height = float(min(width * ratio, 3.0 * PANEL_INCHES))
        n_rows, n_cols = n_samples, n_ranks * per_sample
        size = (n_cols * width + 0.4, n_rows * (height + 1.3) + 0.5)
    else:  # rows = genes, columns = samples (× measured, predicted)
        width = PANEL_INCHES
        height = float(np.clip(PANEL_INCHES * ratio, 1.2, 2.0 * PANEL_INCHES))
        n_rows, n_cols = n_ranks, n_samples * per_sample
        size = (n_cols * width + (0.8 * n_samples if paired else 0.9) + 0.3, n_rows * (height + 0.6) + 0.5)
    figure = new_figure(*size)
    axes = figure.subplots(n_rows, n_cols, squeeze=False)
    figure.suptitle(title, fontsize=10)
    bar = {"location": "bottom" if tall else "right", "shrink": 0.8, "label": "log1p"}

    def at(k: int, rank: int, j: int) -> Axes:
        return axes[k, rank * per_sample + j] if tall else axes[rank, k * per_sample + j]

    drawn = MapFigure(Path(out))
    for k, sample in enumerate(samples):
        for rank in range(len(sample.genes), n_ranks):
            for j in range(per_sample):
                at(k, rank, j).set_axis_off()
    gene_norms = {}
    if not paired:
        for rank in range(n_ranks):
            values = [s.prediction[:, rank] for s in samples if rank < len(s.genes)]
            gene_norms[rank] = colour_norm(*values)
    for k, sample in enumerate(samples):
        diameter = unit_diameter(sample.xy)
        for rank, gene in enumerate(sample.genes):
            predicted = sample.prediction[:, rank]
            if sample.truth is not None:
                measured = sample.truth[:, rank]
                norm = colour_norm(measured, predicted)
                titles = (
                    f"{sample.sample_id}\n{gene.gene}: measured",
                    f"{gene.gene}: predicted\n{gene.label}",
                )
                pair = [at(k, rank, 0), at(k, rank, 1)]
                for ax, values, text in zip(pair, (measured, predicted), titles, strict=True):
                    draw_map(ax, sample.xy, values, norm=norm, diameter=diameter, image=sample.image)
                    ax.set_title(text, fontsize=8)
                figure.colorbar(pair[1].collections[0], ax=pair, **bar)
            else:
                titles = (f"{sample.sample_id}\n{gene.gene}: predicted {what}\n{score}{gene.label}",)
                ax = at(k, rank, 0)
                draw_map(
                    ax, sample.xy, predicted, norm=gene_norms[rank], diameter=diameter, image=sample.image
                )
                ax.set_title(titles[0], fontsize=8)
                if k == len(samples) - 1:
                    group = [at(i, rank, 0) for i in range(len(samples))]
                    figure.colorbar(ax.collections[0], ax=group, **bar)
            drawn.panels.append(MapPanel(sample.sample_id, gene.gene, gene.pcc, titles, len(sample.xy)))
    if not samples:
        axes[0, 0].set_axis_off()
        axes[0, 0].text(0.5, 0.5, f"no {what} to draw", ha="center", va="center")
    save_png(figure, out, dpi=dpi)
    return drawn


def finite_rows(*arrays: np.ndarray) -> np.ndarray:
    """Rows where every given array is finite in every column."""
    keep = np.ones(len(arrays[0]), dtype=bool)
    for array in arrays:
        keep &= np.isfinite(np.asarray(array, dtype=np.float64)).all(axis=1)
    return keep
