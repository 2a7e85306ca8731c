"""The choices of the pipeline's pluggable steps, stated once.

The command line (``bitro --help``), the library and the config schema's enums all take their lists
from here (``tests/test_options.py`` checks the schema), and this module imports nothing when loaded, so
``bitro --help`` stays fast.
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

FORMAT_LEVELS: Final[dict[str, str]] = {"hest": "st", "tcga": "bulk", "xenium": "xenium"}
"""The labelled input layouts (``bitro.io``, ``bitro.layout``): slides with measured expression, and the
level each measures. Every key is also in :data:`FORMATS`."""

LABELLED_FORMATS: tuple[str, ...] = tuple(FORMAT_LEVELS)
"""Input layouts with expression: a cohort in one of them can be trained on and scored."""

PREDICTION_FORMATS: tuple[str, ...] = ("slides",)
"""Input layouts without expression (whole-slide images and a sheet): a trained model is only applied to
them. They measure no level, so they are not keys of :data:`FORMAT_LEVELS`."""

FORMATS: tuple[str, ...] = (*LABELLED_FORMATS, *PREDICTION_FORMATS)
"""Input layouts a cohort can come in: the labelled ones, then the prediction-only ones."""

LEVELS: tuple[str, ...] = ("st", "bulk", "xenium")
"""What a cohort's expression measures: spots, whole slides, single cells."""

GROUP_BY: tuple[str, ...] = ("sample", "patient")
"""What a leave-one-out ST split holds out together (``bitro.folds.splits``)."""

FEATURE_SCOPES: tuple[str, ...] = ("sample", "cohort")
"""Where the PCA of the cell embeddings is fitted: per sample, or on the training fold's cohort."""

TRANSFER_MODES: tuple[str, ...] = ("none", "full", "lora")
"""Bidirectional transfer: none (plain training), full fine-tuning, or LoRA adapters."""

DEMO_PRESETS: tuple[str, ...] = ("default", "small")
"""Demo cohort sizes (``bitro.demo.config``)."""

DINOV3_POOLINGS: tuple[str, ...] = ("mean", "cls")
"""How crop mode pools a DINOv3 crop's tokens into one vector (``bitro.features.encoders``)."""

EmbedMode = Literal["crop", "tile-token"]
EMBED_MODES: tuple[str, ...] = ("auto", *get_args(EmbedMode))
"""Embedding modes: one encoder forward per cell crop, per tile, or ``auto`` (:data:`AUTO_EMBED_MODE`)."""

AUTO_EMBED_MODE: dict[str, EmbedMode] = {
    "dinov3_vitl16": "tile-token",
    "efficientnet_lite0": "crop",
    "morphology": "crop",
    "morphology_histomicstk": "crop",
}
"""What ``auto`` resolves to, per encoder. Figures in benchmarks/RESULTS.md, "Tile-token mode": DINOv3
ViT-L/16 tile-token needs 4.7 instead of 125.7 GFLOP per cell and ran 27–29× faster than 224-px crops on an
H100 (13× end to end); EfficientNet-Lite0 gains only 1.7–2.4× over its 48-px crops while its stride-32 map
blurs neighbouring cells (demo cell-type balanced accuracy 0.44 instead of 0.78, spot PCC gene 0.14
instead of 0.62); the morphology encoders have no tokens."""

NO_TOKENS = (
    "the morphology encoders compute nuclear features from each cell's crop and have no tokens to "
    "pool: use crop mode (--mode crop, features.mode: crop) or an encoder with tokens "
    "(dinov3_vitl16, efficientnet_lite0)"
)
"""Why tile-token mode refuses a nuclear-feature encoder."""


def resolve_embed_mode(mode: str, encoder: str, *, setting: str = "--mode") -> EmbedMode:
    """The embedding mode (``crop`` or ``tile-token``) that ``mode`` (``auto|crop|tile-token``) means.

    The command line (``bitro embed``) and the workflow (``workflow/rules/embedding.smk``) both call this.

    Parameters
    ----------
    mode, encoder
        The requested mode and the encoder's name.
    setting
        How the caller names the mode setting in errors (``--mode``, ``features.mode``).

    Raises
    ------
    bitro.errors.UsageError
        An unknown mode or encoder; :class:`bitro.errors.TileSettingsError` for tile-token mode with a
        nuclear-feature encoder.
    """
    from bitro.errors import TileSettingsError, UsageError

    if encoder not in AUTO_EMBED_MODE:
        raise UsageError(encoder, f"unknown encoder (expected one of {sorted(AUTO_EMBED_MODE)})")
    if mode not in EMBED_MODES:
        raise UsageError(setting, f"unknown embedding mode {mode!r} (expected one of {EMBED_MODES})")
    resolved: EmbedMode = AUTO_EMBED_MODE[encoder] if mode == "auto" else mode  # type: ignore[assignment]
    if resolved == "tile-token" and encoder in NUCLEAR_FEATURE_ENCODERS:
        raise TileSettingsError(f"{setting} {mode}", NO_TOKENS)
    return resolved
