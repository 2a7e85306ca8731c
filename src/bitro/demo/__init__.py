"""Virtual tissue: seeded, deterministic demo cohorts in the real on-disk formats.

No data can be downloaded, so :func:`generate_demo` writes small cohorts in the layouts of
``docs/formats.md`` — a HEST-1k Visium cohort (``hest/``), a TCGA bulk cohort (``tcga/``) and a Xenium
bundle (``xenium/XENIUM_DEMO/``) — together with the truth that was planted (``truth/`` in each root),
and one unlabelled ST-sized slide of a new patient in the prediction-only ``slides`` layout (``slides/``,
:mod:`bitro.demo.unlabelled`).
It is a test bed: the planted effects below are generic and are not tuned to favour any method.

Tissue layout (``tissue.py``)
    * Tissue outline: a rounded square (super-ellipse, 88 % of the image) whose edge is perturbed by a
      smooth Gaussian random field (GRF, sigma 120 µm); outside is glass.
    * Tumour nests: a GRF (sigma 35–65 µm per patient) thresholded at the quantile giving the section's
      tumour fraction (20–60 % per patient, ±5 % per section). ``depth_um`` is the signed distance to
      the nest border (> 0 inside nests).
    * Stroma: fibroblasts at a density set by the patient's stromal cellularity, their nuclei oriented
      along the iso-lines of the nest field (parallel to nest borders).
    * Immune cells: density ∝ immune_density (log-normal per patient) × (small baseline + a term decaying
      as exp(−|depth|/35 µm) from the nest border) × exp(0.9 × an immune GRF (sigma 80 µm)); few
      tumour-infiltrating lymphocytes inside nests (decaying as exp(−depth/25 µm)); 15–35 % macrophages.
    * Vessels: Poisson points in stroma (25–60 / mm²), lumen radius 3–11 µm filled with plasma and red
      cells (eosin speckle), lined by elongated endothelial nuclei oriented tangentially.
    * Normal glands (0–8 % of far stroma): small GRF blobs with a ring of normal epithelium and an
      empty lumen.
    * Positions: random sequential adsorption in rounds (parallel dart throwing with Matérn-II thinning
      inside a round) with type-dependent hard-core radii, tile by tile (400 µm) with the previous
      neighbouring tiles as obstacles (no seams); ~1 cell per 100–200 µm² (denser in nests and
      infiltrates, sparse in collagenous stroma).

Cell types and morphology (``morphology.py``)
    Nuclear semi-axes (µm), haematoxylin concentration, chromatin texture amplitude; cytoplasm
    semi-axes (µm) and eosin concentration:

    * tumour epithelium: 5.6 × 4.4, size sd 18 %, irregular outline (2nd/3rd harmonics ≤ 12 %),
      chromatin 0.55 with coarse texture 0.45 and a membrane rim (vesicular); cytoplasm 8 × 7, eosin 0.32;
    * lymphocyte: 3.1 × 2.9 round, dense homogeneous chromatin 1.05 (texture 0.10); scant cytoplasm
      3.8, eosin 0.08;
    * fibroblast: 7.0 × 1.7 spindle, chromatin 0.75; thin cytoplasm 10 × 2.8, eosin 0.15;
    * macrophage: 4.8 × 3.6, pale (0.42) fine chromatin; abundant cytoplasm 10.5 × 9, eosin 0.48;
    * endothelium: 5.8 × 1.5 flat, chromatin 0.65; cytoplasm 7 × 2.2, eosin 0.12;
    * normal epithelium: 3.8 × 3.0 regular oval, chromatin 0.68; cytoplasm 6 × 5, eosin 0.26.

    Tumour nuclei grow by up to 12 % with depth into the nests. Per-cell log-normal jitter of size,
    aspect, chromatin and eosin.

Rendering (``render.py``)
    Haematoxylin and eosin concentration maps (nuclei, cytoplasm, stromal collagen with a fibrous
    texture, vessel lumina) are painted per region from per-cell ellipse stencils, blurred (Gaussian,
    sigma 0.5–1.1 px per slide) and turned into RGB by Beer–Lambert, I = 255 · g · exp(−(c_H h + c_E e
    + r d)), with per-slide stain vectors h, e rotated 6° (sd) away from the Ruifrok reference,
    intensities c_H, c_E log-normal (sd 0.18 / 0.22), a residual absorber r (0–0.04 OD, vector d),
    illumination g ≈ 0.95, then Gaussian noise (1.5–4 grey levels) — a stain batch effect that stain
    normalisation must remove. Slides are BigTIFF pyramids (tile 256, JPEG, downsample 4 per level,
    resolution tags in pixels/cm) written strip by strip, so memory is bounded.

Expression (``expression.py``)
    G genes (default 100: markers of the six types, hypoxia, proliferation, cytotoxic, hormone-receptor,
    housekeeping, MT- and RPL/RPS genes, others, then ``DMGxxxx`` fillers) with stable Ensembl-like ids
    ``ENSG9xxxxxxxxxx.N``. Per-type mean profiles are log-normal (gene baseline sd 0.8, type noise sd
    0.35) with +3.5 log fold for markers (+1.8 for shared ones), scaled to a per-type RNA content
    (tumour 1.3, lymphocyte 0.45, fibroblast 0.9, macrophage 1.1, endothelium 0.7, normal epithelium 0.9 ×
    450 molecules). Per cell the mean is multiplied by sqrt(nuclear area / type mean) and by spatial
    programmes: hypoxia genes × exp(1.3 · clip(depth / 80 µm, 0, 2)) in tumour cells; proliferation ×
    exp(0.9 · exp(−depth / 40 µm) + patient level N(0, 0.5)) in tumour cells (invasive edge); cytotoxic
    genes × exp(1.2 · exp(−|depth| / 30 µm)) in lymphocytes; ESR1/PGR/ERBB2 × a per-patient tumour
    factor (N(0, 1.0/0.8/0.8) on the log scale) that the image does not show. Counts are negative
    binomial (gamma–Poisson, theta 4).

Measurements
    * Visium (HEST): 55 µm spots on a 100 µm hexagonal lattice (Visium ``array_row``/``array_col``);
      a spot holds the cells whose centroid lies inside it, after binomial thinning with a per-slide
      capture efficiency chosen for ~3000 UMIs per in-tissue spot (× log-normal sd 0.15). Truth
      ``layers["thinned"]`` sums exactly to the spot counts.
    * Bulk (TCGA): the sum of all cells of all of a sample's slides, as TPM with per-gene effective
      lengths (log-normal around 2 kb), 10⁶ per aliquot.
    * Xenium: a 60-gene panel (no housekeeping/MT/ribosomal genes), each transcript detected with
      probability 0.5, plus negative-control probes (Poisson 0.02 per cell; readers drop them);
      coordinates in µm of the Xenium frame reached from H&E pixels by a similarity transform (scale
      0.5/0.2125 ± 1 %, rotation ±3°, translation) written as ``he_imagealignment.csv``. Truth
      ``layers["detected"]`` holds the panel counts.
    * CellViT segmentation (HEST): type-dependent misses (5–12 %), ~3 % spurious detections (fragments
      and debris, 40 % ``Dead``), outline jitter (vertex 6 %, scale 8 %, shift 0.4 µm) and 8 % class
      confusion.

Variation between slides: patients differ in tumour fraction, nest scale, immune density, stromal
cellularity, vessel and gland density, proliferation and hormone-receptor levels; sections of a patient
share them up to small jitter; every slide has its own fields, stain, blur and noise.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from bitro.demo.cohorts import demo_sample_ids, generate_demo
from bitro.demo.config import GENERATOR_VERSION, PRESETS, DemoConfig, preset
from bitro.demo.morphology import CELL_TYPES
from bitro.demo.render import SlideRenderer, SlideStyle, draw_slide_style, write_pyramidal_tiff
from bitro.demo.tissue import TissueFields, draw_patient_params, generate_cells
from bitro.demo.unlabelled import UNLABELLED_DIR, UNLABELLED_IDS, write_unlabelled_demo

#: Approximate tissue area per cell (µm²) used to size a virtual slide from a cell count.
AREA_PER_CELL_UM2 = 195.0
#: Fraction of the image covered by the tissue outline.
TISSUE_FRACTION = 0.72


def write_virtual_slide(
    path: str | Path,
    *,
    n_cells: int,
    seed: int,
    mpp: float = 0.5,
    quality: int = 90,
    style: SlideStyle | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Write one large virtual slide in bounded memory.

    The slide is sized so that it holds about ``n_cells`` cells (10⁶ cells ≈ 16.5 × 16.5 mm, ≈ 33k px
    square at 0.5 µm/px). Cells are generated tile by tile; pixels are rendered and encoded strip by
    strip; only per-cell arrays, coarse fields and the level-1 image (downsample 4) are kept in memory.

    Parameters
    ----------
    path
        Output ``.tif`` path.
    n_cells
        Approximate number of cells.
    seed
        Seed; the same seed gives the same file.
    mpp
        Pixel size (µm/px).
    quality
        JPEG quality.
    style
        Stain and scanner parameters; drawn from ``seed`` by default. The same seed with two styles
        gives the same tissue stained two ways.
    progress
        Show a tqdm bar over the strips.

    Returns
    -------
    dict
        ``path``, ``cells``, ``cell_type_counts``, ``width``, ``height``, ``levels``, ``mpp``,
        ``seconds``, ``seconds_cells``, ``seconds_render``.
    """
    t0 = time.perf_counter()
    path = Path(path)
    side = float(np.sqrt(n_cells * AREA_PER_CELL_UM2 / TISSUE_FRACTION))
    params = draw_patient_params(np.random.default_rng([seed, 900]))
    fields = TissueFields(np.random.default_rng([seed, 901]), side, side, params)
    cells = generate_cells(fields, [seed, 902])
    t1 = time.perf_counter()
    style = style or draw_slide_style(np.random.default_rng([seed, 903]))
    renderer = SlideRenderer(cells, fields, style, mpp, [seed, 904])
    w = h = round(side / mpp)
    tmp = path.with_name(path.name + ".part")
    levels = write_pyramidal_tiff(
        tmp, renderer.render, h, w, mpp=mpp, quality=quality, progress=progress, desc=path.name
    )
    tmp.replace(path)
    t2 = time.perf_counter()
    ct, cnt = np.unique(cells.cell_type, return_counts=True)
    return {
        "path": str(path),
        "cells": len(cells),
        "cell_type_counts": {CELL_TYPES[int(t)]: int(k) for t, k in zip(ct, cnt, strict=True)},
        "width": w,
        "height": h,
        "levels": [list(s) for s in levels],
        "mpp": mpp,
        "seconds": t2 - t0,
        "seconds_cells": t1 - t0,
        "seconds_render": t2 - t1,
    }


__all__ = [
    "CELL_TYPES",
    "GENERATOR_VERSION",
    "PRESETS",
    "UNLABELLED_DIR",
    "UNLABELLED_IDS",
    "DemoConfig",
    "demo_sample_ids",
    "generate_demo",
    "preset",
    "write_unlabelled_demo",
    "write_virtual_slide",
]
