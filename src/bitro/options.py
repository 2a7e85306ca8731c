"""The choices of the pipeline's pluggable steps, stated once.

The command line (``bitro --help``), the library and the config schema's enums all take their lists
from here (``tests/test_options.py`` checks the schema), and this module imports nothing, so ``bitro
--help`` stays fast.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

StainMethod = Literal["vahadane", "macenko", "histomicstk_macenko_pca", "histomicstk_xu_snmf", "none"]
STAIN_METHODS: tuple[str, ...] = get_args(StainMethod)
"""Stain models: bitro's Vahadane and Macenko, HistomicsTK's Macenko PCA and Xu SNMF, or none."""

DEFAULT_STAIN_METHOD: Final = "vahadane"
"""The default stain model (the paper's). Macenko is closer to the demo's planted vectors and faster, but
classical segmentation from its haematoxylin is worse at every threshold tried (``benchmarks/RESULTS.md``,
"HistomicsTK against bitro's own")."""

FITTED_STAIN_METHODS: tuple[str, ...] = tuple(m for m in STAIN_METHODS if m != "none")
"""The stain methods that fit vectors (and so have a reference model)."""

SEGMENTATION_BACKENDS: tuple[str, ...] = ("classical", "histomicstk", "precomputed", "cellvit")
"""Cell sources: bitro's classical segmenter, HistomicsTK's, a segmentation file, or CellViT++."""

ENCODERS: tuple[str, ...] = ("dinov3_vitl16", "efficientnet_lite0", "morphology", "morphology_histomicstk")
"""Cell encoders (``bitro.features.encoders``)."""

NUCLEAR_FEATURE_ENCODERS: tuple[str, ...] = ("morphology", "morphology_histomicstk")
"""The encoders that measure each cell's nucleus (no weights, no tokens; crop mode only)."""
