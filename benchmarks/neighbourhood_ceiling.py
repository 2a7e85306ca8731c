"""How much of the ST neighbourhood genes' signal is arrangement, and what a model must read to get it.

On the accuracy benchmark's ST cohort and folds (``config/accuracy.yaml``), ridge regressions from true,
noiseless-to-the-model spot descriptors (never image features) to log1p counts, scored like the
benchmark (PCC gene within each test section, averaged over the 12 sections), per planted effect:

- ``composition``: the spot's cell-type fractions and log cell count (what the oracle and ``mlp_count``
  can reach);
- ``+ segregated``: plus the spot's arrangement flag (mixed or segregated, drawn independently of its
  composition) and its products with the fractions;
- ``+ drivers``: plus the per-spot means of the generator's own drivers of the two programmes (each
  lymphocyte's share of tumour neighbours, each tumour cell's share of fibroblast neighbours, among its
  ``k`` nearest cells within the spot).

The gap between the first and the last row on neighbourhood genes is what a cell-level model can gain
there over any model of composition; the benchmark's models are then placed against it.

Usage: ``nice -n 19 .venv/bin/python benchmarks/neighbourhood_ceiling.py``
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import yaml
from scipy.spatial import cKDTree
from sklearn.linear_model import Ridge

from bitro.accuracy.bench import cohort_spec
from bitro.accuracy.runs import cohort, folds
from bitro.accuracy.stats import normalised_log1p, pcc_gene_by_sample
from bitro.demo.morphology import FIBROBLAST, LYMPHOCYTE, TUMOUR
from bitro.demo.virtual import EFFECTS


def drivers(sample, k: int) -> np.ndarray:
    """(units, 2): mean tumour-neighbour share of the spot's lymphocytes, fibroblast share of its tumour."""
    out = np.zeros((sample.n_units, 2))
    offsets, xy, types = sample.cell_offsets, sample.cell_xy_um, sample.cell_type.astype(np.int64)
    for u in range(sample.n_units):
        lo, hi = offsets[u], offsets[u + 1]
        if hi - lo < 2:
            continue
        _, idx = cKDTree(xy[lo:hi]).query(xy[lo:hi], min(k, hi - lo - 1) + 1)
        neighbours = types[lo:hi][idx[:, 1:]]
        t = types[lo:hi]
        for j, (cell, neighbour) in enumerate(((LYMPHOCYTE, TUMOUR), (TUMOUR, FIBROBLAST))):
            mine = t == cell
            if mine.any():
                out[u, j] = (neighbours[mine] == neighbour).mean(axis=1).sum() / (hi - lo)
    return out


def main(config_path: str = "config/accuracy.yaml") -> None:
    config = yaml.safe_load(Path(config_path).read_text())
    spec = cohort_spec("st", config["cohorts"]["st"], int(config.get("seed", 0)))
    vc = cohort(spec)
    k = vc.config.k_neighbours
    tables = []
    for sample in vc.samples:
        sizes = np.diff(sample.cell_offsets).astype(np.float64)
        composition = sample.composition()
        seg = sample.segregated.astype(np.float64)[:, None]
        base = np.column_stack([composition, np.log(sizes)])
        tables.append(
            {
                "composition": base,
                "+ segregated": np.column_stack([base, seg, seg * composition]),
                "+ drivers": np.column_stack([base, seg, seg * composition, drivers(sample, k)]),
                "y": np.log1p(sample.counts),
            }
        )
    effects = np.array([vc.effect_of_gene[g] for g in vc.genes])
    rows = {}
    for name in ("composition", "+ segregated", "+ drivers"):
        y_all, p_all, g_all = [], [], []
        for fold in folds(spec):
            train = list(fold.train) + list(fold.validation)
            x = np.concatenate([tables[i][name] for i in train])
            y = np.concatenate([tables[i]["y"] for i in train])
            ridge = Ridge(alpha=1e-3).fit(x, y)
            for i in fold.test:
                y_all.append(tables[i]["y"])
                p_all.append(ridge.predict(tables[i][name]))
                g_all.append(np.full(len(tables[i]["y"]), i))
        y, p, g = np.concatenate(y_all), np.concatenate(p_all), np.concatenate(g_all)
        rows[name] = {
            "log1p": pcc_gene_by_sample(y, p, g),
            "log1p_cp10k": pcc_gene_by_sample(normalised_log1p(y), normalised_log1p(p), g),
        }
    shown = [e for e in EFFECTS if (effects == e).any()]
    for space in ("log1p", "log1p_cp10k"):
        print(f"\n**ST ridge on true spot descriptors: PCC gene ({space})**\n")
        print("| descriptors | " + " | ".join(shown) + " | all |")
        print("| --- |" + " --- |" * (len(shown) + 1))
        for name, scores in rows.items():
            cells = [f"{np.nanmean(scores[space][effects == e]):.3f}" for e in shown]
            print(f"| {name} | " + " | ".join(cells) + f" | {np.nanmean(scores[space]):.3f} |")


if __name__ == "__main__":
    main(*sys.argv[1:])
