"""The small demo project: a config and one sample sheet per layout, run by the workflow tests and CI.

The ``small`` preset's sections share one patient, so the project leaves one section out (not one
patient) and keeps few genes; callers add their own settings (encoder, training budget) on top.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from bitro.demo.cohorts import demo_sample_ids
from bitro.demo.config import preset
from bitro.demo.unlabelled import UNLABELLED_DIR, UNLABELLED_IDS
from bitro.layout import demo_data_dir

#: (layout, level) of each cohort; the cohort is named ``small_{level}``.
SMALL_LAYOUTS = (("hest", "st"), ("tcga", "bulk"), ("xenium", "xenium"))

SMALL_SETTINGS: dict[str, Any] = {
    "evaluation": {"st_group_by": "sample", "xenium_strips": 3},
    "genes": {"n_genes": 20},
    "units": {"patch_size_um": 55, "min_tissue_fraction": 0.5},
}


def write_small_project(
    workdir: Path, *, seed: int = 3, settings: Mapping[str, Any] | None = None, predicted: bool = False
) -> dict[str, list[str]]:
    """Write ``config/config.yaml`` and ``config/{layout}.tsv`` into ``workdir``.

    ``settings`` are top-level config sections added to (or replacing) :data:`SMALL_SETTINGS`. With
    ``predicted``, the demo's unlabelled slide is a cohort ``small_slides`` (``config/slides.tsv``)
    predicted by the bundle of ``small_st``'s final model. Returns the sample ids of each layout.
    """
    ids = demo_sample_ids(preset("small", seed=seed))
    (workdir / "config").mkdir(parents=True, exist_ok=True)
    cohorts: dict[str, dict[str, Any]] = {}
    for layout, level in SMALL_LAYOUTS:
        sheet = pd.DataFrame({"sample_id": ids[layout]})
        sheet["patient_id"] = sheet["sample_id"].str[:12] if layout == "tcga" else "P1"
        sheet.to_csv(workdir / "config" / f"{layout}.tsv", sep="\t", index=False)
        cohorts[f"small_{level}"] = {
            "level": level,
            "format": layout,
            "root": str(demo_data_dir() / layout),
            "samples": f"config/{layout}.tsv",
            "generated_by_demo": True,
        }
    cohorts["small_xenium"]["segmentation"] = {"backend": "precomputed"}
    if predicted:
        sheet = pd.DataFrame({"sample_id": list(UNLABELLED_IDS)})
        sheet.to_csv(workdir / "config" / "slides.tsv", sep="\t", index=False)
        cohorts["small_slides"] = {
            "format": "slides",
            "root": str(demo_data_dir() / UNLABELLED_DIR),
            "samples": "config/slides.tsv",
            "generated_by_demo": True,
            "bundle": "small_st",
        }
        ids = {**ids, "slides": list(UNLABELLED_IDS)}
    config = {
        **SMALL_SETTINGS,
        **(settings or {}),
        "demo": {"generate": True, "outdir": str(demo_data_dir()), "seed": seed, "preset": "small"},
        "cohorts": cohorts,
    }
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return ids
