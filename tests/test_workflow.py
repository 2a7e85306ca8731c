"""The Snakemake workflow: config validation, DAG shape, lint, and (slow) a real run on a tiny demo."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import zipfile
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import sparse, stats

from bitro.bundle import BundleFile, load_bundle
from bitro.demo.project import write_small_project
from bitro.features.embeddings import read_embeddings
from bitro.features.graph import read_graph
from bitro.folds.splits import read_folds
from bitro.io import read_sample
from bitro.layout import FINAL_FOLD
from bitro.predict.apply import predict_with_bundle
from bitro.preprocess.cells import read_cells
from bitro.preprocess.crops import read_crops
from bitro.preprocess.targets import make_targets
from bitro.preprocess.units import read_units
from conftest import REPO, SNAKEFILE, SNAKEMAKE, job_counts, run_snakemake

ROOT = REPO
#: The small demo's ST training budget: a few epochs of its one training section, checked every epoch.
KILL_TEST_STEPS = 12


def snakemake(workdir: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return run_snakemake(workdir, *args, cores=2, timeout=timeout)


def write_project(workdir: Path, config: dict, sheets: dict[str, str]) -> Path:
    (workdir / "config").mkdir(parents=True, exist_ok=True)
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    for name, text in sheets.items():
        (workdir / name).write_text(text)
    return workdir


def test_demo_dag_has_one_prepare_job_per_sample() -> None:
    done = snakemake(ROOT, "--dry-run", "--forceall", "--quiet", "rules")
    assert done.returncode == 0, done.stdout
    counts = job_counts(done.stdout)
    n_samples = sum(
        len((ROOT / "config" / "samples" / f"demo_{c}.tsv").read_text().strip().splitlines()) - 1
        for c in ("st", "bulk", "xenium")
    )
    assert counts["generate_demo"] == 1
    # One `prepare` job per sample writes its tissue, units, stain model and targets. The unlabelled slide
    # (demo_slides) is preprocessed like the others by `prepare_predicted`, has no targets, and is predicted
    # on the bundle's PCA basis (so its own per-sample PCA, `reduce`, is not made).
    for rule in ("cells", "crops", "embed", "graph"):
        assert counts[rule] == n_samples + 1 == 20, rule
    assert counts["prepare"] == counts["reduce"] == n_samples and counts["prepare_predicted"] == 1
    assert not {"tissue", "units", "stain", "targets"} & set(counts)
    assert counts["predict_slide"] == 1 and counts["export_model"] == 1
    assert "segment_cellvit" not in counts and "stain_reference" not in counts


def test_each_cohort_is_a_target_of_its_own() -> None:
    """`snakemake <cohort>` plans that cohort's folds and nothing of the other cohorts'."""
    done = snakemake(ROOT, "demo_bulk", "--dry-run", "--forceall", "--quiet", "rules")
    assert done.returncode == 0, done.stdout
    counts = job_counts(done.stdout)
    bulk_slides = len((ROOT / "config" / "samples" / "demo_bulk.tsv").read_text().strip().splitlines()) - 1
    assert counts["demo_bulk"] == 1 and counts["train"] == counts["predict"] == counts["baselines"] == 1
    assert counts["embed"] == bulk_slides and "transfer_finetune" not in counts


def test_cohort_training_overrides_and_out_of_fold_pooling_reach_the_commands(tmp_path: Path) -> None:
    """The bulk cohort's own `training` goes to its train jobs only; 5 bulk folds pool into the summaries."""
    five_folds = tmp_path / "five_folds.yaml"
    five_folds.write_text(yaml.safe_dump({"evaluation": {"bulk_folds": 5}}))
    transfer = "results/transfer/demo_st_to_demo_bulk/metrics.tsv"
    targets = ("demo_bulk", "demo_st", transfer, "--dry-run", "--forceall", "--printshellcmds")
    done = snakemake(ROOT, *targets, "--configfile", "config/config.yaml", str(five_folds))
    assert done.returncode == 0, done.stdout
    commands = [line for line in done.stdout.splitlines() if line.startswith("Shell command: bitro ")]

    def settings(command: str) -> dict:
        return json.loads(command.split("--params-json '")[1].split("'")[0])["training"]

    trains = {c.split("--samples-dir results/")[1].split("/")[0]: c for c in commands if "bitro train " in c}
    bulk, st = settings(trains["demo_bulk"]), settings(trains["demo_st"])
    assert (bulk["max_steps"], bulk["patience_steps"], bulk["eval_every_steps"]) == (320, 80, 8)
    assert (st["max_steps"], st["patience_steps"], st["eval_every_steps"]) == (375, 100, 25)
    folds = [c for c in commands if "bitro folds --cohort demo_bulk" in c]
    assert len(folds) == 1 and "--bulk-folds 5" in folds[0]
    (bulk_summary,) = [c for c in commands if "bitro summarise" in c and "results/demo_bulk/fold0/" in c]
    pooled = bulk_summary.split("--predictions ")[1].split(" --")[0].split()
    assert pooled == [f"results/demo_bulk/fold{k}/predictions.h5ad" for k in range(5)]
    assert "--baseline-predictions results/demo_bulk/fold0/baselines.h5ad" in bulk_summary
    (st_summary,) = [c for c in commands if "bitro summarise" in c and "results/demo_st/fold0/" in c]
    assert "--predictions  --baseline-predictions  --out" in st_summary  # leave-one-out does not pool
    # The transfer's table re-scores the target's own BiTro and baselines, every fold, on its genes.
    (transfer_summary,) = [c for c in commands if "bitro transfer-summary" in c]
    references = transfer_summary.split("--reference ")[1].split(" --")[0].split()
    assert references == [
        f"results/demo_bulk/fold{k}/{name}"
        for name in ("predictions.h5ad", "baselines.h5ad")
        for k in range(5)
    ]
    assert "--out-of-fold" in transfer_summary


@pytest.mark.parametrize(
    ("level", "sheet", "messages"),
    [
        ("spots", "sample_id\tpatient_id\nA\tP\n", ("spots", "enum")),
        ("st", "sample_id\tpatient_id\tmpp\nA\tP\t-0.5\n", ("-0.5",)),
        ("st", "sample_id\tpatient_id\nA\tP\nA\tP\n", ("duplicated sample_id",)),
        ("st", "sample_id\tmpp\nA\t0.5\n", ("patient_id", "required")),
    ],
    ids=["unknown-level", "negative-mpp", "duplicated-sample", "no-patient"],
)
def test_bad_config_or_sample_sheet_is_rejected(
    tmp_path: Path, level: str, sheet: str, messages: tuple[str, ...]
) -> None:
    config = {"cohorts": {"c1": {"level": level, "format": "hest", "root": "data", "samples": "s.tsv"}}}
    write_project(tmp_path, config, {"s.tsv": sheet})
    done = snakemake(tmp_path, "--dry-run")
    assert done.returncode != 0
    assert all(message in done.stdout for message in messages), done.stdout


def test_a_cohort_training_block_takes_only_per_cohort_settings(tmp_path: Path) -> None:
    """zscore and the feature scope shape shared files and jobs: a cohort cannot override them."""
    cohort = {"level": "bulk", "format": "tcga", "root": "data", "samples": "s.tsv"}
    config = {"cohorts": {"c1": cohort | {"training": {"max_steps": 40, "zscore": False}}}}
    write_project(tmp_path, config, {"s.tsv": "sample_id\tpatient_id\nA\tP\n"})
    done = snakemake(tmp_path, "--dry-run")
    assert done.returncode != 0 and "zscore" in done.stdout, done.stdout


def test_real_layout_inputs_are_the_sample_files(tmp_path: Path) -> None:
    """Without the demo, a HEST sample's rule depends on its own h5ad, slide and metadata."""
    hest_project(tmp_path, {})
    done = snakemake(tmp_path, "--dry-run", "--printshellcmds")
    assert done.returncode == 0, done.stdout
    assert "--mpp 0.25" in done.stdout
    assert "hest/st/TENX1.h5ad" in done.stdout and "generate_demo" not in done.stdout


#: Rules that only gather other rules' tables or files: run on the submitting node, no benchmark.
AGGREGATIONS = {
    "cohort_metrics",
    "transfer_metrics",
    "demo_summary",
    "ablation_metrics",
    "ablations",
    "predicted_profiles",
}


def test_every_rule_that_does_work_is_benchmarked() -> None:
    done = snakemake(ROOT, "--dry-run", "--forceall", "--printshellcmds", "all", "ablations")
    assert done.returncode == 0, done.stdout[-3000:]
    jobs = re.split(r"^(?:local)?rule ", done.stdout, flags=re.MULTILINE)[1:]
    blocks = [job.split("\n\n")[0] for job in jobs]
    working = {b.split(":", 1)[0] for b in blocks if re.search(r"Shell command: (?!None)", b)} - AGGREGATIONS
    unbenchmarked = {b.split(":", 1)[0] for b in blocks if "benchmark: " not in b} & working
    assert working >= {"prepare", "prepare_predicted", "train", "predict", "plot_demo_st", "train_ablation"}
    assert not unbenchmarked


@pytest.mark.parametrize("keep", [None, False, True])
def test_crops_are_temporary_unless_kept(tmp_path: Path, keep: bool | None) -> None:
    """crops.zarr, the largest per-sample file, is removed once embedded unless crops.keep says otherwise."""
    config = {"cohorts": {"c1": {"level": "st", "format": "hest", "root": "hest", "samples": "s.tsv"}}}
    if keep is not None:
        config["crops"] = {"keep": keep}
    write_project(tmp_path, config, {"s.tsv": "sample_id\tpatient_id\nA\tP1\nB\tP2\n"})
    (tmp_path / "Snakefile").write_text(
        'configfile: "config/config.yaml"\n\n'
        f'include: "{ROOT / "workflow" / "rules" / "common.smk"}"\n\n'
        "from snakemake.io import is_flagged\n\n"
        'print("crops", crops_output(), "temporary" if is_flagged(crops_output(), "temp") else "kept")\n\n'
        "rule all:\n"
        "    default_target: True\n"
    )
    done = run_snakemake(tmp_path, "--dry-run", snakefile=None)
    assert done.returncode == 0, done.stdout[-3000:]
    expected = "kept" if keep else "temporary"
    assert f"crops results/{{cohort}}/samples/{{sample}}/crops.zarr {expected}" in done.stdout, done.stdout


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


def dense(matrix: np.ndarray | sparse.spmatrix) -> np.ndarray:
    return matrix.toarray() if sparse.issparse(matrix) else np.asarray(matrix)


def small_demo_project(workdir: Path) -> dict[str, list[str]]:
    return write_small_project(
        workdir,
        settings={
            "features": {"encoder": "efficientnet_lite0", "image_size": 48},
            # Checks after every epoch, up to a budget of several epochs, leave the kill-and-resume
            # check time to stop a run after its first.
            "training": {
                "max_steps": KILL_TEST_STEPS,
                "patience_steps": KILL_TEST_STEPS,
                "eval_every_steps": 1,
                "lr": 0.001,
                "batch_bags": 16,
            },
            "baselines": {"mlp_epochs": 2},
            "crops": {"keep": True},  # read back below
        },
        predicted=True,
    )


def check_evaluation(results: Path) -> None:
    """Each fold predicts exactly its test samples; files and tables agree with each other and with scipy."""
    for level in ("st", "bulk", "xenium"):
        cohort = results / f"small_{level}"
        folds = read_folds(cohort / "folds.json")
        genes = (cohort / "genes.txt").read_text().split()
        for fold in folds.folds:
            folder = cohort / fold.name
            model = json.loads((folder / "model.json").read_text())
            assert model["genes"] == genes and model["fold"]["test"] == fold.test
            predictions = ad.read_h5ad(folder / "predictions.h5ad")
            cells = ad.read_h5ad(folder / "cells_pred.h5ad")
            assert set(predictions.obs["sample_id"]) == set(fold.test) == set(cells.obs["sample_id"])
            assert predictions.var_names.tolist() == genes
            # Eq. 10: the pseudo-cells of a bag add up to its prediction (count space).
            key = cells.obs["sample_id"].astype(str) + ":" + cells.obs["unit_id"].astype(str)
            sums = pd.DataFrame(dense(cells.X), index=key).groupby(level=0).sum()
            if level == "bulk":
                totals = sums.groupby(sums.index.str.split(":").str[0]).sum()
                assert np.allclose(
                    totals.loc[predictions.obs_names].to_numpy(), dense(predictions.X), rtol=1e-3
                )
            else:
                assert np.allclose(
                    sums.loc[predictions.obs_names].to_numpy(), dense(predictions.X), rtol=1e-3
                )
            table = pd.read_csv(folder / "metrics.tsv", sep="\t")
            unit_level = "slide" if level == "bulk" else "spot"
            row = table[(table["level"] == unit_level) & table["space"].str.startswith("log1p")].iloc[0]
            scored = predictions[predictions.obs["scored"].to_numpy()]
            truth, pred = np.log1p(dense(scored.layers["truth"])), np.log1p(dense(scored.X))
            one_sample = scored.obs["sample_id"].nunique() == 1
            if len(scored) > 2 and (row["scope"] == "pooled" or one_sample):
                by_hand = [
                    stats.pearsonr(truth[:, g], pred[:, g])[0]
                    for g in range(len(genes))
                    if np.ptp(truth[:, g]) > 0 and np.ptp(pred[:, g]) > 0
                ]
                assert np.isclose(row["pcc_gene"], np.mean(by_hand), atol=1e-6)
            if level == "xenium":
                assert "cell" in set(table["level"]) and "truth" in cells.layers
            baselines = pd.read_csv(folder / "baselines.tsv", sep="\t")
            assert {"training_mean", "hest_probe", "mlp", "oracle_composition"} <= set(baselines["model"])
            # baselines.h5ad holds the predictions baselines.tsv scored.
            units = ad.read_h5ad(folder / "baselines.h5ad")
            assert set(units.obs["sample_id"]) == set(fold.test) and units.var_names.tolist() == genes
            for name in ("training_mean", "mlp"):
                mine = baselines[(baselines["model"] == name) & baselines["space"].str.startswith("log1p")]
                error = np.log1p(units.layers[name]) - np.log1p(units.layers["truth"])
                if row["scope"] == "pooled":
                    assert np.isclose(mine["rmse"].iloc[0], np.sqrt(np.mean(error**2)), rtol=1e-5)
        summary = pd.read_csv(cohort / "metrics.tsv", sep="\t")
        assert summary["fold"].tolist()[-2:] == ["mean", "std"]
        assert len(summary) == summary.groupby(["level", "space"]).ngroups * (len(folds.folds) + 2)


def check_predicted(results: Path, slides: list[str]) -> None:
    """The final model of small_st is bundled; its bundle, loaded from the zip, predicts the unlabelled
    slide as the workflow's predict_slide did, and every patch of the slide's tissue is predicted."""
    final = results / "small_st" / FINAL_FOLD
    assert read_folds(final / "folds.json").fold(FINAL_FOLD).test == []
    bundle = load_bundle(final / "bundle.zip")
    assert bundle.genes == (results / "small_st" / "genes.txt").read_text().split()
    profiles = pd.read_csv(results / "small_slides" / "predictions" / "bulk.tsv", sep="\t")
    assert profiles["sample_id"].tolist() == slides
    for sample_id in slides:
        out = results / "small_slides" / "predictions" / sample_id
        spots = ad.read_h5ad(out / "spots.h5ad")
        again = predict_with_bundle(bundle, results / "small_slides" / "samples" / sample_id)
        assert spots.var_names.tolist() == bundle.genes
        rows = pd.Index(spots.obs["unit_id"].to_numpy()).get_indexer(again.unit_ids)
        assert (rows >= 0).all() and len(rows) > 0
        assert np.allclose(dense(spots.X)[rows], again.prediction, rtol=1e-5, atol=1e-6)
        assert sample_id in spots.uns["spatial"] and (out / "cells.geojson").stat().st_size > 0


def kill_during_training(workdir: Path, target: Path, timeout: float = 1800) -> int:
    """Run snakemake for ``target`` and SIGKILL its whole process group once training saved a check.

    Returns the step the saved state had reached when the workflow was killed.
    """
    state = target.parent / "checkpoint" / "state.json"
    process = subprocess.Popen(
        [str(SNAKEMAKE), "--snakefile", str(SNAKEFILE), "--cores", "2", str(target.relative_to(workdir))],
        cwd=workdir,
        env={**os.environ, "PATH": f"{SNAKEMAKE.parent}{os.pathsep}{os.environ.get('PATH', '')}"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    try:
        while not state.exists():
            assert process.poll() is None, "the workflow ended before training saved a state"
            assert time.monotonic() < deadline, "training did not start in time"
            time.sleep(0.02)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    return json.loads(state.read_text())["info"]["step"]


@pytest.mark.slow
def test_small_demo_runs_end_to_end_and_resumes(tmp_path: Path) -> None:
    ids = small_demo_project(tmp_path)
    results = tmp_path / "results"
    # Killed mid-training (as a node failure or Ctrl-C twice would), then run again: training resumes.
    model = results / "small_st" / "fold0" / "model.safetensors"
    killed_at = kill_during_training(tmp_path, model)
    assert 1 <= killed_at < KILL_TEST_STEPS and not model.exists()
    assert snakemake(tmp_path, "--unlock").returncode == 0
    done = snakemake(tmp_path, "--rerun-incomplete", timeout=1800)
    assert done.returncode == 0, done.stdout
    train_log = (results / "logs" / "train" / "small_st" / "fold0.log").read_text()
    assert f"resuming after step {killed_at} of at most {KILL_TEST_STEPS}" in train_log, train_log
    epochs = pd.read_csv(results / "small_st" / "fold0" / "train_log.csv")["epoch"].tolist()
    assert epochs == list(range(1, len(epochs) + 1)) and len(epochs) > killed_at
    assert (results / "benchmarks" / "demo" / "generate_demo.tsv").exists()
    for layout, level in (("hest", "st"), ("tcga", "bulk"), ("xenium", "xenium")):
        for sample_id in ids[layout]:
            sample_dir = results / f"small_{level}" / "samples" / sample_id
            units = read_units(sample_dir / "units.parquet")
            targets = ad.read_h5ad(sample_dir / "targets.h5ad")
            assert (results / "logs" / "prepare" / f"small_{level}" / f"{sample_id}.log").exists()
            # The rule's output equals the library called by hand on the same files.
            sample = read_sample(layout, results / "demo_data" / layout, sample_id)
            expected = make_targets(sample, units)
            assert targets.var_names.tolist() == expected.var_names.tolist()
            assert np.allclose(dense(targets.X), dense(expected.X))
            assert targets.uns["bitro"]["level"] == level
            cells = read_cells(sample_dir / "cells.parquet")
            crops = read_crops(sample_dir / "crops.zarr")
            assert crops.shape == (len(cells), 48, 48, 3) and len(cells) > 100
            assert set(cells["unit_id"]) - {-1} <= set(units["unit_id"])
            assert cells["source"].iloc[0] == ("xenium" if layout == "xenium" else "classical")
            features = np.load(sample_dir / "features.npy")
            embeddings, describe = read_embeddings(sample_dir / "embeddings.npy")
            assert features.shape == (len(cells), 128) and embeddings.shape == (len(cells), 1280)
            assert describe["encoder"] == "efficientnet_lite0" and describe["image_size"] == 48
            graphs = read_graph(sample_dir / "graph.npz")
            src, dst = graphs.global_edges()
            assert np.array_equal(cells["unit_id"].to_numpy()[src], cells["unit_id"].to_numpy()[dst])

    check_evaluation(results)
    check_predicted(results, ids["slides"])

    again = snakemake(tmp_path, "--dry-run")
    assert "Nothing to be done" in again.stdout, again.stdout

    # One sample's cells are lost: that sample's cell-level steps rerun, no other sample's do.
    lost = results / "small_st" / "samples" / ids["hest"][0] / "cells.parquet"
    lost.unlink()
    resumed = snakemake(tmp_path, "--printshellcmds")
    assert resumed.returncode == 0, resumed.stdout
    assert lost.exists()
    assert "bitro demo --out" not in resumed.stdout and "bitro prepare " not in resumed.stdout
    # --printshellcmds prints each job's command after "Shell command: ".
    lines = [line.strip().removeprefix("Shell command:").strip() for line in resumed.stdout.splitlines()]
    commands = [line for line in lines if line.startswith("bitro ")]
    for verb in ("cells", "crops", "embed", "graph"):
        runs = [command for command in commands if command.startswith(f"bitro {verb} ")]
        assert len(runs) == 1 and f"/{ids['hest'][0]}/" in runs[0], (verb, runs)
    # The final model trained on that sample, so the unlabelled slide is predicted again; its own
    # per-sample steps are not rerun (the loop above found each verb once, for the lost sample).
    assert any(command.startswith("bitro predict-sample ") for command in commands)
    others = [*ids["hest"][1:], *ids["tcga"], *ids["xenium"]]
    assert not [c for c in commands if any(f"/{other}/" in c or f" {other} " in c for other in others)]


def test_configfile_replaces_the_demo_config() -> None:
    """``--configfile`` runs only the cohorts it names: the demo's are not merged in."""
    done = snakemake(ROOT, "--dry-run", "--configfile", "config/examples/hest_brca.yaml")
    assert "/data/hest1k/st/SPA154.h5ad" in done.stdout  # its inputs are looked for (absent here)
    assert "demo_st" not in done.stdout and "generate_demo" not in done.stdout


def test_xenium_bundle_files_with_run_prefixes_are_inputs(tmp_path: Path) -> None:
    config = {"cohorts": {"x": {"level": "xenium", "format": "xenium", "root": "xen", "samples": "s.tsv"}}}
    write_project(tmp_path, config, {"s.tsv": "sample_id\tpatient_id\nRep1\tP\n"})
    bundle = tmp_path / "xen" / "Rep1"
    bundle.mkdir(parents=True)
    for name in (
        "experiment.xenium",
        "cells.parquet",
        "cell_feature_matrix.h5",
        "Run_X_he_image.ome.tif",
        "Run_X_he_imagealignment.csv",
    ):
        (bundle / name).write_text("")
    done = snakemake(tmp_path, "--dry-run", "--printshellcmds")
    assert done.returncode == 0, done.stdout
    assert "Run_X_he_imagealignment.csv" in done.stdout and "Run_X_he_image.ome.tif" in done.stdout
    assert "xen/Rep1/experiment.xenium" in done.stdout


def test_a_xenium_bundle_without_its_experiment_file_is_named_at_dag_build(tmp_path: Path) -> None:
    """The Xenium reader needs experiment.xenium (the morphology pixel size): a dry run already names it."""
    config = {"cohorts": {"x": {"level": "xenium", "format": "xenium", "root": "xen", "samples": "s.tsv"}}}
    write_project(tmp_path, config, {"s.tsv": "sample_id\tpatient_id\nRep1\tP\n"})
    bundle = tmp_path / "xen" / "Rep1"
    bundle.mkdir(parents=True)
    for name in ("cells.parquet", "cell_feature_matrix.h5", "he_image.ome.tif", "he_imagealignment.csv"):
        (bundle / name).write_text("")
    done = snakemake(tmp_path, "--dry-run")
    assert done.returncode != 0
    assert "Missing input files" in done.stdout and "xen/Rep1/experiment.xenium" in done.stdout, done.stdout


def test_a_hest_slide_of_any_accepted_suffix_goes_through_the_dag(tmp_path: Path) -> None:
    """bitro.io reads wsis/{id}.svs (or .tiff, .ndpi, .btf) when there is no .tif: the workflow does too."""
    hest_project(tmp_path, {})
    (tmp_path / "hest" / "wsis" / "TENX2.tif").rename(tmp_path / "hest" / "wsis" / "TENX2.svs")
    done = snakemake(tmp_path, "--dry-run", "--printshellcmds")
    assert done.returncode == 0, done.stdout
    tissue = [block for block in done.stdout.split("\nrule ") if block.startswith("prepare:")]
    inputs = {
        line.strip() for block in tissue for line in block.splitlines() if line.strip().startswith("input:")
    }
    assert any("hest/wsis/TENX2.svs" in line for line in inputs), inputs
    assert not any("TENX2.tif" in line for line in inputs), inputs


def hest_project(workdir: Path, extra: dict) -> Path:
    config = {"cohorts": {"c1": {"level": "st", "format": "hest", "root": "hest", "samples": "s.tsv"}}}
    sheet = "sample_id\tpatient_id\tmpp\nTENX1\tP1\t0.25\nTENX2\tP2\t0.25\n"
    write_project(workdir, config | extra, {"s.tsv": sheet})
    for sample in ("TENX1", "TENX2"):
        for sub, name in (
            ("st", f"{sample}.h5ad"),
            ("wsis", f"{sample}.tif"),
            ("metadata", f"{sample}.json"),
        ):
            (workdir / "hest" / sub).mkdir(parents=True, exist_ok=True)
            (workdir / "hest" / sub / name).write_text("")
    return workdir


def test_cellvit_backend_runs_cellvit_on_a_gpu_in_its_own_env(tmp_path: Path) -> None:
    model = tmp_path / "weights" / "CellViT-SAM-H-x40-AMP.pth"
    model.parent.mkdir()
    model.write_text("")
    segmentation = {"backend": "cellvit", "cellvit": {"model": str(model)}}
    hest_project(tmp_path, {"segmentation": segmentation})
    done = snakemake(tmp_path, "--dry-run", "--printshellcmds")
    assert done.returncode == 0, done.stdout
    out = done.stdout
    assert "rule segment_cellvit:" in out and "gpu=1" in out
    assert "bash results/c1/samples/TENX1/cellvit/run.sh" in out
    assert f"bitro cellvit-script --format hest --root hest --sample TENX1 --mpp 0.25 --model {model}" in out
    assert "--backend cellvit --segmentation results/c1/samples/TENX1/cellvit/output" in out
    assert "bitro prepare " in out and "--stain-out" in out  # crops are still stain-normalised


def test_a_stain_target_image_is_fitted_into_a_reference(tmp_path: Path) -> None:
    hest_project(tmp_path, {"stain": {"target": "lab_he.png"}})
    (tmp_path / "lab_he.png").write_text("")
    done = snakemake(tmp_path, "--dry-run", "--printshellcmds")
    assert done.returncode == 0, done.stdout
    assert "bitro stain-reference --image lab_he.png --out results/stain_reference.json" in done.stdout
    assert "--reference results/stain_reference.json" in done.stdout


def test_precomputed_segmentation_path_per_sample(tmp_path: Path) -> None:
    hest_project(tmp_path, {})
    config = yaml.safe_load((tmp_path / "config" / "config.yaml").read_text())
    config["cohorts"]["c1"]["segmentation"] = {"backend": "precomputed", "path": "seg/{sample}.json"}
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    (tmp_path / "seg").mkdir()
    (tmp_path / "seg" / "TENX1.json").write_text("")
    (tmp_path / "seg" / "TENX2.json").write_text("")
    done = snakemake(tmp_path, "--dry-run", "--printshellcmds")
    assert done.returncode == 0, done.stdout
    assert "--backend precomputed --segmentation seg/TENX1.json" in done.stdout
    assert "--stain" not in done.stdout.split("bitro cells")[1].split("\n")[0]


def _bundle_project(tmp_path: Path, features: dict[str, object], *, as_zip: bool = True) -> None:
    """A project whose one cohort, two bare slides, is predicted by a bundle made elsewhere."""
    record = {
        "format": "bitro-bundle/1",
        "features": {"scope": "cohort"},
        "settings": {"features": features, "crops": {"mpp": 0.25}},
    }
    folder = tmp_path / "models" / "brca"
    folder.mkdir(parents=True)
    (folder / BundleFile.RECORD).write_text(json.dumps(record))
    (folder / BundleFile.STAIN_REFERENCE).write_text("{}")
    bundle = "models/brca"
    if as_zip:
        with zipfile.ZipFile(tmp_path / "models" / "brca.zip", "w") as archive:
            for path in folder.iterdir():
                archive.write(path, path.name)
        bundle = "models/brca.zip"
    (tmp_path / "slides").mkdir()
    for name in ("S1.svs", "S2.tif"):
        (tmp_path / "slides" / name).write_text("")
    cohort = {"format": "slides", "root": "slides", "samples": "s.tsv", "bundle": bundle}
    write_project(tmp_path, {"cohorts": {"mine": cohort}}, {"s.tsv": "sample_id\tmpp\nS1\t0.5\nS2\t\n"})


#: The feature settings of the schema's defaults, as a bundle made with them records them.
SAME_FEATURES = {
    "encoder": "efficientnet_lite0",
    "image_size": 224,
    "pooling": "mean",
    "mode": "crop",
    "graph_k": 8,
}


@pytest.mark.parametrize("as_zip", [True, False], ids=["zip", "folder"])
def test_a_slides_cohort_is_predicted_with_its_bundles_settings(tmp_path: Path, as_zip: bool) -> None:
    """Bare slides get the per-sample steps with the bundle's stain reference and crop pixel size, then
    its predictions; nothing trains or is scored, and no sample needs a patient."""
    _bundle_project(tmp_path, SAME_FEATURES, as_zip=as_zip)
    done = snakemake(tmp_path, "--dry-run", "--printshellcmds", "--forceall")
    assert done.returncode == 0, done.stdout
    counts = job_counts(done.stdout)
    assert counts["predict_slide"] == counts["embed"] == counts["prepare_predicted"] == 2
    assert counts["predicted_profiles"] == 1 and counts.get("unpack_bundle", 0) == int(as_zip)
    for rule in ("prepare", "genes", "folds", "train", "predict", "baselines", "export_model"):
        assert rule not in counts, rule
    reference = "results/mine/stain_reference.json" if as_zip else "models/brca/stain_reference.json"
    assert f"--reference {reference}" in done.stdout
    assert (
        "--crop-mpp 0.25" in done.stdout
        and "--format slides --root slides --sample S1 --mpp 0.5" in done.stdout
    )
    assert "results/mine/predictions/S2/spots.h5ad" in done.stdout


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"encoder": "dinov3_vitl16"}, "features.encoder = 'dinov3_vitl16'"),
        ({"graph_k": 12}, "features.graph_k = 12"),
    ],
    ids=["encoder", "graph-k"],
)
def test_a_bundle_embedded_otherwise_stops_the_dry_run(tmp_path: Path, change: dict, message: str) -> None:
    _bundle_project(tmp_path, SAME_FEATURES | change)
    done = snakemake(tmp_path, "--dry-run")
    assert done.returncode != 0 and message in done.stdout and "cohort 'mine'" in done.stdout, done.stdout


def test_a_bundle_that_is_not_one_or_a_slides_cohort_without_one_is_refused(tmp_path: Path) -> None:
    _bundle_project(tmp_path, SAME_FEATURES, as_zip=False)
    (tmp_path / "models" / "brca" / BundleFile.RECORD).unlink()
    done = snakemake(tmp_path, "--dry-run")
    assert done.returncode != 0 and "is not a bitro model bundle" in done.stdout, done.stdout
    config = yaml.safe_load((tmp_path / "config" / "config.yaml").read_text())
    del config["cohorts"]["mine"]["bundle"]
    (tmp_path / "config" / "config.yaml").write_text(yaml.safe_dump(config))
    done = snakemake(tmp_path, "--dry-run")
    assert done.returncode != 0 and "bundle" in done.stdout and "required" in done.stdout, done.stdout


def test_final_target_bundles_every_cohort_and_transfer_and_a_transfer_bundle_predicts(
    tmp_path: Path,
) -> None:
    """`snakemake final` trains a final model of each cohort and transfer run (fold `final`, nothing tested)
    and bundles it; a predicted cohort may name a transfer run of the same config as its bundle."""
    done = snakemake(ROOT, "final", "--dry-run", "--forceall", "--printshellcmds")
    assert done.returncode == 0, done.stdout
    counts = job_counts(done.stdout)
    assert counts["export_model"] == 3 and counts["export_transfer_model"] == 2
    assert counts["final_fold"] == 3 and "predict_slide" not in counts
    assert (
        "--fold final" in done.stdout
        and "results/transfer/demo_bulk_to_demo_st/final/bundle.zip" in done.stdout
    )
    slides = tmp_path / "slides.yaml"
    slides.write_text(yaml.safe_dump({"cohorts": {"demo_slides": {"bundle": "demo_bulk_to_demo_st"}}}))
    done = snakemake(
        ROOT,
        "demo_slides",
        "--dry-run",
        "--forceall",
        "--printshellcmds",
        "--configfile",
        "config/config.yaml",
        str(slides),
    )
    assert done.returncode == 0, done.stdout
    assert "--bundle results/transfer/demo_bulk_to_demo_st/final/bundle" in done.stdout
