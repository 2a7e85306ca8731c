"""Every per-slide output at once, from one slide's predictions: what the workflow's predict step calls.

The slide is read once (its ``hires`` and ``lowres`` images serve ``spots.h5ad``, ``cells.h5ad`` and the
heat maps). A bulk model predicts the slide as one bag; its maps are its deconvolution: each patch's
amounts are the sum of its cells' pseudo-cell profiles (:func:`unit_amounts`), so patches and cells add
up to the slide's prediction, as eq. 10 makes them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd

from bitro.io.slides import Slide
from bitro.io.thumbnails import resized, visium_images
from bitro.predict._record import amounts, check_level, check_space
from bitro.predict.bulk import slide_profile
from bitro.predict.cells import write_cells
from bitro.predict.heatmaps import IMAGE_SIZE, write_heatmaps
from bitro.predict.qupath import write_cells_qupath
from bitro.predict.spots import write_spots


class PredictionFile:
    """Names of the files in a slide's prediction folder (``results/{cohort}/predictions/{sample}/``)."""

    SPOTS: Final = "spots.h5ad"
    CELLS: Final = "cells.h5ad"
    CELLS_GEOJSON: Final = "cells.geojson"
    MAPS: Final = "maps"
    #: The slide's one row of ``bulk.tsv`` (:func:`bitro.predict.bulk.gather_profiles` collects them).
    PROFILE: Final = "profile.tsv"
    #: ``bitro predict-slide``: the slide's per-sample files (units, cells, embeddings, graph) go here.
    SAMPLE: Final = "sample"


def unit_amounts(profiles: np.ndarray, cell_unit: np.ndarray, n_units: int) -> np.ndarray:
    """(n_units, genes) sums of the pseudo-cell ``profiles`` of each unit's cells (``cell_unit``: each
    cell's unit row, −1 for none); a unit without cells is NaN (not predicted)."""
    values = amounts(profiles, len(profiles), "pseudo-cell profiles").astype(np.float64)
    unit = np.asarray(cell_unit, dtype=np.int64)
    if unit.shape != (len(values),):
        raise ValueError(f"cell_unit must have one entry per cell ({len(values)}), got {unit.shape}")
    inside = unit >= 0
    if (unit >= n_units).any():
        raise ValueError(f"cell_unit names units beyond the {n_units} given")
    total = np.zeros((n_units, values.shape[1]))
    np.add.at(total, unit[inside], values[inside])
    count = np.bincount(unit[inside], minlength=n_units)
    total[count == 0] = np.nan
    return total


@dataclass(frozen=True)
class SlideOutputs:
    """What :func:`write_slide_outputs` wrote, and the slide's row of ``bulk.tsv``."""

    files: dict[str, Path]
    maps: dict[str, Path]
    profile: np.ndarray
    n_units: int


def write_slide_outputs(
    out_dir: str | os.PathLike[str],
    *,
    sample_id: str,
    genes: Sequence[str],
    units: pd.DataFrame,
    unit_prediction: np.ndarray,
    cells: pd.DataFrame,
    pseudo_cells: np.ndarray,
    slide: Slide | str | os.PathLike[str],
    mpp: float,
    space: str,
    trained_level: str,
    chosen: Sequence[str],
    model: Mapping[str, Any] | None = None,
    slide_prediction: np.ndarray | None = None,
    phenotype: np.ndarray | None = None,
    dpi: int = 150,
) -> SlideOutputs:
    """Write ``spots.h5ad``, ``cells.h5ad``, ``cells.geojson`` and ``maps/{gene}.png`` into ``out_dir``.

    Parameters
    ----------
    out_dir
        The slide's prediction folder.
    sample_id, genes, space, trained_level, model
        As for :func:`bitro.predict.spots.spots_anndata`.
    units, unit_prediction
        The predicted rows of ``units.parquet`` and their (units, genes) amounts: a spot model's
        predictions, or a bulk model's :func:`unit_amounts` of its pseudo-cells.
    cells, pseudo_cells
        The profiled rows of ``cells.parquet`` and their (cells, genes) pseudo-cell profiles (eq. 10).
    slide, mpp
        The H&E (read once) and µm per level-0 pixel.
    chosen
        Genes of the QuPath measurements and the heat maps (e.g. the bundle's best by CV PCC).
    slide_prediction
        A bulk model's (genes,) prediction of the slide; without it the slide's profile is the pseudo-bulk
        of the units (:func:`bitro.predict.bulk.slide_profile`).
    phenotype
        Each cell's phenotype cluster, for ``cells.h5ad``.
    dpi
        Resolution of the heat maps.

    Returns
    -------
    SlideOutputs
        File key → path, gene → heat map, and the slide's profile with the number of units in it.
    """
    check_space(space)
    if check_level(trained_level) == "bulk" and slide_prediction is None:
        raise ValueError("a bulk model's slide prediction (slide_prediction) is needed for its profile")
    out = Path(out_dir)
    images = visium_images(slide)
    write_spots(
        out / PredictionFile.SPOTS,
        unit_prediction,
        genes,
        units,
        sample_id=sample_id,
        slide=images,
        mpp=mpp,
        space=space,
        trained_level=trained_level,
        model=model,
    )
    write_cells(
        out / PredictionFile.CELLS,
        pseudo_cells,
        genes,
        cells,
        sample_id=sample_id,
        space=space,
        trained_level=trained_level,
        model=model,
        phenotype=phenotype,
        slide=images,
        mpp=mpp,
    )
    write_cells_qupath(
        out / PredictionFile.CELLS_GEOJSON, pseudo_cells, genes, cells, chosen=chosen, space=space
    )
    square = "shape" in units and (units["shape"].astype(str) == "square").all()
    maps = write_heatmaps(
        out / PredictionFile.MAPS,
        unit_prediction,
        genes,
        units[["x_px", "y_px"]].to_numpy(np.float64),
        slide=resized(images.hires, IMAGE_SIZE),
        chosen=chosen,
        space=space,
        sample_id=sample_id,
        diameter_px=float(np.median(units["diameter_um"].to_numpy(np.float64))) / mpp,
        what="patches" if square else "spots",
        dpi=dpi,
    )
    if slide_prediction is not None:
        profile, n = slide_profile(np.asarray(slide_prediction)[None], trained_level="bulk")
    else:
        profile, n = slide_profile(unit_prediction, trained_level=trained_level)
    files = {
        "spots": out / PredictionFile.SPOTS,
        "cells": out / PredictionFile.CELLS,
        "cells_geojson": out / PredictionFile.CELLS_GEOJSON,
    }
    return SlideOutputs(files=files, maps=maps, profile=profile, n_units=n)
