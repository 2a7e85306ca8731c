"""HistomicsTK against bitro's own implementations, in one run, on demo slides whose truth is known.

- stain estimation: every ``stain.method`` that fits vectors, on the same tissue pixels of each demo slide
  (bitro's tile sampling, glass as I₀): angle between the fitted and the planted H and E vectors
  (``truth/params.json``) and seconds per slide fit (the fit only; the tiles are read once);
- stain for segmentation: classical segmentation from bitro's Vahadane and Macenko haematoxylin, each over
  a sweep of threshold factors (precision and recall as below);
- nuclear segmentation: the ``classical`` and ``histomicstk`` backends on each HEST-layout slide with the
  same stain model and threshold: precision and recall against the true nuclei (one-to-one within 4 µm)
  and slide megapixels (at the segmentation's 0.5 µm/px) per second, one process;
- nuclear features: HistomicsTK's (``morphology_histomicstk``) and bitro's hand-written ones
  (``morphology``) on the same stain-normalised crops (nucleus masks from the classical outlines): cells
  per second, and how well each tells the demo's true cell types apart (5-fold logistic regression on
  standardised features, balanced accuracy) for the segmented cells matched to a true nucleus.

Usage: ``.venv/bin/python benchmarks/bench_histomicstk.py [--preset default] [--seed 0] [--out DIR]
[--feature-cells 8000] [--skip stain,sweep,segment,features]``; the demo ``make demo`` generates (preset
``default``, seed 0) is generated in ``benchmarks/out/htk_demo_default_0`` when missing.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "out"


def demo(root: Path, name: str, seed: int) -> Path:
    from bitro.demo import generate_demo, preset

    if not (root / "hest" / "truth" / "params.json").is_file():
        generate_demo(root, config=preset(name, seed=seed), progress=False)
    return root


def planted(root: Path) -> list[tuple[Path, np.ndarray]]:
    """(slide, planted 2 × 3 stain matrix) of every HEST and TCGA demo slide."""
    slides = []
    for cohort, folder in (("hest", "wsis"), ("tcga", "slides")):
        params = json.loads((root / cohort / "truth" / "params.json").read_text())["slides"]
        for path in sorted((root / cohort / folder).glob("*.tif")):
            key = next(k for k in params if path.stem.startswith(k))
            stain = params[key]["stain"]
            slides.append((path, np.array([stain["h_vector"], stain["e_vector"]])))
    return slides


def bench_stain(root: Path) -> dict:
    from bitro.io import open_slide
    from bitro.options import FITTED_STAIN_METHODS
    from bitro.preprocess.stain import fit_stain_model, glass_background, sample_tissue_tiles, stain_angles
    from bitro.preprocess.tissue import tissue_mask

    rows: dict[str, dict[str, list[float]]] = {m: {"h": [], "e": [], "s": []} for m in FITTED_STAIN_METHODS}
    for path, truth in planted(root):
        with open_slide(path) as slide:
            mask = tissue_mask(slide)
            tiles = sample_tissue_tiles(slide, mask, mpp=1.0, n_tiles=32, seed=0)
            background = glass_background(slide, mask)
        pixels = np.concatenate([t.reshape(-1, 3) for t in tiles])
        for method in FITTED_STAIN_METHODS:
            fit_stain_model(pixels[:20000], method=method, background=background)  # warm: imports
            t0 = time.perf_counter()
            model = fit_stain_model(pixels, method=method, background=background)  # type: ignore[arg-type]
            seconds = time.perf_counter() - t0
            h, e = stain_angles(model.matrix, truth)
            rows[method]["h"].append(float(h))
            rows[method]["e"].append(float(e))
            rows[method]["s"].append(seconds)
            print(
                f"  {path.name[:24]:24s} {method:24s} H {h:5.1f}°  E {e:5.1f}°  {seconds:6.2f} s", flush=True
            )
    summary = {
        m: {
            "h_mean": float(np.mean(r["h"])),
            "h_max": float(np.max(r["h"])),
            "e_mean": float(np.mean(r["e"])),
            "e_max": float(np.max(r["e"])),
            "seconds": float(np.mean(r["s"])),
        }
        for m, r in rows.items()
    }
    print(
        f"\nstain fits on {len(rows['vahadane']['h'])} demo slides (mean / max angle to the planted vectors)"
    )
    print("| method | H angle | E angle | s/slide fit | s vs vahadane |")
    print("| --- | --- | --- | --- | --- |")
    base = summary["vahadane"]["seconds"]
    for m, r in summary.items():
        print(
            f"| {m} | {r['h_mean']:.1f}° / {r['h_max']:.1f}° | {r['e_mean']:.1f}° / {r['e_max']:.1f}° | "
            f"{r['seconds']:.2f} | {r['seconds'] / base:.2f}× |"
        )
    return summary


def true_centroids(root: Path, sid: str) -> np.ndarray:
    import geopandas as gpd

    centroids = gpd.read_parquet(root / "hest" / "truth" / f"{sid}_cells.parquet").geometry.centroid
    return np.column_stack([centroids.x, centroids.y])


def bench_segment(root: Path) -> tuple[dict, dict]:
    from dataclasses import replace

    from bitro.io import open_slide
    from bitro.preprocess.regions import grid_shape
    from bitro.preprocess.segment import (
        ClassicalParams,
        fit_threshold,
        match_centroids,
        segment_classical,
    )
    from bitro.preprocess.stain import fit_slide_stain
    from bitro.preprocess.tissue import tissue_mask

    totals = {
        a: {"tp": 0, "found": 0, "truth": 0, "seconds": 0.0, "mpx": 0.0} for a in ("classical", "histomicstk")
    }
    segmented = {}
    for path in sorted((root / "hest" / "wsis").glob("*.tif")):
        truth = true_centroids(root, path.stem)
        with open_slide(path) as slide:
            mask = tissue_mask(slide)
            model = fit_slide_stain(slide, mask)
            base = ClassicalParams()
            threshold = fit_threshold(slide, mask, model, base)
            width, height = grid_shape(slide, base.mpp)
            mpx = width * height / 1e6
            for algorithm in totals:
                params = replace(base, algorithm=algorithm, threshold=threshold)
                t0 = time.perf_counter()
                cells = segment_classical(slide, mask, model, params=params, progress=False)
                seconds = time.perf_counter() - t0
                if algorithm == "classical":
                    segmented[path] = (model, cells)
                found, _ = match_centroids(cells[["x_px", "y_px"]].to_numpy(), truth, radius=4.0 / slide.mpp)
                t = totals[algorithm]
                t["tp"] += len(found)
                t["found"] += len(cells)
                t["truth"] += len(truth)
                t["seconds"] += seconds
                t["mpx"] += mpx
                precision, recall = len(found) / len(cells), len(found) / len(truth)
                print(
                    f"  {path.stem} {algorithm:12s} P {precision:.3f} R {recall:.3f}  "
                    f"{mpx / seconds:.2f} Mpx/s",
                    flush=True,
                )
    summary = {
        a: {
            "precision": t["tp"] / t["found"],
            "recall": t["tp"] / t["truth"],
            "f1": 2 * t["tp"] / (t["found"] + t["truth"]),
            "mpx_per_s": t["mpx"] / t["seconds"],
        }
        for a, t in totals.items()
    }
    print("\nnuclear segmentation, HEST demo slides pooled (matched one-to-one within 4 µm)")
    print("| backend | precision | recall | F1 | Mpx/s | speed vs classical |")
    print("| --- | --- | --- | --- | --- | --- |")
    for a, r in summary.items():
        ratio = r["mpx_per_s"] / summary["classical"]["mpx_per_s"]
        print(
            f"| {a} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | {r['mpx_per_s']:.2f} "
            f"| {ratio:.2f}× |"
        )
    return summary, segmented


def bench_features(root: Path, segmented: dict, n_cells: int) -> dict:
    import anndata as ad
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from bitro.features.encoders import HistomicsTKMorphologyEncoder
    from bitro.features.morphology import HandcraftedMorphology, outline_masks
    from bitro.io import open_slide
    from bitro.preprocess.crops import CropParams, CropReader
    from bitro.preprocess.segment import match_centroids
    from bitro.preprocess.stain import StainNormalizer, read_reference

    reference = read_reference(
        Path(__file__).resolve().parents[1] / "resources/stain/reference.json", "vahadane"
    )
    crops, masks, labels = [], [], []
    for path, (model, cells) in segmented.items():
        truth_cells = ad.read_h5ad(root / "hest" / "truth" / f"{path.stem}_cells.h5ad")
        truth = true_centroids(root, path.stem)
        with open_slide(path) as slide:
            found, matched = match_centroids(
                cells[["x_px", "y_px"]].to_numpy(), truth, radius=4.0 / slide.mpp
            )
            cells = cells.iloc[found].reset_index(drop=True)
            params = CropParams()
            reader = CropReader(slide, params, StainNormalizer(model, reference))
            crops.append(reader.crops(cells["x_px"].to_numpy(), cells["y_px"].to_numpy()))
            masks.append(
                outline_masks(
                    cells["x_px"], cells["y_px"], cells["geometry"], slide_mpp=slide.mpp, params=params
                )
            )
        labels.append(truth_cells.obs["cell_type"].astype(str).to_numpy()[matched])
    all_crops, all_masks, y = np.concatenate(crops), np.concatenate(masks), np.concatenate(labels)
    if len(y) > n_cells:
        keep = np.sort(np.random.default_rng(0).choice(len(y), size=n_cells, replace=False))
        all_crops, all_masks, y = all_crops[keep], all_masks[keep], y[keep]
    encoders = {"histomicstk": HistomicsTKMorphologyEncoder(), "hand-written": HandcraftedMorphology()}
    summary = {}
    for name, encoder in encoders.items():
        encoder.embed(all_crops[:64], all_masks[:64])  # warm: imports
        t0 = time.perf_counter()
        x = np.concatenate(
            [encoder.embed(all_crops[i : i + 1024], all_masks[i : i + 1024]) for i in range(0, len(y), 1024)]
        )
        seconds = time.perf_counter() - t0
        x = np.nan_to_num(x.astype(np.float64))
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        accuracy = cross_val_score(probe, x, y, cv=5, scoring="balanced_accuracy")
        summary[name] = {
            "dim": x.shape[1],
            "cells_per_s": len(y) / seconds,
            "balanced_accuracy": float(accuracy.mean()),
        }
        print(
            f"  {name}: {x.shape[1]} features, {len(y) / seconds:.0f} cells/s, "
            f"cell type {accuracy.mean():.3f}"
        )
    print(f"\nnuclear features, {len(y)} segmented cells matched to a true nucleus, {len(set(y))} cell types")
    print("| features | dim | cells/s | vs hand-written | cell-type balanced accuracy (5-fold) |")
    print("| --- | --- | --- | --- | --- |")
    for name, r in summary.items():
        ratio = r["cells_per_s"] / summary["hand-written"]["cells_per_s"]
        print(
            f"| {name} | {r['dim']} | {r['cells_per_s']:.0f} | {ratio:.2f}× | {r['balanced_accuracy']:.3f} |"
        )
    return summary


def bench_stain_for_segmentation(root: Path, factors: tuple[float, ...] = (0.8, 0.9, 1.0, 1.1, 1.2)) -> dict:
    """Classical segmentation from bitro's Vahadane and Macenko haematoxylin, over threshold factors."""
    from dataclasses import replace

    from bitro.io import open_slide
    from bitro.preprocess.segment import ClassicalParams, match_centroids, segment_classical
    from bitro.preprocess.stain import fit_slide_stain
    from bitro.preprocess.tissue import tissue_mask

    counts: dict[str, list[int]] = {}
    for path in sorted((root / "hest" / "wsis").glob("*.tif")):
        truth = true_centroids(root, path.stem)
        with open_slide(path) as slide:
            mask = tissue_mask(slide)
            for method in ("vahadane", "macenko"):
                model = fit_slide_stain(slide, mask, method=method)  # type: ignore[arg-type]
                for factor in factors:
                    params = replace(ClassicalParams(), threshold_factor=factor, polygons=False)
                    cells = segment_classical(slide, mask, model, params=params, progress=False)
                    found, _ = match_centroids(
                        cells[["x_px", "y_px"]].to_numpy(), truth, radius=4.0 / slide.mpp
                    )
                    c = counts.setdefault(f"{method} x{factor:g}", [0, 0, 0])
                    c[0], c[1], c[2] = c[0] + len(found), c[1] + len(cells), c[2] + len(truth)
    print("\nclassical segmentation from each stain model's haematoxylin, threshold = Otsu x factor")
    print("| stain, threshold factor | precision | recall | F1 |")
    print("| --- | --- | --- | --- |")
    summary = {}
    for key, (tp, found, truth) in counts.items():
        summary[key] = {"precision": tp / found, "recall": tp / truth, "f1": 2 * tp / (found + truth)}
        r = summary[key]
        print(f"| {key} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} |")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=None, help="default: benchmarks/out/htk_demo_{preset}_{seed}"
    )
    parser.add_argument("--preset", default="default", help="demo preset generated into --out when missing")
    parser.add_argument("--seed", type=int, default=0, help="demo seed (make demo's is 0)")
    parser.add_argument(
        "--feature-cells", type=int, default=8000, help="cells drawn for the feature benchmark"
    )
    parser.add_argument("--skip", default="", help="comma-separated: stain, segment, features, sweep")
    args = parser.parse_args()
    warnings.simplefilter("ignore", FutureWarning)
    skip = set(filter(None, args.skip.split(",")))
    out = args.out or OUT / f"htk_demo_{args.preset}_{args.seed}"
    root = demo(out, args.preset, args.seed)
    results = {}
    if "stain" not in skip:
        results["stain"] = bench_stain(root)
    if "sweep" not in skip:
        results["stain_for_segmentation"] = bench_stain_for_segmentation(root)
    if not {"segment", "features"} <= skip:
        results["segment"], segmented = bench_segment(root)
        if "features" not in skip:
            results["features"] = bench_features(root, segmented, args.feature_cells)
    (out / "bench_histomicstk.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
