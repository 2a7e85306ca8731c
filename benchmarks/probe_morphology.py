"""What the ``morphology`` encoder's features buy downstream: HEST-Benchmark's spot probe on demo ST slides.

Every HEST-layout slide of a demo is preprocessed by the ``bitro`` verbs as the workflow runs them (tissue,
spots, Vahadane stain, classical segmentation, 48-px crops at 0.5 µm/px, spot targets). Every cell is then
described three ways, in the same run: by HistomicsTK's features (``morphology_histomicstk``) and by bitro's
hand-written ones (``morphology``) under each cell's outline, and by the hand-written ones on the nucleus
they find in the crop themselves (the ``morphology`` encoder before outlines were passed to it). The probe
is HEST-Benchmark's (``compare_embed_modes.ridge_probe``): spot-mean features → StandardScaler → PCA
(≤ 256) → Ridge on log1p counts of every gene, leave-one-slide-out; PCC gene is Pearson per gene across
the held-out slide's spots, averaged over genes (constant genes count 0) and then over folds.

BiTro itself trained on each feature set (the issue's other half) is ``bitro_morphology.py``, which reuses
the slides this script prepares and prints the probe on its folds beside BiTro's figures.

Usage: ``.venv/bin/python benchmarks/probe_morphology.py [--preset small] [--seed 3] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_embed_modes import per_gene_pcc, ridge_probe, spot_table

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).resolve().parent / "out"


def run(*args: object) -> None:
    from bitro.cli import main

    code = main([str(a) for a in args])
    if code != 0:
        raise SystemExit(f"bitro {args[0]} failed ({code})")


def prepare(root: Path, sid: str, work: Path) -> Path:
    """One slide through the preprocessing verbs; returns its folder."""
    folder = work / sid
    if (folder / "crops.zarr").exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    sample = ["--format", "hest", "--root", root / "hest", "--sample", sid]
    reference = ROOT / "resources" / "stain" / "reference.json"
    run("tissue", *sample, "--out", folder / "tissue.npz")
    run("units", *sample, "--tissue", folder / "tissue.npz", "--out", folder / "units.parquet")
    run("targets", *sample, "--units", folder / "units.parquet", "--out", folder / "targets.h5ad")
    run(
        "stain",
        *sample,
        "--tissue",
        folder / "tissue.npz",
        "--reference",
        reference,
        "--out",
        folder / "stain.json",
    )
    cells = [
        "--tissue",
        folder / "tissue.npz",
        "--units",
        folder / "units.parquet",
        "--stain",
        folder / "stain.json",
    ]
    run("cells", *sample, *cells, "--out", folder / "cells.parquet")
    crops = ["--cells", folder / "cells.parquet", "--stain", folder / "stain.json", "--quiet"]
    run("crops", *sample, *crops, "--out", folder / "crops.zarr")
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument(
        "--out", type=Path, default=None, help="default: benchmarks/out/probe_{preset}_{seed}"
    )
    parser.add_argument("--demo", type=Path, default=None, help="an existing demo of that preset and seed")
    args = parser.parse_args()

    from bitro.demo import generate_demo, preset
    from bitro.features.encoders import HistomicsTKMorphologyEncoder
    from bitro.features.morphology import CellOutlines, HandcraftedMorphology
    from bitro.preprocess.cells import read_cells
    from bitro.preprocess.crops import read_crops

    out = args.out or OUT / f"probe_{args.preset}_{args.seed}"
    root = args.demo or out / "demo"
    if not (root / "hest" / "truth" / "params.json").is_file():
        generate_demo(root, config=preset(args.preset, seed=args.seed), progress=False)
    ids = sorted(p.stem for p in (root / "hest" / "wsis").glob("*.tif"))
    folders = {sid: prepare(root, sid, out / "samples") for sid in ids}
    encoders = {
        "histomicstk": HistomicsTKMorphologyEncoder(),
        "hand-written": HandcraftedMorphology(),
        "hand-written, nucleus found in the crop": HandcraftedMorphology(),
    }
    spots: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {name: {} for name in encoders}
    seconds = dict.fromkeys(encoders, 0.0)
    n_cells = 0
    for sid, folder in folders.items():
        crops = read_crops(folder / "crops.zarr")
        cells = read_cells(folder / "cells.parquet", geometry=False)
        # Only cells inside a spot reach the probe: the others are not embedded.
        inside = np.nonzero(cells["unit_id"].to_numpy() >= 0)[0]
        pixels = np.asarray(crops[:])
        outlines = CellOutlines.read(
            folder / "cells.parquet",
            size=int(crops.attrs["size"]),
            mpp=float(crops.attrs["mpp"]),
            n_crops=len(pixels),
        )
        masks = np.concatenate([outlines.masks(i, i + 1) for i in inside])
        n_cells += len(inside)
        for name, encoder in encoders.items():
            t0 = time.perf_counter()
            features = np.concatenate(
                [
                    encoder.embed(
                        pixels[inside[i : i + 1024]], None if "crop" in name else masks[i : i + 1024]
                    )
                    for i in range(0, len(inside), 1024)
                ]
            )
            seconds[name] += time.perf_counter() - t0
            table = cells.iloc[inside].reset_index(drop=True)
            spots[name][sid] = spot_table(folder, np.nan_to_num(features.astype(np.float64)), table)
        print(f"  {sid}: {len(inside)} cells in {len(spots['histomicstk'][sid][1])} spots", flush=True)
    report = {"n_cells": n_cells, "slides": ids}
    for name in encoders:
        pcc = []
        for held in ids:
            train = [s for s in ids if s != held]
            x = np.concatenate([spots[name][s][0] for s in train])
            y = np.concatenate([spots[name][s][1] for s in train])
            pcc.append(per_gene_pcc(spots[name][held][1], ridge_probe(x, y, spots[name][held][0]))[0])
        report[name] = {
            "pcc_gene": float(np.mean(pcc)),
            "per_fold": pcc,
            "cells_per_s": n_cells / seconds[name],
        }
    print(f"\nHEST probe (leave one slide out) on {len(ids)} demo ST slides, {n_cells} cells in spots")
    print("| features | PCC gene (mean over folds) | per fold | cells/s |")
    print("| --- | --- | --- | --- |")
    for name in encoders:
        r = report[name]
        folds = ", ".join(f"{v:.3f}" for v in r["per_fold"])
        print(f"| {name} | {r['pcc_gene']:.3f} | {folds} | {r['cells_per_s']:.0f} |")
    (out / "probe_morphology.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
