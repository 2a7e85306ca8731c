"""Figures of the report: what ``bitro plot`` writes into ``results/{cohort}/figures/``.

One module per figure kind, each writing a PNG (150 dpi, atomically) with matplotlib on an Agg canvas:

- :mod:`bitro.plot.spatial`: measured and predicted spot maps of each fold's test samples (paper Fig. 3);
- :mod:`bitro.plot.cells`: cell maps, Xenium cells measured and predicted, bulk pseudo-cells (Fig. 4);
- :mod:`bitro.plot.pcc`: the per-gene PCC table and its distribution;
- :mod:`bitro.plot.baselines`: BiTro and the baselines, mean ± std over folds;
- :mod:`bitro.plot.training`: training and validation losses per epoch, one line per fold;
- :mod:`bitro.plot.cohort`: all of the above for a cohort, plus its report tables.
"""

from __future__ import annotations

from bitro.plot.baselines import plot_baselines
from bitro.plot.cells import plot_cells
from bitro.plot.cohort import figure_names, plot_cohort
from bitro.plot.pcc import pcc_table, plot_pcc_distribution
from bitro.plot.spatial import plot_spatial
from bitro.plot.training import plot_training

__all__ = [
    "figure_names",
    "pcc_table",
    "plot_baselines",
    "plot_cells",
    "plot_cohort",
    "plot_pcc_distribution",
    "plot_spatial",
    "plot_training",
]
