"""Tissue detection on a low-resolution view of the slide."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import shapely
import shapely.geometry
from scipy import ndimage
from skimage.filters import threshold_otsu
from skimage.transform import resize

from bitro._atomic import atomic_path
from bitro.errors import InputError
from bitro.io.slides import Slide
from bitro.io.validate import require_file

#: Optical density below this is glass whatever Otsu says (a blank slide has no bimodal histogram).
MIN_TISSUE_OD = 0.05
#: A 1st-percentile OD above this means the view holds no glass at all.
MAX_GLASS_OD = 0.2


@dataclass(frozen=True)
class TissueMask:
    """A boolean tissue mask and the pixel size it was computed at.

    ``mask[row, col]`` covers level-0 pixels ``[col * scale, (col + 1) * scale)`` in x (same for y),
    where ``scale = mpp / slide_mpp``.
    """

    mask: np.ndarray
    mpp: float
    slide_mpp: float
    threshold_od: float

    @property
    def scale(self) -> float:
        """Level-0 pixels per mask pixel."""
        return self.mpp / self.slide_mpp

    def fraction_in_boxes(self, x0_px: np.ndarray, y0_px: np.ndarray, side_px: float) -> np.ndarray:
        """Fraction of tissue inside axis-aligned squares given by level-0 corners and side."""
        integral = np.pad(self.mask.astype(np.float64), ((1, 0), (1, 0))).cumsum(0).cumsum(1)
        h, w = self.mask.shape
        c0 = np.clip(np.floor(x0_px / self.scale).astype(int), 0, w)
        r0 = np.clip(np.floor(y0_px / self.scale).astype(int), 0, h)
        c1 = np.clip(np.ceil((x0_px + side_px) / self.scale).astype(int), 0, w)
        r1 = np.clip(np.ceil((y0_px + side_px) / self.scale).astype(int), 0, h)
        total = integral[r1, c1] - integral[r0, c1] - integral[r1, c0] + integral[r0, c0]
        area = np.maximum((r1 - r0) * (c1 - c0), 1)
        return total / area


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """Summed optical density ``-log10(I / 255)`` over the three channels of an RGB uint8 image."""
    intensity = np.clip(rgb.astype(np.float32), 1.0, 255.0) / 255.0
    return -np.log10(intensity).sum(axis=-1)


def tissue_mask(
    slide: Slide,
    *,
    mpp: float = 8.0,
    min_object_um2: float = 2.0e4,
    max_hole_um2: float = 1.0e4,
    glass_margin_od: float = 0.15,
) -> TissueMask:
    """Detect tissue by thresholding optical density of a low-resolution view.

    Otsu's threshold alone splits the two largest populations, which on a section that fills most of
    the slide are dense and sparse tissue, not tissue and glass. The threshold is therefore the lower of
    Otsu's and the glass level (1st percentile of OD) plus ``glass_margin_od``; when no glass is visible
    (the 1st percentile is itself stained) everything above ``MIN_TISSUE_OD`` is tissue.

    Parameters
    ----------
    slide
        An open slide.
    mpp
        Pixel size of the mask in µm (the view is read at the nearest pyramid level and resampled).
    min_object_um2
        Tissue components smaller than this are dropped (dust, debris).
    max_hole_um2
        Holes smaller than this inside tissue are filled.
    glass_margin_od
        How far above glass (summed log10 OD) a pixel must be to count as tissue.

    Returns
    -------
    The mask with its pixel size and the optical-density threshold used.
    """
    downsample = mpp / slide.mpp
    od = ndimage.gaussian_filter(_low_resolution_od(slide, downsample), 1.0)
    glass = float(np.percentile(od, 1))
    if glass > MAX_GLASS_OD:
        threshold = MIN_TISSUE_OD
    else:
        threshold = glass + glass_margin_od
        if np.ptp(od) > 0:
            threshold = min(threshold, float(threshold_otsu(od)))
        threshold = max(threshold, MIN_TISSUE_OD)
    mask = od > threshold
    px_area = mpp * mpp
    labels, n = ndimage.label(mask)
    if n:
        sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
        keep = np.concatenate([[False], sizes * px_area >= min_object_um2])
        mask = keep[labels]
    holes = ndimage.binary_fill_holes(mask) & ~mask
    hole_labels, n_holes = ndimage.label(holes)
    if n_holes:
        sizes = ndimage.sum_labels(holes, hole_labels, index=np.arange(1, n_holes + 1))
        fill = np.concatenate([[False], sizes * px_area < max_hole_um2])
        mask = mask | fill[hole_labels]
    return TissueMask(mask=mask, mpp=mpp, slide_mpp=slide.mpp, threshold_od=threshold)


def low_resolution_rgb(slide: Slide, downsample: float, max_band_pixels: int = 2**25) -> np.ndarray:
    """RGB view at ``downsample`` × level 0, read band by band so memory stays bounded.

    A band holds at most ``max_band_pixels`` pixels of the level it is read from, even on a slide
    without a pyramid.
    """
    level = slide.best_level_for_downsample(downsample)
    level_ds = slide.level_downsamples[level]
    level_w, _ = slide.level_dimensions[level]
    w0, h0 = slide.dimensions
    out_h, out_w = max(1, round(h0 / downsample)), max(1, round(w0 / downsample))
    level_rows_per_out_row = downsample / level_ds
    band_rows = max(1, int(max_band_pixels / (level_w * level_rows_per_out_row)))
    view = np.empty((out_h, out_w, 3), dtype=np.uint8)
    for r0 in range(0, out_h, band_rows):
        r1 = min(out_h, r0 + band_rows)
        y0 = round(r0 * downsample)
        y1 = min(h0, round(r1 * downsample))
        rows = max(1, round((y1 - y0) / level_ds))
        band = slide.read_region((0, y0), level, (level_w, rows))
        resized = resize(band, (r1 - r0, out_w), order=1, preserve_range=True, anti_aliasing=True)
        view[r0:r1] = np.clip(np.rint(resized), 0, 255).astype(np.uint8)
    return view


def _low_resolution_od(slide: Slide, downsample: float) -> np.ndarray:
    return optical_density(low_resolution_rgb(slide, downsample))


def mask_polygons(mask: TissueMask) -> shapely.MultiPolygon:
    """Tissue outlines in level-0 pixels, holes included, as one (Multi)Polygon.

    Pixel edges of the mask are traced exactly: each mask pixel is a square of ``scale`` level-0 pixels,
    so the polygons' area equals the mask's area.
    """
    shapes = features_from_mask(mask.mask)
    if not shapes:
        return shapely.MultiPolygon()
    merged = shapely.union_all(shapes)
    scaled = shapely.transform(merged, lambda xy: xy * mask.scale)
    if isinstance(scaled, shapely.Polygon):
        return shapely.MultiPolygon([scaled])
    return scaled


def features_from_mask(mask: np.ndarray) -> list[shapely.Polygon]:
    """One polygon per run of mask pixels in a row (mask-pixel units); their union is the mask."""
    padded = np.pad(mask.astype(np.int8), ((0, 0), (1, 1)))
    edges = np.diff(padded, axis=1)
    polys = []
    for row in np.nonzero(edges.any(axis=1))[0]:
        starts = np.nonzero(edges[row] == 1)[0]
        ends = np.nonzero(edges[row] == -1)[0]
        polys.extend(shapely.box(s, row, e, row + 1) for s, e in zip(starts, ends, strict=True))
    return polys


def tissue_geojson(mask: TissueMask, *, name: str = "Tissue") -> dict[str, Any]:
    """A GeoJSON FeatureCollection that QuPath imports as one tissue annotation per region."""
    outline = mask_polygons(mask)
    features = [
        {
            "type": "Feature",
            "geometry": shapely.geometry.mapping(shapely.set_precision(part, 1e-3)),
            "properties": {
                "objectType": "annotation",
                "classification": {"name": name, "color": [0, 160, 80]},
                "area_um2": float(part.area * mask.slide_mpp**2),
            },
        }
        for part in outline.geoms
    ]
    return {"type": "FeatureCollection", "features": features}


def write_tissue(mask: TissueMask, npz_path: str | Path, geojson_path: str | Path | None = None) -> None:
    """Write the mask (``.npz``: mask, mpp, slide_mpp, threshold_od) and optionally its GeoJSON outline."""
    with atomic_path(npz_path) as tmp:
        np.savez_compressed(
            tmp,
            mask=mask.mask,
            mpp=mask.mpp,
            slide_mpp=mask.slide_mpp,
            threshold_od=mask.threshold_od,
        )
    if geojson_path is not None:
        with atomic_path(geojson_path) as tmp:
            tmp.write_text(json.dumps(tissue_geojson(mask)))


def read_tissue(path: str | Path) -> TissueMask:
    """Read a mask written by :func:`write_tissue`."""
    path = require_file(path, "tissue mask")
    try:
        with np.load(path) as data:
            return TissueMask(
                mask=data["mask"].astype(bool),
                mpp=float(data["mpp"]),
                slide_mpp=float(data["slide_mpp"]),
                threshold_od=float(data["threshold_od"]),
            )
    except (OSError, KeyError, ValueError) as exc:
        raise InputError(path, f"is not a tissue mask written by bitro ({exc})") from exc
