"""The ``histomicstk`` segmentation backend: HistomicsTK's Kofahi nuclear detection on haematoxylin.

``histomicstk.segmentation.nuclear.detect_nuclei_kofahi`` (Al-Kofahi et al. 2010, with HistomicsTK's
difference-of-Gaussian in place of the Laplacian) takes a haematoxylin *intensity* image and a
foreground mask, closes and opens the mask (disk of 3 px), enhances blobs with a scale-adaptive
multiscale DoG between the smallest and largest nuclear radius, clusters pixels on local maxima of the
response, splits and drops labels below the smallest area. Here:

- the haematoxylin intensity is the slide's own stain model applied to the tile, re-rendered as the
  haematoxylin-only image ``255 · exp(−c_H)`` (HistomicsTK's ``color_deconvolution`` channel);
- the foreground is the same per-slide Otsu threshold of smoothed haematoxylin the classical backend
  uses (one number per slide, so tiles agree), in place of HistomicsTK's fixed intensity of 60;
- radii and areas are set in µm (:class:`bitro.preprocess.segment.ClassicalParams`) and converted to
  pixels at the segmentation's µm/px.

Tiling, overlap, workers, checkpoints, the area range and outlines are the classical backend's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage

from bitro._histomicstk import histomicstk, quiet

if TYPE_CHECKING:
    from bitro.preprocess.segment import ClassicalParams
    from bitro.preprocess.stain import StainModel


def kofahi_labels(
    rgb: np.ndarray, model: StainModel, threshold: float, params: ClassicalParams
) -> np.ndarray:
    """Label image (int32, 0 = background) of one RGB tile's nuclei by HistomicsTK's Kofahi detection."""
    from bitro.preprocess.segment import haematoxylin

    nuclear = histomicstk("histomicstk.segmentation.nuclear")
    concentration = model.concentrations(rgb)[..., 0]
    intensity = 255.0 * np.exp(-concentration.astype(np.float64))
    smoothed = ndimage.gaussian_filter(haematoxylin(rgb, model), params.sigma_um / params.mpp)
    foreground = smoothed > threshold
    if not foreground.any():
        return np.zeros(foreground.shape, dtype=np.int32)
    px = 1.0 / params.mpp
    with quiet():
        labels = nuclear.detect_nuclei_kofahi(
            intensity,
            foreground,
            min_radius=params.min_radius_um * px,
            max_radius=params.max_radius_um * px,
            min_nucleus_area=max(1, round(params.min_area_um2 * px * px)),
            local_max_search_radius=params.search_radius_um * px,
        )
    return np.asarray(labels, dtype=np.int32)
