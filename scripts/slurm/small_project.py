"""Write a project that runs the ``small`` demo preset, and print the files of the Slurm test's target.

Usage: ``python scripts/slurm/small_project.py WORKDIR [--samples-per-cohort N]`` writes
``WORKDIR/config/config.yaml`` and one sample sheet per cohort (the project of ``tests/test_workflow.py``:
HEST-1k, TCGA and Xenium layouts), then prints, one per line and relative to WORKDIR, the
``units.parquet`` and ``targets.h5ad`` of the first N samples of each cohort (all by default): the
demo generator and a ``tissue``, ``units`` and ``targets`` job per sample, 10 jobs for N = 1.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import yaml

from bitro.demo import demo_sample_ids, preset

LAYOUTS = (("hest", "st"), ("tcga", "bulk"), ("xenium", "xenium"))
TARGET_FILES = ("units.parquet", "targets.h5ad")


def write_project(workdir: Path, seed: int = 3, samples_per_cohort: int | None = None) -> list[str]:
    """Write the small demo project into ``workdir``; return the target files."""
    ids = demo_sample_ids(preset("small", seed=seed))
    (workdir / "config").mkdir(parents=True, exist_ok=True)
    cohorts = {}
    targets = []
    for layout, level in LAYOUTS:
        sheet = pd.DataFrame({"sample_id": ids[layout]})
        sheet["patient_id"] = sheet["sample_id"].str[:12] if layout == "tcga" else "P1"
        sheet.to_csv(workdir / "config" / f"{layout}.tsv", sep="\t", index=False)
        cohort = f"small_{level}"
        cohorts[cohort] = {
            "level": level,
            "format": layout,
            "root": f"results/demo_data/{layout}",
            "samples": f"config/{layout}.tsv",
            "generated_by_demo": True,
        }
        for sample in ids[layout][:samples_per_cohort]:
            targets += [f"results/{cohort}/samples/{sample}/{name}" for name in TARGET_FILES]
    cohorts["small_xenium"]["segmentation"] = {"backend": "precomputed"}
    config = {
        "demo": {"generate": True, "outdir": "results/demo_data", "seed": seed, "preset": "small"},
        "cohorts": cohorts,
    }
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--samples-per-cohort", type=int, default=None, metavar="N")
    args = parser.parse_args()
    print("\n".join(write_project(args.workdir, samples_per_cohort=args.samples_per_cohort)))


if __name__ == "__main__":
    main()
