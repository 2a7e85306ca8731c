"""Units: the regions expression is measured on (ST spots) or predicted for (spot-sized patches).

``units.parquet`` (docs/formats.md) has one row per unit: ``unit_id`` (int, 0..n-1), ``x_px``, ``y_px``
(centre, level-0 pixels), ``x_um``, ``y_um``, ``diameter_um`` (spot diameter, or patch side), ``in_tissue``,
plus ``shape`` (``circle`` | ``square``), ``barcode`` (ST spot barcode, else empty) and ``tissue_fraction``.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from bitro._atomic import atomic_path
from bitro.errors import ConfigError, InputError
from bitro.io.sample import Sample
from bitro.io.slides import Slide

if TYPE_CHECKING:  # the tissue mask's scikit-image and shapely only where a mask is made
    from bitro.preprocess.tissue import TissueMask

UNIT_COLUMNS = (
    "unit_id",
    "x_px",
    "y_px",
    "x_um",
    "y_um",
    "diameter_um",
    "in_tissue",
    "shape",
    "barcode",
    "tissue_fraction",
)


def spot_units(sample: Sample, *, mask: TissueMask | None = None) -> pd.DataFrame:
    """One unit per ST spot, in the order of ``sample.expression``.

    ``in_tissue`` comes from the spot table's own ``in_tissue`` column when present, otherwise from the
    tissue mask (fraction of the spot's bounding square covered by tissue ≥ 0.5).
    """
    spots = sample.units
    if spots is None:
        raise ValueError(f"sample {sample.sample_id!r} is {sample.kind!r}, not ST: it has no spots")
    if sample.spot_diameter_um is None:
        where = sample.metadata.get("metadata_path", sample.slide_path)
        raise InputError(where, f"sample {sample.sample_id!r} has no spot diameter (spot_diameter, µm)")
    xy = spots[["x_px", "y_px"]].to_numpy()
    side_px = sample.spot_diameter_um / sample.mpp
    fraction = np.full(len(xy), np.nan)
    if mask is not None:
        fraction = mask.fraction_in_boxes(xy[:, 0] - side_px / 2, xy[:, 1] - side_px / 2, side_px)
    in_tissue = spots["in_tissue"].to_numpy()
    if "in_tissue" not in sample.expression.obs and mask is not None:
        in_tissue = fraction >= 0.5
    return _frame(
        xy,
        mpp=sample.mpp,
        diameter_um=sample.spot_diameter_um,
        in_tissue=in_tissue,
        shape="circle",
        barcode=spots["barcode"].to_numpy(),
        tissue_fraction=fraction,
    )


def grid_units(
    slide: Slide,
    *,
    size_um: float,
    mask: TissueMask,
    min_tissue_fraction: float = 0.5,
) -> pd.DataFrame:
    """Spot-sized square patches tiling the slide from its origin, kept where tissue covers any of them.

    ``in_tissue`` is true where tissue covers at least ``min_tissue_fraction`` of the patch.
    """
    if size_um <= 0:
        raise ConfigError("units.patch_size_um", f"patch size must be positive, got {size_um} µm")
    side_px = size_um / slide.mpp
    w, h = slide.dimensions
    xs = np.arange(0.0, w - side_px + 1e-9, side_px)
    ys = np.arange(0.0, h - side_px + 1e-9, side_px)
    gx, gy = np.meshgrid(xs, ys)
    x0, y0 = gx.ravel(), gy.ravel()
    fraction = mask.fraction_in_boxes(x0, y0, side_px)
    keep = fraction > 0
    centres = np.column_stack([x0[keep] + side_px / 2, y0[keep] + side_px / 2])
    return _frame(
        centres,
        mpp=slide.mpp,
        diameter_um=size_um,
        in_tissue=fraction[keep] >= min_tissue_fraction,
        shape="square",
        barcode=np.full(int(keep.sum()), "", dtype=object),
        tissue_fraction=fraction[keep],
    )


def make_units(
    sample: Sample,
    *,
    patch_size_um: float = 55.0,
    min_tissue_fraction: float = 0.5,
    mask_mpp: float = 8.0,
) -> pd.DataFrame:
    """Units of a sample: its spots (ST), or ``patch_size_um`` patches over tissue (bulk, Xenium)."""
    from bitro.preprocess.tissue import tissue_mask

    with sample.open_slide() as slide:
        mask = tissue_mask(slide, mpp=mask_mpp)
        if sample.kind == "st":
            return spot_units(sample, mask=mask)
        return grid_units(slide, size_um=patch_size_um, mask=mask, min_tissue_fraction=min_tissue_fraction)


def write_units(units: pd.DataFrame, path: str | Path) -> None:
    """Write ``units.parquet`` atomically."""
    missing = [c for c in UNIT_COLUMNS if c not in units]
    if missing:
        raise ValueError(f"units table lacks columns {missing}")
    with atomic_path(path) as tmp:
        units.loc[:, list(UNIT_COLUMNS)].to_parquet(tmp, index=False)


def read_units(path: str | Path) -> pd.DataFrame:
    """Read ``units.parquet``, checking its columns and that ``unit_id`` is 0..n-1."""
    from bitro.io.validate import require_file

    path = require_file(path, "units table (units.parquet)")
    try:
        units = pd.read_parquet(path)
    except Exception as exc:
        raise InputError(path, f"is not a readable Parquet table ({type(exc).__name__}: {exc})") from exc
    missing = [c for c in UNIT_COLUMNS if c not in units]
    if missing:
        raise InputError(path, f"units table lacks columns {missing}")
    if not np.array_equal(units["unit_id"].to_numpy(), np.arange(len(units))):
        raise InputError(path, "unit_id must run 0..n-1 in row order")
    return units


def _frame(
    xy: np.ndarray,
    *,
    mpp: float,
    diameter_um: float,
    in_tissue: np.ndarray,
    shape: str,
    barcode: np.ndarray,
    tissue_fraction: np.ndarray,
) -> pd.DataFrame:
    n = len(xy)
    return pd.DataFrame(
        {
            "unit_id": np.arange(n, dtype=np.int64),
            "x_px": xy[:, 0],
            "y_px": xy[:, 1],
            "x_um": xy[:, 0] * mpp,
            "y_um": xy[:, 1] * mpp,
            "diameter_um": np.full(n, diameter_um),
            "in_tissue": np.asarray(in_tissue, dtype=bool),
            "shape": pd.Categorical([shape] * n, categories=["circle", "square"]),
            "barcode": pd.array(barcode, dtype="string"),
            "tissue_fraction": np.asarray(tissue_fraction, dtype=np.float64),
        }
    )
