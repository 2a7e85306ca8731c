"""The Slurm profile (workflow/profiles/slurm) and, on request, a run on a real one-node Slurm cluster.

The real run is ``scripts/slurm/run_slurm_test.sh``: it installs Slurm with apt and starts daemons as
root, so it only runs here with ``BITRO_SLURM_TEST=1`` (CI calls the script itself, after the tests).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
PROFILE = ROOT / "workflow" / "profiles" / "slurm" / "config.yaml"
SCRIPT = ROOT / "scripts" / "slurm" / "run_slurm_test.sh"


def load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / "slurm" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dry_run(workdir: Path, *args: str) -> str:
    done = subprocess.run(
        [str(SNAKEMAKE), "--snakefile", str(ROOT / "workflow" / "Snakefile"), "--dry-run", *args],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout
    return done.stdout


def resources_of(output: str, rule: str) -> str:
    block = output.split(f"rule {rule}:", 1)[1]
    return next(line for line in block.splitlines() if line.strip().startswith("resources:"))


def test_slurm_profile_runs_every_rule_on_slurm() -> None:
    profile = yaml.safe_load(PROFILE.read_text())
    assert profile["executor"] == "slurm"
    assert profile["jobs"] >= 1 and profile["latency-wait"] >= 30 and profile["rerun-incomplete"] is True
    defaults = profile["default-resources"]
    assert defaults["mem_mb"] > 0 and defaults["runtime"] > 0
    # Partition and account are the user's to set (commented out here), and never the rules'.
    assert "slurm_partition" not in defaults and "slurm_account" not in defaults
    assert "# slurm_partition:" in PROFILE.read_text() and "# slurm_account:" in PROFILE.read_text()
    rules = [ROOT / "workflow" / "Snakefile", *sorted((ROOT / "workflow" / "rules").glob("*.smk"))]
    for path in rules:
        assert not re.search(r"slurm_(partition|account)", path.read_text()), path


def test_account_and_partition_set_in_the_profile_reach_the_jobs(tmp_path: Path) -> None:
    """As the workflow profile, the Slurm profile's default-resources are the jobs' resources.

    With ``--profile`` instead, workflow/profiles/default would be loaded too and win key by key.
    """
    profile = yaml.safe_load(PROFILE.read_text())
    profile["default-resources"] |= {"slurm_account": "lab42", "slurm_partition": "short"}
    (tmp_path / "profile").mkdir()
    (tmp_path / "profile" / "config.yaml").write_text(yaml.safe_dump(profile))
    out = dry_run(ROOT, "--workflow-profile", str(tmp_path / "profile"), "--forceall", "generate_demo")
    line = resources_of(out, "generate_demo")
    assert "slurm_account=lab42" in line and "slurm_partition=short" in line, line
    assert "mem_mb=4000" in line and "runtime=30" in line, line  # the rule's own values win


def test_a_gpu_rule_asks_slurm_for_a_gpu(tmp_path: Path) -> None:
    """``features.gpu: 1`` gives embed ``gpu=1``, which plugin 2.8.0 submits as ``--gpus=1``."""
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config["features"]["gpu"] = 1
    (tmp_path / "gpu.yaml").write_text(yaml.safe_dump(config))
    out = dry_run(ROOT, "--forceall", "--printshellcmds", "--configfile", str(tmp_path / "gpu.yaml"))
    assert "gpu=1" in resources_of(out, "embed") and "--device cuda" in out

    class Resources(dict):
        __getattr__ = dict.__getitem__

    def sbatch_gpu_options(**resources: object) -> str:
        return set_gres_string(type("Job", (), {"resources": Resources(resources)})()).strip()

    assert sbatch_gpu_options(gpu=1) == "--gpus=1"
    assert sbatch_gpu_options(gpu=1, gpu_model="a100") == "--gpus=a100:1"
    assert sbatch_gpu_options(gpu=0) == ""  # embed on a CPU config: no GPU asked for
    assert sbatch_gpu_options(gpu=0, gres="gpu:1") == "--gres=gpu:1"


def test_output_comparison_sees_a_changed_value(tmp_path: Path) -> None:
    compare = load_script("compare_outputs")
    left, right = tmp_path / "left", tmp_path / "right"
    for root, value in ((left, 1.0), (right, 1.0)):
        (root / "logs").mkdir(parents=True)
        (root / "logs" / "run.log").write_text(str(root))
        pd.DataFrame({"unit_id": [0, 1], "x": [value, 2.0]}).to_parquet(root / "units.parquet")
        np.savez(root / "graph.npz", indptr=np.arange(3))
        (root / "manifest.json").write_text(json.dumps({"seconds": str(root), "n": 1}))
    compare.IGNORED_KEYS.add("seconds")
    assert compare.compare(left, right, {"logs"}) == []
    pd.DataFrame({"unit_id": [0, 1], "x": [1.5, 2.0]}).to_parquet(right / "units.parquet")
    (right / "extra.npy").write_bytes(b"")
    assert compare.compare(left, right, {"logs"}) == [
        f"only in {right}: extra.npy",
        "differs: units.parquet",
    ]


def test_slurm_test_script_is_valid_bash() -> None:
    done = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert os.access(SCRIPT, os.X_OK)


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("BITRO_SLURM_TEST") != "1",
    reason="installs and starts Slurm as root: set BITRO_SLURM_TEST=1 (CI runs the script directly)",
)
def test_demo_target_on_a_real_slurm_cluster() -> None:
    done = subprocess.run(
        [str(SCRIPT)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=1200
    )
    if done.returncode == 77:
        pytest.skip(done.stdout.strip().splitlines()[-1])
    assert done.returncode == 0, done.stdout
    assert "OK: the Slurm run and the local run agree" in done.stdout
