"""The ``bitro`` command line: verbs print what they did, bad input exits 2 with the file named."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bitro.cli import main


def test_info_reports_levels_and_pixel_size(
    small_demo: tuple[Path, dict], capsys: pytest.CaptureFixture
) -> None:
    root, summary = small_demo
    slide = root / "hest" / "wsis" / f"{summary['ids']['hest'][0]}.tif"
    assert main(["info", str(slide)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["backend"] == "openslide" and info["mpp"] == pytest.approx(0.5)
    assert info["level_dimensions"][0] == info["dimensions"] and len(info["level_downsamples"]) >= 2


def test_bad_input_exits_2_naming_the_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    junk = tmp_path / "junk.svs"
    junk.write_bytes(b"not a slide")
    assert main(["info", str(junk)]) == 2
    err = capsys.readouterr().err
    assert "junk.svs" in err and err.startswith("bitro info: error:")


def test_units_and_targets_verbs_write_their_files(small_demo: tuple[Path, dict], tmp_path: Path) -> None:
    import anndata as ad
    import pandas as pd

    root, summary = small_demo
    sample = summary["ids"]["tcga"][0]
    common = ["--format", "tcga", "--root", str(root / "tcga"), "--sample", sample]
    assert main(["units", *common, "--out", str(tmp_path / "units.parquet")]) == 0
    units_args = ["--units", str(tmp_path / "units.parquet")]
    assert main(["targets", *common, *units_args, "--out", str(tmp_path / "targets.h5ad")]) == 0
    assert len(pd.read_parquet(tmp_path / "units.parquet")) > 0
    assert ad.read_h5ad(tmp_path / "targets.h5ad").obs_names.tolist() == [sample]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["targets.h5ad", "units.parquet"]


def test_prepare_writes_the_files_of_tissue_units_stain_and_targets(
    small_demo: tuple[Path, dict], tmp_path: Path
) -> None:
    """`bitro prepare` (the workflow's one job per sample) writes byte for byte what the four verbs write."""
    root, summary = small_demo
    common = ["--format", "hest", "--root", str(root / "hest"), "--sample", summary["ids"]["hest"][0]]
    stain = ["--reference", str(Path(__file__).parents[1] / "resources" / "stain" / "reference.json")]
    apart, together = tmp_path / "apart", tmp_path / "together"
    apart.mkdir()
    tissue = ["--tissue", str(apart / "tissue.npz")]
    geojson = ["--geojson", str(apart / "tissue.geojson")]
    assert main(["tissue", *common, *geojson, "--out", str(apart / "tissue.npz")]) == 0
    assert main(["units", *common, *tissue, "--out", str(apart / "units.parquet")]) == 0
    assert main(["stain", *common, *tissue, *stain, "--out", str(apart / "stain.json")]) == 0
    units = ["--units", str(apart / "units.parquet")]
    assert main(["targets", *common, *units, "--out", str(apart / "targets.h5ad")]) == 0
    outputs = {
        "--tissue-out": "tissue.npz",
        "--geojson": "tissue.geojson",
        "--units-out": "units.parquet",
        "--stain-out": "stain.json",
        "--targets-out": "targets.h5ad",
    }
    paths = [arg for option, name in outputs.items() for arg in (option, str(together / name))]
    assert main(["prepare", *common, *stain, *paths]) == 0
    assert sorted(p.name for p in together.iterdir()) == sorted(outputs.values())
    for name in outputs.values():
        assert (together / name).read_bytes() == (apart / name).read_bytes(), name


def test_missing_sample_exits_2(
    small_demo: tuple[Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root, _ = small_demo
    args = ["units", "--format", "hest", "--root", str(root / "hest"), "--sample", "NOPE"]
    assert main([*args, "--out", str(tmp_path / "u.parquet")]) == 2
    assert "NOPE" in capsys.readouterr().err
    assert not (tmp_path / "u.parquet").exists()


def test_cli_presets_are_the_demo_presets() -> None:
    from bitro.demo import PRESETS
    from bitro.options import DEMO_PRESETS

    assert sorted(DEMO_PRESETS) == sorted(PRESETS)


def test_cellvit_script_runs_cellvit_with_local_weights(
    small_demo: tuple[Path, dict], tmp_path: Path
) -> None:
    import os
    import shlex

    root, _ = small_demo
    model = tmp_path / "cache" / "CellViT-256-x40-AMP.pth"
    model.parent.mkdir()
    model.write_bytes(b"")
    script = tmp_path / "run.sh"
    sample = ["--format", "hest", "--root", str(root / "hest"), "--sample", "DEMO01"]
    args = ["cellvit-script", *sample, "--model", str(model), "--outdir", str(tmp_path / "out")]
    assert main([*args, "--ray-workers", "1", "--out", str(script)]) == 0
    assert os.access(script, os.X_OK)
    command = shlex.split(script.read_text().splitlines()[-1])
    assert command[:3] == ["env", f"CELLVIT_CACHE={model.parent.absolute()}", "cellvit-inference"]
    assert command[command.index("--model") + 1] == "HIPT"
    assert command[command.index("--wsi_path") + 1] == str((root / "hest" / "wsis" / "DEMO01.tif").absolute())
    assert command[command.index("--wsi_mpp") + 1] == "0.5"
    assert command[command.index("--ray_worker") + 1] == "1"


def test_stain_reference_from_an_image(tmp_path: Path) -> None:
    from bitro.preprocess.stain import RUIFROK, read_reference, stain_angles
    from test_stain import TIA_TARGET

    out = tmp_path / "reference.json"
    assert main(["stain-reference", "--image", str(TIA_TARGET), "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["source"]["image"] == "target_image.png" and len(data["source"]["sha256"]) == 64
    for method in ("vahadane", "macenko"):
        model = read_reference(out, method)
        assert model is not None and np.all(stain_angles(model.matrix, RUIFROK) < 30)
