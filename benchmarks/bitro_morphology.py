"""BiTro trained on each ``morphology`` feature set: the downstream half of ``probe_morphology.py``.

The demo's 6 HEST-layout ST slides, preprocessed by ``probe_morphology.py`` (``--samples``: its
``samples/`` folder, made here first when missing), are embedded twice in the same run, by
``morphology_histomicstk`` (HistomicsTK's 118 features) and by ``morphology`` (bitro's 12 hand-written
ones), both under each cell's outline. For each feature set the workflow's verbs then run as the demo runs
them: ``graph`` (k = 8), ``genes`` (50 genes on all slides' targets, the same list for both), ``folds``
(leave one slide out by default, ``--group-by patient`` for the demo's 3 patient folds), per fold
``cohort-pca`` (128 components or fewer, fitted on the fold's training slides), ``phenotypes`` (K = 8),
``train`` with the demo's settings (``config/config.yaml``: lr 3e-3, batch 8 spots, at most 375 steps,
validated every 25, patience 100; the paper's model sizes) and ``predict``. The figure is the test
PCC gene of ``predict``'s ``metrics.tsv`` (log1p, per held-out slide), averaged over folds. The HEST probe
on the same embeddings and folds is printed beside it.

Usage: ``.venv/bin/python benchmarks/bitro_morphology.py [--samples DIR] [--demo DIR] [--out DIR]
[--group-by sample|patient] [--max-steps 375]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_embed_modes import per_gene_pcc, ridge_probe, spot_table
from probe_morphology import prepare, run

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).resolve().parent / "out"
ENCODERS = ("morphology_histomicstk", "morphology")
LINKED = ("cells.parquet", "units.parquet", "targets.h5ad", "crops.zarr", "stain.json")


def training_settings(max_steps: int) -> dict:
    """The demo's ``model`` and ``training`` sections of ``config/config.yaml``."""
    import yaml

    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    training = dict(config["training"])
    training["max_steps"] = max_steps
    return {"model": config.get("model") or {}, "training": training}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo", type=Path, default=OUT / "htk_demo_default_0", help="the demo's root")
    parser.add_argument("--samples", type=Path, default=OUT / "probe_default_0" / "samples")
    parser.add_argument("--out", type=Path, default=OUT / "bitro_morphology")
    parser.add_argument("--group-by", choices=("sample", "patient"), default="sample")
    parser.add_argument("--max-steps", type=int, default=375)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    from bitro.preprocess.cells import read_cells

    ids = sorted(p.stem for p in (args.demo / "hest" / "wsis").glob("*.tif"))
    prepared = {sid: prepare(args.demo, sid, args.samples) for sid in ids}
    sheet = args.out / "samples.tsv"
    args.out.mkdir(parents=True, exist_ok=True)
    patients = {sid: f"P{(i // 2) + 1}" for i, sid in enumerate(ids)}  # the demo: 2 sections a patient
    pd.DataFrame({"sample_id": ids, "patient_id": [patients[s] for s in ids]}).to_csv(
        sheet, sep="\t", index=False
    )
    settings = json.dumps(training_settings(args.max_steps))
    report: dict = {"slides": ids, "group_by": args.group_by, "max_steps": args.max_steps}
    genes = args.out / "genes.txt"
    for encoder in ENCODERS:
        cohort = args.out / encoder
        samples = cohort / "samples"
        t0 = time.perf_counter()
        for sid, source in prepared.items():
            folder = samples / sid
            folder.mkdir(parents=True, exist_ok=True)
            for name in LINKED:
                link = folder / name
                if not link.exists():
                    link.symlink_to((source / name).resolve())
            if not (folder / "embeddings.npy").exists():
                run("embed", "--mode", "crop", "--crops", folder / "crops.zarr", "--cells",
                    folder / "cells.parquet", "--encoder", encoder, "--quiet", "--out",
                    folder / "embeddings.npy")  # fmt: skip
            if not (folder / "graph.npz").exists():
                run("graph", "--cells", folder / "cells.parquet", "--k", 8, "--out", folder / "graph.npz")
        embed_s = time.perf_counter() - t0
        if not genes.exists():
            targets = [samples / sid / "targets.h5ad" for sid in ids]
            run("genes", "--targets", *targets, "--level", "st", "--n-genes", 50, "--n-hvg", 1000,
                "--out", genes)  # fmt: skip
        folds = cohort / "folds.json"
        if not folds.exists():
            run("folds", "--cohort", encoder, "--level", "st", "--sample-sheet", sheet, "--group-by",
                args.group_by, "--samples-dir", samples, "--seed", 0, "--out", folds)  # fmt: skip
        fold_list = json.loads(folds.read_text())["folds"]
        fold_names = [f["name"] for f in fold_list]
        test_of = {f["name"]: f["test"] for f in fold_list}
        rows = []
        t0 = time.perf_counter()
        for fold in fold_names:
            fold_dir = cohort / fold
            common = ["--folds", folds, "--fold", fold, "--samples-dir", samples]
            if not (fold_dir / "pca.npz").exists():
                run("cohort-pca", *common, "--seed", 0, "--n-components", 128, "--out", fold_dir / "pca.npz")
            if not (fold_dir / "phenotypes.npz").exists():
                run("phenotypes", *common, "--basis", fold_dir / "pca.npz", "--k", 8, "--seed", 0,
                    "--out", fold_dir / "phenotypes.npz")  # fmt: skip
            if not (fold_dir / "model.safetensors").exists():
                run("train", *common, "--genes", genes, "--phenotypes", fold_dir / "phenotypes.npz",
                    "--scope", "cohort", "--basis", fold_dir / "pca.npz", "--params-json", settings,
                    "--threads", args.threads, "--quiet", "--out-dir", fold_dir)  # fmt: skip
            if not (fold_dir / "metrics.tsv").exists():
                run("predict", "--samples-dir", samples, "--model-dir", fold_dir, "--folds", folds,
                    "--fold", fold, "--threads", args.threads, "--out-dir", fold_dir)  # fmt: skip
            metrics = pd.read_csv(fold_dir / "metrics.tsv", sep="\t")
            rows.append(metrics)
        train_s = time.perf_counter() - t0
        table = pd.concat(rows, ignore_index=True)
        table.to_csv(cohort / "metrics_all.tsv", sep="\t", index=False)
        report[encoder] = {
            "metrics": table.to_dict(orient="list"),
            "embed_graph_s": embed_s,
            "train_s": train_s,
        }

        # HEST probe on the same embeddings and the same folds' test slides.
        spots = {}
        for sid in ids:
            cells = read_cells(samples / sid / "cells.parquet", geometry=False)
            embeddings = np.load(samples / sid / "embeddings.npy")
            spots[sid] = spot_table(samples / sid, np.nan_to_num(embeddings.astype(np.float64)), cells)
        probe = []
        for fold in fold_names:
            test = test_of[fold]
            train = [s for s in ids if s not in test]
            x = np.concatenate([spots[s][0] for s in train])
            y = np.concatenate([spots[s][1] for s in train])
            for held in test:
                probe.append(per_gene_pcc(spots[held][1], ridge_probe(x, y, spots[held][0]))[0])
        report[encoder]["probe_pcc_gene"] = probe
    (args.out / "bitro_morphology.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    print_table(report, fold_names)


def print_table(report: dict, fold_names: list[str]) -> None:
    """BiTro's test PCC gene and the probe's, per feature set, with the difference and ratio."""
    rows = {}
    for encoder in ENCODERS:
        metrics = pd.DataFrame(report[encoder]["metrics"])
        metrics = metrics[(metrics["scope"] == "per_sample") & (metrics["model"] == "bitro")]
        bitro = metrics.groupby("fold", sort=False)["pcc_gene"].mean().reindex(fold_names).to_numpy()
        rows[encoder] = (bitro, np.asarray(report[encoder]["probe_pcc_gene"]))
    print(
        f"\nBiTro (demo training settings, {report['max_steps']} steps at most) and the HEST probe, "
        f"{len(fold_names)} folds ({report['group_by']} left out), test PCC gene (log1p, per sample)"
    )
    print("| features | BiTro PCC gene | per fold | HEST probe PCC gene | per fold |")
    print("| --- | --- | --- | --- | --- |")
    for encoder, (bitro, probe) in rows.items():
        b = ", ".join(f"{v:.3f}" for v in bitro)
        p = ", ".join(f"{v:.3f}" for v in probe)
        print(f"| {encoder} | {bitro.mean():.3f} | {b} | {probe.mean():.3f} | {p} |")
    (hb, hp), (mb, mp) = rows["morphology_histomicstk"], rows["morphology"]
    print(
        f"\nmorphology_histomicstk - morphology: BiTro {hb.mean() - mb.mean():+.3f} "
        f"(ratio {hb.mean() / mb.mean():.2f}; HistomicsTK better on {int((hb > mb).sum())} of "
        f"{len(hb)} folds), probe {hp.mean() - mp.mean():+.3f} (ratio {hp.mean() / mp.mean():.2f})"
    )


if __name__ == "__main__":
    main()
