"""Write the small demo project (``bitro.demo.project``) and print the files of the Slurm test's target.

Usage: ``python scripts/slurm/small_project.py WORKDIR [--samples-per-cohort N]`` writes
``WORKDIR/config/config.yaml`` and one sample sheet per cohort (HEST-1k, TCGA and Xenium layouts), then
prints, one per line and relative to WORKDIR, the ``units.parquet`` and ``targets.h5ad`` of the first N
samples of each cohort (all by default): the demo generator, a ``doctor`` check per cohort and a
``prepare`` job per sample (tissue, units, stain, targets): 7 jobs for N = 1.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bitro.demo.project import SMALL_LAYOUTS, write_small_project

TARGET_FILES = ("units.parquet", "targets.h5ad")


def write_project(workdir: Path, seed: int = 3, samples_per_cohort: int | None = None) -> list[str]:
    """Write the small demo project into ``workdir``; return the target files."""
    ids = write_small_project(workdir, seed=seed)
    return [
        f"results/small_{level}/samples/{sample}/{name}"
        for layout, level in SMALL_LAYOUTS
        for sample in ids[layout][:samples_per_cohort]
        for name in TARGET_FILES
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--samples-per-cohort", type=int, default=None, metavar="N")
    args = parser.parse_args()
    print("\n".join(write_project(args.workdir, samples_per_cohort=args.samples_per_cohort)))


if __name__ == "__main__":
    main()
