"""Write the demo's bulk cohort in the TCGA layout (:func:`bitro.layout.tcga_files`): one TPM column per
RNA-seq aliquot and the gene map; :mod:`bitro.io.tcga` reads it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bitro.demo.config import DemoConfig
from bitro.demo.expression import (
    ExpressionModel,
    tpm,
)
from bitro.demo.sections import (
    SlideResult,
    _counts_for,
    _slide_params,
    _tcga_layout,
    _write_params,
    _write_truth,
)
from bitro.demo.tissue import (
    TissueParams,
)
from bitro.layout import (
    TCGA_EXPRESSION_DIR,
    tcga_expression,
)


def _write_tcga(
    root: Path,
    cfg: DemoConfig,
    model: ExpressionModel,
    results: dict[str, SlideResult],
    patients: dict[str, tuple[TissueParams, dict[str, float]]],
    params: dict[str, Any],
) -> None:
    for d in (TCGA_EXPRESSION_DIR, "truth"):
        (root / d).mkdir(parents=True, exist_ok=True)
    bulk: dict[str, np.ndarray] = {}
    k = 0
    for pat, slides in _tcga_layout(cfg):
        total = np.zeros(model.n_genes, dtype=np.int64)
        for sid in slides:
            res = results[sid]
            counts = _counts_for(cfg, model, res, patients[pat][1], [2, k])
            k += 1
            total += counts.sum(axis=0)
            _write_truth(root / "truth", sid, res, model, counts, {})
            params["slides"][sid] = _slide_params(res) | {"file": res.job.tif_path.name}
        aliquot = f"{pat}-01A-11R-A00Z-07"
        bulk[aliquot] = total
        params["aliquots"][aliquot] = {"slides": slides, "total_counts": int(total.sum())}
    counts = np.stack(list(bulk.values()), axis=1).astype(np.float64)
    t = tpm(counts, model.lengths)
    df = pd.DataFrame(t, columns=list(bulk.keys()))
    df.insert(0, "gene_id", model.ids)
    tpm_path, gene_map_path = tcga_expression(root)
    df.to_csv(tpm_path, sep="\t", index=False, float_format="%.6g")
    model.gene_table().to_csv(gene_map_path, sep="\t", index=False)
    _write_params(root, cfg, model, params)
