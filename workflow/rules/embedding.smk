# Embedding mode: what the embed rule (features.smk) reads and how it calls `bitro embed`.
#
# features.mode: crop runs the encoder on every cell's crop (crops.zarr); tile-token runs it once per tile
# of the slide and pools the tokens under each nucleus (bitro.features.tokens). `auto` takes, per
# encoder, the better trade-off measured in benchmarks/RESULTS.md ("Tile-token mode"):
# bitro.options.AUTO_EMBED_MODE states it, and bitro.options.resolve_embed_mode refuses tile-token mode
# for the morphology encoders, which have no tokens.
from bitro.options import NUCLEAR_FEATURE_ENCODERS, resolve_embed_mode

EMBED_MODE = resolve_embed_mode(
    FEATURES["mode"], FEATURES["encoder"], setting="features.mode"
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
            f"--crop-mpp {cohort_setting(wildcards.cohort, 'crops')['mpp']}",
            f"--tile-size {FEATURES['tile_size']}",
            f"--tile-margin {FEATURES['tile_margin']}",
            f"--tile-batch {FEATURES['tile_batch_size']}",
        ]
    )
