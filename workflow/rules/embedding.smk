# Embedding mode: what the embed rule (features.smk) reads and how it calls `bitro embed`.
#
# features.mode: crop runs the encoder on every cell's crop (crops.zarr); tile-token runs it once per tile
# of the slide and pools the tokens under each nucleus (bitro.features.tokens). `auto` takes, per
# encoder, the better trade-off measured in benchmarks/RESULTS.md ("Tile-token mode"), which
# bitro.features.tokens.AUTO_MODE repeats (a test keeps the two equal):
# - dinov3_vitl16 -> tile-token: 4.7 instead of 125.7 GFLOP per cell (262 cells per 512-px tile); on an
#   H100 23,600-25,300 instead of 870 cells/s (27-29x; 13x end to end, slide reading included). Quality needs
#   the real weights to measure (benchmarks/compare_embed_modes.py --encoder dinov3_vitl16).
# - efficientnet_lite0 -> crop: tile-token is only 1.7x (2 CPU cores) to 2.4x (H100) faster than its
#   48-px crops, and its stride-32 map blurs neighbouring cells together: on the demo the cell-type
#   probe's balanced accuracy drops from 0.78 to 0.44 and the spot probe's PCC gene from 0.62 to 0.14.
# - morphology, morphology_histomicstk -> crop: they have no tokens.
AUTO_EMBED_MODE = {
    "dinov3_vitl16": "tile-token",
    "efficientnet_lite0": "crop",
    "morphology": "crop",
    "morphology_histomicstk": "crop",
}
EMBED_MODE = (
    AUTO_EMBED_MODE[FEATURES["encoder"]]
    if FEATURES["mode"] == "auto"
    else FEATURES["mode"]
)
NUCLEAR_FEATURE_ENCODERS = ("morphology", "morphology_histomicstk")
if EMBED_MODE == "tile-token" and FEATURES["encoder"] in NUCLEAR_FEATURE_ENCODERS:
    raise ValueError(
        "features.mode tile-token needs an encoder with tokens (dinov3_vitl16, "
        "efficientnet_lite0): the morphology encoder works on crops only"
    )


def embed_inputs(wildcards):
    """crops.zarr (crop mode), or the slide, its stain model and cells (tile-token mode)."""
    folder = sample_dir(wildcards.cohort, wildcards.sample)
    if EMBED_MODE == "crop" and FEATURES["encoder"] in NUCLEAR_FEATURE_ENCODERS:
        # The morphology encoders measure each nucleus under its outline (bitro.features.morphology).
        return {"crops": folder / SampleFile.CROPS, "cells": folder / SampleFile.CELLS}
    if EMBED_MODE == "crop":
        return {"crops": folder / SampleFile.CROPS}
    return sample_inputs(wildcards) | {
        "cells": folder / SampleFile.CELLS,
        "stain": folder / SampleFile.STAIN,
    }


def embed_source_args(wildcards, input):
    """The ``bitro embed`` options that say what is embedded and how."""
    if EMBED_MODE == "crop" and "cells" in input.keys():
        return f"--mode crop --crops {input.crops} --cells {input.cells}"
    if EMBED_MODE == "crop":
        return f"--mode crop --crops {input.crops}"
    return " ".join(
        [
            f"--mode tile-token {sample_args(wildcards)}",
            f"--cells {input.cells} --stain {input.stain}",
            f"--crop-mpp {config['crops']['mpp']}",
            f"--tile-size {FEATURES['tile_size']}",
            f"--tile-margin {FEATURES['tile_margin']}",
            f"--tile-batch {FEATURES['tile_batch_size']}",
        ]
    )
