"""CellViT++ 1.0.9 itself, run once on a demo slide on the CPU with a random CellViT-256 checkpoint.

Slow, and skipped unless the CellViT venv exists (``scripts/cellvit/build_venv.sh``, which downloads
CellViT++ and its dependencies from PyPI; this test never downloads). ``BITRO_CELLVIT_VENV`` points to a
venv elsewhere (default: ``.cellvit-venv`` in the repository root).

Steps: write the random checkpoint (``scripts/cellvit/write_random_checkpoint.py``); preprocess the
small demo's first ST slide (tissue, units); write the workflow's ``run.sh`` (``bitro cellvit-script``,
as the ``cellvit_script`` rule does); run it as written, which must fail because ``cellvit-inference``
needs a CUDA GPU; run it again with ``cellvit-inference`` replaced by ``scripts/cellvit/run_cpu.py``
(CellViT++'s own pipeline on the CPU); convert its ``cells.json`` with ``bitro cells --backend cellvit``
(as the ``cells`` rule does) and check the ``cells.parquet``. The cells are nonsense (random weights):
the wiring is what is tested.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import shapely

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(os.environ.get("BITRO_CELLVIT_VENV", ROOT / ".cellvit-venv"))
MARKER = VENV / ".built-cellvit-1.0.9"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not MARKER.is_file(),
        reason=f"no CellViT venv at {VENV} (build it with scripts/cellvit/build_venv.sh; it downloads)",
    ),
]


def _bitro(*args: object) -> None:
    from bitro.cli import main

    assert main([str(a) for a in args]) == 0, args


def test_cellvit_runs_on_cpu_and_bitro_reads_its_cells(small_demo, tmp_path: Path) -> None:
    from bitro.preprocess.cells import read_cells

    root, _ = small_demo
    python = VENV / "bin" / "python"
    weights = tmp_path / "weights"
    done = subprocess.run(
        [python, ROOT / "scripts" / "cellvit" / "write_random_checkpoint.py", weights],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "<All keys matched successfully>" in done.stdout
    model = weights / "CellViT-256-x40-AMP.pth"

    sample = ["--format", "hest", "--root", root / "hest", "--sample", "DEMO01"]
    _bitro("tissue", *sample, "--out", tmp_path / "tissue.npz")
    _bitro("units", *sample, "--tissue", tmp_path / "tissue.npz", "--out", tmp_path / "units.parquet")
    outdir = tmp_path / "cellvit" / "output"
    script = tmp_path / "cellvit" / "run.sh"
    _bitro("cellvit-script", *sample, "--model", model, "--outdir", outdir, "--batch-size", 2,
           "--ray-workers", 1, "--out", script)  # fmt: skip

    env = os.environ | {"PATH": f"{VENV / 'bin'}:{os.environ['PATH']}", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("PYTHONPATH", None)
    as_written = subprocess.run(["bash", script], capture_output=True, text=True, env=env, check=False)
    print(as_written.stdout[-3000:], as_written.stderr[-3000:], sep="\n")
    # cellvit-inference needs CUDA: SystemError without a GPU (or, where torchvision's compiled operators
    # cannot load, a RuntimeError on import before that).
    assert as_written.returncode != 0
    assert "Requesting non existing gpu index" in as_written.stderr or "torchvision::nms" in as_written.stderr

    driver = f"{python} {ROOT / 'scripts' / 'cellvit' / 'run_cpu.py'}"
    cpu_script = script.with_name("run_cpu.sh")
    cpu_script.write_text(script.read_text().replace("cellvit-inference", driver))
    on_cpu = subprocess.run(["bash", cpu_script], capture_output=True, text=True, env=env, check=False)
    print(on_cpu.stdout[-4000:], on_cpu.stderr[-4000:], sep="\n")
    assert on_cpu.returncode == 0
    cells_json = outdir / "DEMO01" / "cells.json"
    assert cells_json.is_file()

    cells = tmp_path / "cells.parquet"
    _bitro("cells", *sample, "--tissue", tmp_path / "tissue.npz", "--units", tmp_path / "units.parquet",
           "--backend", "cellvit", "--segmentation", outdir, "--out", cells)  # fmt: skip
    table = read_cells(cells)
    assert len(table) > 0
    assert np.array_equal(np.sort(table["cell_id"].to_numpy()), np.arange(len(table)))  # file order
    outlines = shapely.from_wkb(table["geometry"].to_numpy())
    assert shapely.is_valid(outlines).all() and (shapely.area(outlines) > 0).all()
    assert (table["area_um2"] > 0).all() and (table["source"] == "cellvit").all()
    assert set(table["class"].dropna()) <= {"Neoplastic", "Inflammatory", "Connective", "Dead", "Epithelial"}
    print(f"{len(table)} cells from CellViT++ on the CPU", file=sys.stderr)
