"""What a prediction of one slide writes, under ``results/{cohort}/predictions/{sample}/`` (issue 16).

One module per output, each a function that takes arrays and tables and writes one file atomically:

- :mod:`bitro.predict.spots`: ``spots.h5ad``, units × genes laid out as scanpy and squidpy read Visium
  (``obsm["spatial"]``, ``uns["spatial"][sample]`` with the H&E and its scale factors);
- :mod:`bitro.predict.cells`: ``cells.h5ad``, pseudo-cell profiles (paper eq. 10) at the cells' centroids;
- :mod:`bitro.predict.bulk`: ``bulk.tsv``, one profile per slide (a bulk model's prediction, or the
  pseudo-bulk of a spot model's units);
- :mod:`bitro.predict.qupath`: ``cells.geojson``, cells with their predicted genes as QuPath measurements;
- :mod:`bitro.predict.heatmaps`: one PNG per chosen gene, drawn over the slide's H&E;
- :mod:`bitro.predict.slide`: all of the above for one slide, its H&E read once;
- :mod:`bitro.predict.apply`: a model bundle applied to one sample folder (the above and ``profile.tsv``);
- :mod:`bitro.predict.whole_slide`: a bare slide through every per-sample step, then the above
  (``bitro predict-slide``; docs/predict.md).

Every h5ad records in ``uns["bitro"]`` its values' space (``counts`` or ``tpm``), the level the model
was trained on (``spot`` or ``bulk``), what its rows are, and a description of the model it came from.

The names below are loaded on first use (a module ``__getattr__``, PEP 562): importing one submodule, say
:mod:`bitro.predict.bulk` for ``bitro predictions-table``, does not import matplotlib for the heat maps.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from bitro._lazy import lazy_exports

if TYPE_CHECKING:
    from bitro.predict.bulk import (
        bulk_table,
        gather_profiles,
        read_bulk_table,
        slide_profile,
        write_bulk_table,
    )
    from bitro.predict.cells import cells_anndata, write_cells
    from bitro.predict.heatmaps import heatmap_name, write_heatmaps
    from bitro.predict.qupath import write_cells_qupath
    from bitro.predict.slide import PredictionFile, SlideOutputs, unit_amounts, write_slide_outputs
    from bitro.predict.spots import spots_anndata, write_h5ad, write_spots

#: Each public name, and the submodule of :mod:`bitro.predict` that defines it.
_SOURCES: dict[str, str] = {
    "bulk_table": "bulk",
    "gather_profiles": "bulk",
    "read_bulk_table": "bulk",
    "slide_profile": "bulk",
    "write_bulk_table": "bulk",
    "cells_anndata": "cells",
    "write_cells": "cells",
    "heatmap_name": "heatmaps",
    "write_heatmaps": "heatmaps",
    "write_cells_qupath": "qupath",
    "PredictionFile": "slide",
    "SlideOutputs": "slide",
    "unit_amounts": "slide",
    "write_slide_outputs": "slide",
    "spots_anndata": "spots",
    "write_h5ad": "spots",
    "write_spots": "spots",
}


__getattr__, __dir__ = lazy_exports(__name__, _SOURCES)

__all__ = [
    "PredictionFile",
    "SlideOutputs",
    "bulk_table",
    "cells_anndata",
    "gather_profiles",
    "heatmap_name",
    "read_bulk_table",
    "slide_profile",
    "spots_anndata",
    "unit_amounts",
    "write_bulk_table",
    "write_cells",
    "write_cells_qupath",
    "write_h5ad",
    "write_heatmaps",
    "write_slide_outputs",
    "write_spots",
]
