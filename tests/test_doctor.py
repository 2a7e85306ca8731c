"""``bitro doctor``: weights and sha256, GPU, versions, every sample's slide, the workflow's preflight."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bitro import doctor
from bitro.cli import main
from bitro.commands.doctor import STAMP
from bitro.doctor import Result, check_gpu, check_versions, check_weights, encoder_spec, run_doctor
from conftest import run_snakemake

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
ONLY_SLIDES = ("config", "versions", "weights", "gpu")


def fails(results: list[Result]) -> list[Result]:
    return [r for r in results if r.status == "fail"]


def dinov3_dir(folder: Path, shards: int = 1) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "dinov3_vit"}')
    names = ["model.safetensors"] if shards == 1 else [f"model-{i:05d}.safetensors" for i in range(shards)]
    for i, name in enumerate(names):
        (folder / name).write_bytes(os.urandom(4096) + bytes([i]))
    return folder


def sha256sums(folder: Path, *names: str) -> Path:
    lines = [f"{hashlib.sha256((folder / n).read_bytes()).hexdigest()}  {n}" for n in names]
    (folder / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    return folder / "SHA256SUMS"


def dinov3(folder: Path, **features: object) -> list[Result]:
    spec = encoder_spec({"encoder": "dinov3_vitl16", "weights": str(folder), **features}, None)
    assert not isinstance(spec, Result)
    return check_weights(spec)


# --------------------------------------------------------------------------------------------------
# weights
# --------------------------------------------------------------------------------------------------


def test_weights_matching_their_sha256sums_pass(tmp_path: Path) -> None:
    folder = dinov3_dir(tmp_path / "dinov3")
    sums = sha256sums(folder, "model.safetensors", "config.json")
    results = dinov3(folder)
    assert not fails(results) and not [r for r in results if r.status == "warn"], results
    matched = [r.message for r in results if "sha256 matches" in r.message]
    assert len(matched) == 2 and all(str(sums) in m for m in matched)


def test_a_corrupted_weights_file_fails_naming_it(tmp_path: Path) -> None:
    folder = dinov3_dir(tmp_path / "dinov3")
    sha256sums(folder, "model.safetensors")
    with (folder / "model.safetensors").open("r+b") as handle:
        handle.seek(100)
        handle.write(b"\x00\xff")
    problems = fails(dinov3(folder))
    assert len(problems) == 1
    assert str(folder / "model.safetensors") in problems[0].message
    assert "does not match" in problems[0].message and "SHA256SUMS" in problems[0].message


def test_config_digests_one_or_per_file(tmp_path: Path) -> None:
    folder = dinov3_dir(tmp_path / "one")
    digest = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    assert not fails(dinov3(folder, weights_sha256=digest))
    wrong = fails(dinov3(folder, weights_sha256="0" * 64))
    assert len(wrong) == 1 and "features.weights_sha256" in wrong[0].message
    assert not fails(dinov3(folder, weights_sha256={"model.safetensors": digest.upper()}))
    not_hex = fails(dinov3(folder, weights_sha256={"model.safetensors": "abc"}))
    assert not_hex and "not a sha256" in not_hex[0].message


def test_sharded_weights_check_the_digest_embeddings_json_records(tmp_path: Path) -> None:
    import hashlib

    folder = dinov3_dir(tmp_path / "sharded", shards=2)
    shards = sorted(folder.glob("*.safetensors"))
    # The shards' bytes one after another, in name order: what the encoder records in embeddings.json.
    recorded = hashlib.sha256(b"".join(path.read_bytes() for path in shards)).hexdigest()
    assert len(shards) == 2
    assert not fails(dinov3(folder, weights_sha256=recorded))
    assert fails(dinov3(folder, weights_sha256="f" * 64))


def test_missing_weights_fail_saying_what_to_put_where(tmp_path: Path) -> None:
    problems = fails(dinov3(tmp_path / "nowhere"))
    assert {Path(p.message.split(":")[0]).name for p in problems} == {"config.json", "model.safetensors"}
    assert all("config.json and model.safetensors" in p.message for p in problems)


def test_weights_without_an_expected_digest_warn_with_theirs(tmp_path: Path) -> None:
    folder = dinov3_dir(tmp_path / "dinov3")
    digest = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    warned = [r for r in dinov3(folder) if r.status == "warn"]
    assert len(warned) == 1 and digest in warned[0].message and "SHA256SUMS" in warned[0].message


def test_listed_but_missing_and_malformed_sha256sums_fail(tmp_path: Path) -> None:
    folder = dinov3_dir(tmp_path / "dinov3")
    (folder / "SHA256SUMS").write_text(f"{'a' * 64}  extra.safetensors\n")
    assert any("extra.safetensors: listed in" in r.message for r in fails(dinov3(folder)))
    (folder / "SHA256SUMS").write_text("not a checksum line\n")
    assert any("line 1" in r.message and "SHA256SUMS" in r.message for r in fails(dinov3(folder)))


def test_packaged_efficientnet_weights_match_their_known_digest() -> None:
    spec = encoder_spec({"encoder": "efficientnet_lite0"}, None)
    assert not isinstance(spec, Result)
    results = check_weights(spec)
    assert [r.status for r in results] == ["ok"] and "packaged" in results[0].message


def test_cellvit_checkpoint_is_checked_only_for_the_cellvit_backend(tmp_path: Path) -> None:
    model = tmp_path / "cellvit" / "CellViT-SAM-H-x40-AMP.pth"
    config = {
        "cohorts": {
            "a": {"samples": "a.tsv"},
            "b": {"samples": "b.tsv", "segmentation": {"backend": "cellvit"}},
        },
        "segmentation": {"backend": "classical", "cellvit": {"model": str(model)}},
        "features": {"encoder": "morphology"},
    }
    assert not fails(doctor.check_all_weights(config, ["a"], None))
    problems = fails(doctor.check_all_weights(config, ["b"], None))
    assert len(problems) == 1 and str(model) in problems[0].message and "CellViT++" in problems[0].message


# --------------------------------------------------------------------------------------------------
# GPU and versions
# --------------------------------------------------------------------------------------------------


def test_a_gpu_asked_for_but_not_visible_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(doctor.gpu, "nvidia_smi_gpus", lambda: [])
    config = {"features": {"gpu": 1}, "training": {"gpu": 0}}
    requests = doctor.gpu_requests(config, [])
    assert requests == ["features.gpu"]
    (failed,) = check_gpu(requests)
    assert failed.status == "fail" and "features.gpu" in failed.message
    assert check_gpu([])[0].status == "ok"
    assert check_gpu(requests, elsewhere=True)[0].status == "warn"


def test_a_visible_gpu_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(doctor.gpu, "torch_gpus", lambda: (["NVIDIA H100"], "torch 2.13.0, CUDA 12.8"))
    (result,) = check_gpu(["training.gpu"])
    assert result.status == "ok" and "NVIDIA H100" in result.message


def test_a_version_other_than_the_pin_warns_and_a_missing_package_fails(tmp_path: Path) -> None:
    import numpy

    pins = tmp_path / "cpu.txt"
    pins.write_text("numpy==0.0.1\nPyYAML==999.0\n")
    results = {r.subject: r for r in check_versions(pins, required=("numpy", "no-such-package-bitro"))}
    assert results["numpy"].status == "warn"
    assert numpy.__version__ in results["numpy"].message and str(pins) in results["numpy"].message
    assert results["no-such-package-bitro"].status == "fail"
    assert "pip install" in results["no-such-package-bitro"].message


def test_the_installed_stack_matches_its_pins() -> None:
    results = check_versions(ROOT / "requirements" / "cpu.txt")
    assert not fails(results), fails(results)
    assert {"torch", "torch-geometric", "peft", "transformers", "anndata", "scanpy"} <= {
        r.subject for r in results
    }


def test_required_packages_are_in_the_conda_env() -> None:
    env = yaml.safe_load((ROOT / "envs" / "bitro.yaml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    pinned = {doctor.normalise_name(line.split("==")[0]) for line in pip if "==" in line}
    assert {doctor.normalise_name(n) for n in doctor.REQUIRED_PACKAGES} <= pinned


# --------------------------------------------------------------------------------------------------
# slides
# --------------------------------------------------------------------------------------------------


def demo_config(root: Path, summary: dict, tmp_path: Path) -> dict:
    cohorts = {}
    for fmt, level in (("hest", "st"), ("tcga", "bulk"), ("xenium", "xenium")):
        sheet = tmp_path / f"{fmt}.tsv"
        rows = [f"{s}\t{s[:12] if fmt == 'tcga' else 'P' + s}\t" for s in summary["ids"][fmt]]
        sheet.write_text("sample_id\tpatient_id\tmpp\n" + "\n".join(rows) + "\n")
        cohorts[f"small_{level}"] = {
            "level": level,
            "format": fmt,
            "root": str(root / fmt),
            "samples": str(sheet),
        }
    return {"cohorts": cohorts}


def test_the_demo_cohorts_pass(small_demo: tuple[Path, dict], tmp_path: Path) -> None:
    root, summary = small_demo
    report = run_doctor(demo_config(root, summary, tmp_path), skip=ONLY_SLIDES)
    assert report.ok, report.to_text()
    ok = {r.subject for r in report.results if r.status == "ok"}
    every = {f"small_{lv}/{s}" for fmt, lv in (("hest", "st"), ("tcga", "bulk"), ("xenium", "xenium"))
             for s in summary["ids"][fmt]}  # fmt: skip
    assert every <= ok
    assert "0.5 µm/px" in report.to_text()


def test_bad_samples_are_all_named_with_their_file(small_demo: tuple[Path, dict], tmp_path: Path) -> None:
    """A missing slide, garbage bytes and an mpp out of range: three failures in one report."""
    root, summary = small_demo
    hest = tmp_path / "hest"
    shutil.copytree(root / "hest", hest)
    first, second, third = summary["ids"]["hest"][:3]
    (hest / "wsis" / f"{first}.tif").unlink()
    (hest / "wsis" / f"{second}.tif").write_bytes(os.urandom(2048))
    sheet = tmp_path / "sheet.tsv"
    sheet.write_text(f"sample_id\tpatient_id\tmpp\n{first}\tP1\t\n{second}\tP2\t\n{third}\tP3\t5.0\n")
    config = {"cohorts": {"c": {"level": "st", "format": "hest", "root": str(hest), "samples": str(sheet)}}}
    report = run_doctor(config, skip=ONLY_SLIDES)
    assert not report.ok
    by_sample = {r.subject: r.message for r in fails(report.results)}
    assert set(by_sample) == {f"c/{first}", f"c/{second}", f"c/{third}"}, by_sample
    assert f"{first}.tif" in by_sample[f"c/{first}"] and "not found" in by_sample[f"c/{first}"]
    assert f"{second}.tif" in by_sample[f"c/{second}"] and "cannot read" in by_sample[f"c/{second}"]
    assert "5 µm/px (sample sheet mpp) is outside 0.1–2" in by_sample[f"c/{third}"]
    assert f"{third}.tif" in by_sample[f"c/{third}"]
    narrower = run_doctor(config, skip=ONLY_SLIDES, limits=(0.1, 10.0))
    assert f"c/{third}" not in {r.subject for r in fails(narrower.results)}


def test_sample_sheet_problems_are_named(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    sheet = tmp_path / "sheet.tsv"
    sheet.write_text("sample_id\tpatient_id\tmpp\nA\tP\t-1\nA\tP\t\n")
    config = {
        "cohorts": {
            "c": {"level": "st", "format": "hest", "root": str(tmp_path / "root"), "samples": str(sheet)}
        }
    }
    messages = [r.message for r in fails(run_doctor(config, skip=ONLY_SLIDES).results)]
    assert any("duplicated sample_id ['A']" in m and str(sheet) in m for m in messages)
    assert any("mpp '-1' is not a positive number" in m for m in messages)
    missing = {"cohorts": {"c": config["cohorts"]["c"] | {"samples": str(tmp_path / "nope.tsv")}}}
    assert any(
        "nope.tsv: sample sheet not found" in r.message for r in run_doctor(missing, skip=ONLY_SLIDES).results
    )


def test_a_demo_cohort_not_generated_yet_is_skipped_with_a_note(tmp_path: Path) -> None:
    sheet = ROOT / "config" / "samples" / "demo_st.tsv"
    root = tmp_path / "demo" / "hest"
    cohort = {
        "level": "st",
        "format": "hest",
        "root": str(root),
        "samples": str(sheet),
        "generated_by_demo": True,
    }
    report = run_doctor({"cohorts": {"demo_st": cohort}}, skip=ONLY_SLIDES)
    assert report.ok and [r.status for r in report.results] == ["skip"]
    assert "generate_demo" in report.results[0].message


# --------------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------------


def test_cli_exits_0_when_ok_and_1_on_a_failure(
    small_demo: tuple[Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root, summary = small_demo
    config = demo_config(root, summary, tmp_path)
    config["cohorts"] = {"small_st": config["cohorts"]["small_st"]}
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(config))
    args = ["doctor", "--config", str(good), "--skip", "versions,gpu", "--json", str(tmp_path / "r.json")]
    assert main([*args, "--out", str(tmp_path / "r.txt"), "--stamp", str(tmp_path / "ok")]) == 0
    assert (tmp_path / "ok").read_text() == STAMP
    body = json.loads((tmp_path / "r.json").read_text())
    assert (
        body["ok"]
        and body["counts"]["fail"] == 0
        and (tmp_path / "r.txt").read_text().startswith("bitro doctor")
    )
    assert "OK:" in capsys.readouterr().out

    config["cohorts"]["small_st"]["samples"] = str(tmp_path / "missing.tsv")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    assert main([*args[:2], str(bad), *args[3:], "--stamp", str(tmp_path / "bad.ok")]) == 1
    assert not (tmp_path / "bad.ok").exists()
    assert not json.loads((tmp_path / "r.json").read_text())["ok"]
    out, err = capsys.readouterr()
    assert "missing.tsv: sample sheet not found" in out and "failed" in err


def test_cli_checks_a_sample_sheet_of_a_layout(small_demo: tuple[Path, dict], tmp_path: Path) -> None:
    root, summary = small_demo
    sheet = tmp_path / "new.tsv"
    sheet.write_text("sample_id\tpatient_id\n" + "".join(f"{s}\tP{s}\n" for s in summary["ids"]["hest"]))
    args = ["doctor", "--samples", str(sheet), "--format", "hest", "--root", str(root / "hest")]
    assert main([*args, "--skip", "versions,weights,gpu"]) == 0
    assert main(["doctor", "--samples", str(sheet), "--skip", "slides"]) == 2


def test_cli_reads_the_config_the_workflow_passes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    settings = {"features": {"encoder": "morphology"}, "cohorts": {}}
    assert main(["doctor", "--config-json", json.dumps(settings), "--skip", "versions,gpu"]) == 0
    assert "no weights needed" in capsys.readouterr().out
    assert main(["doctor", "--config-json", "{not json"]) == 2


# --------------------------------------------------------------------------------------------------
# workflow
# --------------------------------------------------------------------------------------------------


def snakemake(workdir: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    return run_snakemake(workdir, *args, timeout=timeout)


PER_SAMPLE = ("prepare", "prepare_predicted", "cells", "crops", "embed", "reduce", "graph")


def dry_run_jobs(text: str) -> list[dict]:
    """The jobs of a dry run: rule, input and output files, wildcards."""
    jobs = []
    for block in re.split(r"^(?:local)?rule ", text, flags=re.MULTILINE)[1:]:
        job = {"rule": block.split(":", 1)[0], "input": [], "output": [], "wildcards": {}}
        for line in block.splitlines()[1:]:
            key, _, value = line.strip().partition(": ")
            if key in ("input", "output"):
                job[key] = value.split(", ")
            elif key == "wildcards":
                job["wildcards"] = dict(item.split("=", 1) for item in value.split(", "))
        jobs.append(job)
    return jobs


def test_each_cohort_is_checked_before_its_first_per_sample_job() -> None:
    done = snakemake(ROOT, "--dry-run", "--forceall")
    assert done.returncode == 0, done.stdout
    jobs = dry_run_jobs(done.stdout)
    producer = {path: i for i, job in enumerate(jobs) for path in job["output"]}

    def ancestors(index: int) -> set[int]:
        seen, todo = set(), [index]
        while todo:
            for path in jobs[todo.pop()]["input"]:
                parent = producer.get(path)
                if parent is not None and parent not in seen:
                    seen.add(parent)
                    todo.append(parent)
        return seen

    doctors = {job["wildcards"]["cohort"]: i for i, job in enumerate(jobs) if job["rule"] == "doctor"}
    assert set(doctors) == {"demo_st", "demo_bulk", "demo_xenium", "demo_slides"}
    per_sample = [i for i, job in enumerate(jobs) if job["rule"] in PER_SAMPLE]
    # 19 labelled samples, and the unlabelled slide of demo_slides (no per-sample PCA).
    assert len(per_sample) == 6 * 19 + 5
    for i in per_sample:
        assert doctors[jobs[i]["wildcards"]["cohort"]] in ancestors(i), jobs[i]
    for i in doctors.values():
        assert {jobs[a]["rule"] for a in ancestors(i)} == {"generate_demo"}
    assert not [
        job
        for job in jobs
        if job["rule"].startswith("prepare") and not any("doctor" in f for f in job["input"])
    ]


@pytest.mark.slow
def test_a_failing_preflight_stops_the_cohort_and_a_passing_one_reruns_nothing(
    small_demo: tuple[Path, dict], tmp_path: Path
) -> None:
    root, summary = small_demo
    shutil.copytree(root / "hest", tmp_path / "hest")
    first, second, third = summary["ids"]["hest"][:3]
    (tmp_path / "config").mkdir()
    sheet = tmp_path / "s.tsv"
    sheet.write_text(f"sample_id\tpatient_id\tmpp\n{first}\tP1\t\n{second}\tP2\t\n")
    config = {"cohorts": {"c1": {"level": "st", "format": "hest", "root": "hest", "samples": "s.tsv"}}}
    config["genes"] = {"n_genes": 20}  # the small demo measures 80 genes: the default 250 fails the check
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    tissue = [str(Path("results") / "c1" / "samples" / s / "tissue.npz") for s in (first, second, third)]

    plan = snakemake(tmp_path, "--dry-run", "--printshellcmds", tissue[0])
    assert plan.returncode == 0, plan.stdout
    assert "bitro doctor --config-json" in plan.stdout and "--cohort c1" in plan.stdout

    slide = tmp_path / "hest" / "wsis" / f"{second}.tif"
    slide.write_bytes(b"garbage" * 100)
    done = snakemake(tmp_path, tissue[0])
    assert done.returncode != 0
    assert f"FAIL [slides] c1/{second}: cannot read the slide: hest/wsis/{second}.tif" in done.stdout
    log = (tmp_path / "results" / "logs" / "doctor" / "c1.log").read_text()
    assert f"c1/{second}" in log and "FAILED" in log
    assert not (tmp_path / tissue[0]).exists() and not (tmp_path / "results" / "doctor").exists()

    shutil.copy(root / "hest" / "wsis" / f"{second}.tif", slide)
    assert snakemake(tmp_path, tissue[0]).returncode == 0
    assert "OK:" in (tmp_path / "results" / "doctor" / "c1.txt").read_text()

    # A new sample runs without rerunning the others; checking again (same stamp) reruns nothing.
    sheet.write_text(sheet.read_text() + f"{third}\tP3\t\n")
    plan = snakemake(tmp_path, "--dry-run", *tissue)
    planned = dry_run_jobs(plan.stdout)
    assert sorted(job["output"][0] for job in planned) == tissue[1:], plan.stdout
    assert snakemake(tmp_path, "preflight", "--forcerun", "doctor").returncode == 0
    assert "Nothing to be done" in snakemake(tmp_path, "--dry-run", tissue[0]).stdout


def test_a_config_that_breaks_the_schema_is_reported_error_by_error(tmp_path: Path) -> None:
    config = {"cohorts": {"c": {"level": "spots", "format": "hest", "root": "r", "samples": "s.tsv"}}, "x": 1}
    report = run_doctor(config, skip=("versions", "weights", "gpu", "slides"), repo=ROOT)
    subjects = {r.subject for r in fails(report.results)}
    assert subjects == {"cohorts.c.level", "(top)"}, report.to_text()
