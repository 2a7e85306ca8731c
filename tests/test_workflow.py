"""The Snakemake workflow: config validation, DAG shape, lint, and (slow) a real run on a tiny demo."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
SNAKEFILE = ROOT / "workflow" / "Snakefile"


def snakemake(workdir: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SNAKEMAKE), "--snakefile", str(SNAKEFILE), "--cores", "2", *args],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )


def write_project(workdir: Path, config: dict, sheets: dict[str, str]) -> Path:
    (workdir / "config").mkdir(parents=True, exist_ok=True)
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    for name, text in sheets.items():
        (workdir / name).write_text(text)
    return workdir


def test_demo_dag_has_one_units_and_targets_job_per_sample() -> None:
    done = snakemake(ROOT, "--dry-run", "--quiet", "rules")
    assert done.returncode == 0, done.stdout
    counts = {}
    for line in done.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    n_samples = sum(
        len((ROOT / "config" / "samples" / f"demo_{c}.tsv").read_text().strip().splitlines()) - 1
        for c in ("st", "bulk", "xenium")
    )
    assert counts["generate_demo"] == 1
    assert counts["units"] == counts["targets"] == n_samples == 19


def test_config_with_unknown_level_is_rejected(tmp_path: Path) -> None:
    config = {"cohorts": {"c1": {"level": "spots", "format": "hest", "root": "data", "samples": "s.tsv"}}}
    write_project(tmp_path, config, {"s.tsv": "sample_id\tpatient_id\nA\tP\n"})
    done = snakemake(tmp_path, "--dry-run")
    assert done.returncode != 0
    assert "spots" in done.stdout and "enum" in done.stdout


def test_sample_sheet_with_bad_mpp_is_rejected(tmp_path: Path) -> None:
    config = {"cohorts": {"c1": {"level": "st", "format": "hest", "root": "data", "samples": "s.tsv"}}}
    write_project(tmp_path, config, {"s.tsv": "sample_id\tpatient_id\tmpp\nA\tP\t-0.5\n"})
    done = snakemake(tmp_path, "--dry-run")
    assert done.returncode != 0
    assert "-0.5" in done.stdout


def test_duplicated_sample_ids_are_rejected(tmp_path: Path) -> None:
    config = {"cohorts": {"c1": {"level": "st", "format": "hest", "root": "data", "samples": "s.tsv"}}}
    write_project(tmp_path, config, {"s.tsv": "sample_id\tpatient_id\nA\tP\nA\tP\n"})
    done = snakemake(tmp_path, "--dry-run")
    assert done.returncode != 0
    assert "duplicated sample_id" in done.stdout


def test_real_layout_inputs_are_the_sample_files(tmp_path: Path) -> None:
    """Without the demo, a HEST sample's rule depends on its own h5ad, slide and metadata."""
    config = {"cohorts": {"c1": {"level": "st", "format": "hest", "root": "hest", "samples": "s.tsv"}}}
    write_project(tmp_path, config, {"s.tsv": "sample_id\tpatient_id\tmpp\nTENX1\tP\t0.25\n"})
    for sub, name in (("st", "TENX1.h5ad"), ("wsis", "TENX1.tif"), ("metadata", "TENX1.json")):
        (tmp_path / "hest" / sub).mkdir(parents=True)
        (tmp_path / "hest" / sub / name).write_text("")
    done = snakemake(tmp_path, "--dry-run", "--printshellcmds")
    assert done.returncode == 0, done.stdout
    assert "--mpp 0.25" in done.stdout
    assert "hest/st/TENX1.h5ad" in done.stdout and "generate_demo" not in done.stdout


def test_lint_and_format_are_clean() -> None:
    lint = snakemake(ROOT, "--lint")
    assert lint.returncode == 0 and "Lints for" not in lint.stdout, lint.stdout
    fmt = subprocess.run(
        [str(SNAKEMAKE.with_name("snakefmt")), "--check", "workflow"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert fmt.returncode == 0, fmt.stderr
