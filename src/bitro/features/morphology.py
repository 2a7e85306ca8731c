"""Nuclear features of cell crops: bitro's hand-written ones (``morphology``) and HistomicsTK's
(``morphology_histomicstk``).

The hand-written features (:class:`HandcraftedMorphology`, ``MORPHOLOGY_FEATURES``) measure the nucleus
and its surround in the crop's optical density and grey levels. HistomicsTK's nuclear feature set
(``histomicstk.features``, as its ``compute_nuclei_features`` computes it with a cytoplasm image, less the
Fourier shape descriptors) is computed on the stain-normalised crop, colour-deconvolved with HistomicsTK's
standard H&E vectors:

- ``Nucleus.*``: morphometry (size, shape, Hu moments) of the nucleus mask, and intensity, gradient and
  Haralick texture statistics of the haematoxylin channel under it;
- ``Cytoplasm.*``: intensity, gradient and Haralick statistics of the eosin channel in the ring
  ``CYTOPLASM_WIDTH`` px wide around the nucleus (HistomicsTK's ``dilate_xor``, its default width of 8).

HistomicsTK's functions take one label image with many objects, so a batch of crops is laid out as one
mosaic (crop *i* is label *i* + 1, each crop padded with glass by the ring's width so no two rings
touch) and every feature group runs once per batch over shared region properties: no per-cell loop of
ours. Most of the time goes to HistomicsTK's per-object intensity statistics (``benchmarks/RESULTS.md``).

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
    from pathlib import Path

    from bitro.preprocess.crops import CropParams

#: Column prefixes of the HistomicsTK feature groups, in output order.
HISTOMICSTK_GROUPS = ("morphometry", "intensity", "gradient", "haralick")
#: Grey levels of HistomicsTK's co-occurrence matrices.
GLCM_LEVELS = 32
#: Width (px) of the cytoplasm ring around each nucleus (HistomicsTK's ``cyto_width`` default).
CYTOPLASM_WIDTH = 8
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
    label_tools = histomicstk("histomicstk.segmentation.label")
    n = len(crops)
    if n == 0:
        return np.empty((0, 0), np.float32), []
    empty = ~masks.reshape(n, -1).any(axis=1)
    if empty.any():
        raise ValueError(f"{int(empty.sum())} crops have an empty nucleus mask")
    pad = CYTOPLASM_WIDTH
    crops = np.pad(crops, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=255)
    masks = np.pad(masks, ((0, 0), (pad, pad), (pad, pad)))
    columns = max(1, int(np.ceil(np.sqrt(n))))
    labels = _mosaic(masks.astype(np.int32) * np.arange(1, n + 1, dtype=np.int32)[:, None, None], columns)
    stains = np.array(
        [deconvolution.stain_color_map[s] for s in ("hematoxylin", "eosin", "null")], dtype=np.float64
    ).T
    with quiet():
        channels = deconvolution.color_deconvolution(_mosaic(crops, columns), stains, 255).Stains
        nuclei, cytoplasm = channels[..., 0].astype(np.float64), channels[..., 1].astype(np.float64)
        ring = label_tools.dilate_xor(labels, neigh_width=CYTOPLASM_WIDTH)
        props = regionprops(labels, intensity_image=nuclei)
        ring_props = regionprops(ring, intensity_image=cytoplasm)
        if [p.label for p in ring_props] != [p.label for p in props]:
            raise ValueError("a nucleus has no cytoplasm ring in its crop")
        nucleus = [
            features.compute_morphometry_features(labels, rprops=props),
            features.compute_intensity_features(labels, nuclei, rprops=props),
            features.compute_gradient_features(labels, nuclei, rprops=props),
            features.compute_haralick_features(labels, nuclei, num_levels=GLCM_LEVELS, rprops=props),
        ]
        around = [
            features.compute_intensity_features(ring, cytoplasm, rprops=ring_props),
            features.compute_gradient_features(ring, cytoplasm, rprops=ring_props),
            features.compute_haralick_features(ring, cytoplasm, num_levels=GLCM_LEVELS, rprops=ring_props),
        ]
    kept = [
        (frame, column, prefix)
        for frames, prefix in ((nucleus, "Nucleus."), (around, "Cytoplasm."))
        for frame in frames
        for column in frame.columns
        if column not in _DROPPED
    ]
    table = np.column_stack([frame[column].to_numpy(np.float64) for frame, column, _ in kept])
    names = [prefix + column for _, column, prefix in kept]
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


#: bitro's hand-written features of the ``morphology`` encoder, in column order.
MORPHOLOGY_FEATURES = (
    "nucleus_area_px",
    "nucleus_eccentricity",
    "nucleus_solidity",
    "nucleus_mean_od",
    "nucleus_od_std",
    "nucleus_od_p90",
    "surround_mean_od",
    "surround_red_blue_ratio",
    "nucleus_red_blue_ratio",
    "texture_contrast",
    "texture_homogeneity",
    "edge_strength",
)


@dataclass
class HandcraftedMorphology:
    """The ``morphology`` encoder: bitro's 12 hand-written nuclear features (size, shape, stain intensity,
    colour of nucleus and surround, texture), ``MORPHOLOGY_FEATURES``.

    The nucleus is the given mask (the cell's outline) where there is one, else the centre component. On the
    demo they predict spot expression better than HistomicsTK's (HEST probe PCC gene 0.69 against 0.56) at
    8× the speed, though HistomicsTK's tell cell types apart better (``benchmarks/RESULTS.md``). Values are
    raw, each on its own scale.
    """

    name: str = "morphology"
    dim: int = len(MORPHOLOGY_FEATURES)
    sha256: str = "none"
    uses_nucleus_masks: bool = True

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


@dataclass
class CellOutlines:
    """The outlines of a sample's cells, rasterised into their crops on demand (row *i* = crop *i*)."""

    x_px: np.ndarray
    y_px: np.ndarray
    geometry: np.ndarray
    slide_mpp: float
    params: CropParams

    @classmethod
    def read(cls, cells_path: str | Path, *, size: int, mpp: float, n_crops: int) -> CellOutlines:
        """Outlines from ``cells.parquet`` for crops of ``size`` px at ``mpp`` µm/px (``crops.zarr``'s)."""
        from bitro.errors import InputError
        from bitro.preprocess.cells import read_cells
        from bitro.preprocess.crops import CropParams

        table = read_cells(cells_path)
        if len(table) != n_crops:
            raise InputError(
                cells_path, f"has {len(table)} cells but the crops are of {n_crops}: not the same cells"
            )
        moved = table["x_px"].to_numpy() > 0
        ratios = table["x_um"].to_numpy()[moved] / table["x_px"].to_numpy()[moved]
        if not len(ratios) or not np.all(np.isfinite(ratios)) or np.median(ratios) <= 0:
            raise InputError(
                cells_path, "has no cell from which to tell the slide's µm per pixel (x_um / x_px)"
            )
        return cls(
            table["x_px"].to_numpy(np.float64),
            table["y_px"].to_numpy(np.float64),
            table["geometry"].to_numpy(),
            float(np.median(ratios)),
            CropParams(size=size, mpp=mpp),
        )

    def masks(self, start: int, stop: int) -> np.ndarray:
        """Nucleus masks of crops ``start`` to ``stop`` (empty where a cell has no outline)."""
        rows = slice(start, stop)
        return outline_masks(
            self.x_px[rows],
            self.y_px[rows],
            self.geometry[rows],
            slide_mpp=self.slide_mpp,
            params=self.params,
        )
