"""Tissue detection on a low-resolution view of the slide."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu
from skimage.transform import resize

from bitro.io.slides import Slide

#: Optical density below this is glass whatever Otsu says (a blank slide has no bimodal histogram).
MIN_TISSUE_OD = 0.05


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
) -> TissueMask:
    """Detect tissue by Otsu's threshold on optical density of a low-resolution view.

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

    Returns
    -------
    The mask with its pixel size and the optical-density threshold used.
    """
    downsample = mpp / slide.mpp
    od = ndimage.gaussian_filter(_low_resolution_od(slide, downsample), 1.0)
    threshold = MIN_TISSUE_OD
    if np.ptp(od) > 0:
        threshold = max(float(threshold_otsu(od)), MIN_TISSUE_OD)
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


def _low_resolution_od(slide: Slide, downsample: float, max_band_pixels: int = 2**25) -> np.ndarray:
    """Optical density at ``downsample`` × level 0, read band by band so memory stays bounded.

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
    od = np.empty((out_h, out_w), dtype=np.float32)
    for r0 in range(0, out_h, band_rows):
        r1 = min(out_h, r0 + band_rows)
        y0 = round(r0 * downsample)
        y1 = min(h0, round(r1 * downsample))
        rows = max(1, round((y1 - y0) / level_ds))
        band = slide.read_region((0, y0), level, (level_w, rows))
        od[r0:r1] = resize(
            optical_density(band), (r1 - r0, out_w), order=1, preserve_range=True, anti_aliasing=True
        )
    return od
