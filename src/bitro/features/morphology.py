"""Nuclear features of cell crops: HistomicsTK's (the ``morphology`` encoder) and bitro's hand-written ones.

HistomicsTK (``histomicstk.features``) computes, per nucleus: morphometry (size, shape, Hu moments),
intensity statistics, gradient statistics and Haralick texture of the haematoxylin channel (its colour
deconvolution of the stain-normalised crop with its standard H&E vectors) under the nucleus mask. Its
functions take one label image with many objects, so a batch of crops is laid out as one mosaic (crop
*i* is label *i* + 1) and every feature group runs once per batch over shared region properties: no
per-cell Python loop of ours.

The nucleus mask is the cell's outline rasterised into its crop (:func:`outline_masks`); a cell without
an outline gets the dark component at (or nearest) the crop centre (:func:`centre_component_mask`).
``Orientation.Orientation`` is dropped: the angle of the major axis in slide coordinates says nothing
about the cell.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from bitro._histomicstk import histomicstk, quiet

if TYPE_CHECKING:
    from collections.abc import Iterable

    from bitro.preprocess.crops import CropParams

#: Column prefixes of the HistomicsTK feature groups, in output order.
HISTOMICSTK_GROUPS = ("morphometry", "intensity", "gradient", "haralick")
#: Grey levels of HistomicsTK's co-occurrence matrices.
GLCM_LEVELS = 32
_DROPPED = ("Orientation.Orientation",)


def centre_component_mask(crop: np.ndarray) -> np.ndarray:
    """The crop's nucleus when no outline is known: the OD-above-Otsu component at (or nearest) the centre."""
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    od = -np.log(np.maximum(crop.astype(np.float32), 1.0) / 255.0)
    total = od.sum(axis=2)
    h, w = total.shape
    threshold = threshold_otsu(total) if np.ptp(total) > 0 else np.inf
    labels, n = ndimage.label(total > threshold)
    centre = labels[h // 2, w // 2]
    if centre == 0 and n:
        distance = ndimage.distance_transform_edt(labels == 0, return_indices=True)[1]
        centre = labels[tuple(distance[:, h // 2, w // 2])]
    return labels == centre if centre else np.zeros((h, w), dtype=bool)


def outline_masks(
    x_px: Iterable[float],
    y_px: Iterable[float],
    geometry: Iterable[bytes | None],
    *,
    slide_mpp: float,
    params: CropParams,
) -> np.ndarray:
    """Nucleus masks (n × size × size, bool) of cells' outlines (WKB, level-0 px) in their crops.

    The crops are the ones :mod:`bitro.preprocess.crops` cuts (``crop_origins``): pixel ``(r, c)`` of a
    crop has its centre at grid ``origin + (c, r) + 0.5`` on the crop's µm/px grid. A cell without an
    outline gets an empty mask (:class:`MorphologyEncoder` then finds its nucleus in the crop).
    """
    import shapely
    from skimage.draw import polygon

    from bitro.preprocess.crops import crop_origins

    xs, ys = np.asarray(list(x_px), np.float64), np.asarray(list(y_px), np.float64)
    origins = crop_origins(xs, ys, slide_mpp, params)
    factor = params.mpp / slide_mpp
    shapes = shapely.from_wkb(np.asarray(list(geometry), dtype=object))
    masks = np.zeros((len(xs), params.size, params.size), dtype=bool)
    for i, shape in enumerate(shapes):
        if shape is None or shape.is_empty:
            continue
        if shape.geom_type != "Polygon":
            shape = max(getattr(shape, "geoms", [shape]), key=lambda g: g.area)
        ring = np.asarray(shape.exterior.coords) / factor - origins[i] - 0.5
        rr, cc = polygon(ring[:, 1], ring[:, 0], shape=(params.size, params.size))
        masks[i, rr, cc] = True
    return masks


def _mosaic(images: np.ndarray, columns: int) -> np.ndarray:
    """Tile (n, h, w, …) images into one (rows·h, columns·w, …) image, row-major, padding with zeros."""
    n, h, w = images.shape[:3]
    rows = -(-n // columns)
    padded = np.zeros((rows * columns, *images.shape[1:]), dtype=images.dtype)
    padded[:n] = images
    tail = images.shape[3:]
    grid = padded.reshape(rows, columns, h, w, *tail).swapaxes(1, 2)
    return grid.reshape(rows * h, columns * w, *tail)


def histomicstk_features(crops: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """HistomicsTK nuclear features (n × d float32, NaN → 0) of crops and their nucleus masks, and names.

    Every mask must be non-empty (one row per crop comes back, in order).
    """
    from skimage.measure import regionprops

    features = histomicstk("histomicstk.features")
    deconvolution = histomicstk("histomicstk.preprocessing.color_deconvolution")
    n = len(crops)
    if n == 0:
        return np.empty((0, 0), np.float32), []
    empty = ~masks.reshape(n, -1).any(axis=1)
    if empty.any():
        raise ValueError(f"{int(empty.sum())} crops have an empty nucleus mask")
    columns = max(1, int(np.ceil(np.sqrt(n))))
    labels = _mosaic(masks.astype(np.int32) * np.arange(1, n + 1, dtype=np.int32)[:, None, None], columns)
    rgb = _mosaic(crops, columns)
    stains = np.array(
        [deconvolution.stain_color_map[s] for s in ("hematoxylin", "eosin", "null")], dtype=np.float64
    ).T
    with quiet():
        nuclei = deconvolution.color_deconvolution(rgb, stains, 255).Stains[..., 0].astype(np.float64)
        props = regionprops(labels, intensity_image=nuclei)
        frames = [
            features.compute_morphometry_features(labels, rprops=props),
            features.compute_intensity_features(labels, nuclei, rprops=props),
            features.compute_gradient_features(labels, nuclei, rprops=props),
            features.compute_haralick_features(labels, nuclei, num_levels=GLCM_LEVELS, rprops=props),
        ]
    names = [c for f in frames for c in f.columns if c not in _DROPPED]
    table = np.column_stack(
        [f[c].to_numpy(np.float64) for f in frames for c in f.columns if c not in _DROPPED]
    )
    return np.nan_to_num(table, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32), names


def nucleus_masks(crops: np.ndarray, masks: np.ndarray | None) -> np.ndarray:
    """The masks to measure: the given ones, with the centre component where a mask is empty or absent.

    A crop with no dark component at all gets a disk of 3 px at its centre, so every crop has a row.
    """
    n, h, w = crops.shape[:3]
    out = np.zeros((n, h, w), dtype=bool) if masks is None else np.array(masks, dtype=bool, copy=True)
    yy, xx = np.mgrid[:h, :w]
    disk = (yy - h // 2) ** 2 + (xx - w // 2) ** 2 <= 9
    for i in np.nonzero(~out.reshape(n, -1).any(axis=1))[0]:
        found = centre_component_mask(crops[i])
        out[i] = found if found.any() else disk
    return out


@dataclass
class HandcraftedMorphology:
    """bitro's twelve hand-written nuclear features (size, shape, stain intensity, colour, texture).

    Kept for the benchmark against HistomicsTK's (``benchmarks/bench_histomicstk.py``); the nucleus is the
    given mask where there is one, else the centre component.
    """

    name: str = "morphology_handcrafted"
    dim: int = 12
    sha256: str = "none"

    def embed(self, crops: np.ndarray, masks: np.ndarray | None = None) -> np.ndarray:
        """Features (n × 12, float32) of uint8 crops (n, h, w, 3)."""
        nuclei = nucleus_masks(crops, masks)
        return np.stack([_handcrafted(c, m) for c, m in zip(crops, nuclei, strict=True)]).astype(np.float32)


def _handcrafted(crop: np.ndarray, nucleus: np.ndarray) -> np.ndarray:
    from skimage.feature import graycomatrix, graycoprops
    from skimage.filters import sobel
    from skimage.measure import regionprops

    od = -np.log(np.maximum(crop.astype(np.float32), 1.0) / 255.0)
    total = od.sum(axis=2)
    surround = ~nucleus
    grey = np.clip(crop.mean(axis=2), 0, 255).astype(np.uint8) // 8
    glcm = graycomatrix(grey, [1], [0, np.pi / 2], levels=32, symmetric=True, normed=True)
    props = regionprops(nucleus.astype(np.uint8))[0] if nucleus.any() else None
    nuc_od = total[nucleus] if nucleus.any() else np.zeros(1)

    def ratio(mask: np.ndarray) -> float:
        if not mask.any():
            return 0.0
        return float(od[mask, 0].mean() / max(od[mask, 2].mean(), 1e-3))

    return np.array(
        [
            nucleus.sum(),
            props.eccentricity if props is not None else 0.0,
            props.solidity if props is not None else 0.0,
            nuc_od.mean(),
            nuc_od.std(),
            np.percentile(nuc_od, 90),
            total[surround].mean() if surround.any() else 0.0,
            ratio(surround),
            ratio(nucleus),
            graycoprops(glcm, "contrast").mean(),
            graycoprops(glcm, "homogeneity").mean(),
            sobel(total).mean(),
        ]
    )
