"""Figure plumbing shared by the plots: Agg figures without pyplot, atomic PNG writes, unit sizes.

Figures are built with :class:`matplotlib.figure.Figure` on an Agg canvas, never through ``pyplot``, so
plotting needs no display, leaves the process's backend alone and keeps no figure alive after saving.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy.spatial import cKDTree

from bitro._atomic import atomic_path

#: Resolution of every PNG unless a caller asks for another.
DPI = 150


def new_figure(width: float, height: float) -> Figure:
    """A constrained-layout figure of ``width`` × ``height`` inches on an Agg canvas."""
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save_png(figure: Figure, path: str | os.PathLike[str], *, dpi: int = DPI) -> Path:
    """Write ``figure`` to ``path`` as PNG, atomically (a killed run leaves no half-written file)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=dpi, facecolor="white")
    return path


def unit_diameter(xy: np.ndarray) -> float:
    """Median distance from each point to its nearest neighbour: a disc of this diameter tiles the units.

    Returns 1.0 for fewer than two distinct points.
    """
    points = np.unique(np.asarray(xy, dtype=np.float64), axis=0)
    if len(points) < 2:
        return 1.0
    distance, _ = cKDTree(points).query(points, k=2)
    return float(np.median(distance[:, 1]))
