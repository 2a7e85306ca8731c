"""The choices of the pipeline's pluggable steps, stated once.

The command line (``bitro --help``), the library and the config schema's enums all take their lists
from here (``tests/test_options.py`` checks the schema), and this module imports nothing, so ``bitro
--help`` stays fast.
"""

from __future__ import annotations

STAIN_METHODS: tuple[str, ...] = (
    "vahadane",
    "macenko",
    "histomicstk_macenko_pca",
    "histomicstk_xu_snmf",
    "none",
)
"""Stain models: bitro's Vahadane and Macenko, HistomicsTK's Macenko PCA and Xu SNMF, or none."""

FITTED_STAIN_METHODS: tuple[str, ...] = tuple(m for m in STAIN_METHODS if m != "none")
"""The stain methods that fit vectors (and so have a reference model)."""

SEGMENTATION_BACKENDS: tuple[str, ...] = ("classical", "histomicstk", "precomputed", "cellvit")
"""Cell sources: bitro's classical segmenter, HistomicsTK's, a segmentation file, or CellViT++."""

ENCODERS: tuple[str, ...] = ("dinov3_vitl16", "efficientnet_lite0", "morphology")
"""Cell encoders (``bitro.features.encoders``)."""
