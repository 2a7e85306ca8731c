"""Predicting new slides with a model bundle: one slide end to end, and a 10⁶-cell slide in bounded memory.

Part 1 (``slide``): one demo slide (``results/demo_data/slides/DEMO_NEW01.tif`` when present, else a
3,000-cell slide rendered here with ``bitro.demo.write_virtual_slide``) predicted with the demo ST bundle
(``results/demo_st/final/bundle``) by ``bitro predict-slide``: every per-sample step in one process, its
log's seconds per stage, wall seconds and peak RSS. The baseline, in the same run, is the same slide
through the separate verbs the workflow runs for a ``format: slides`` cohort (``workflow/rules/
preprocess.smk``, ``features.smk``, ``predict.smk``, with the bundle's settings as
``predict_common.smk`` passes them): ``bitro tissue``, ``units``, ``stain``, ``cells``, ``crops``,
``embed``, ``reduce``, ``graph`` and ``predict-sample``, one process each. Both run with one worker
process and without the segmentation's own ``cells.geojson`` (``predict-slide`` does not write it).
Reported: the ratio of the two wall times, the largest peak RSS of each, and whether both give the same
predictions (``spots.h5ad`` and ``cells.h5ad`` ``X``, ``allclose``).

Part 2 (``large``): predicting and writing the outputs of a slide of ``--cells`` cells (10⁶ by default).
Embedding 10⁶ cells on a CPU takes hours, so the sample folder is synthetic, written by the library's
writers: a pyramidal TIFF of the right physical size (``bitro.demo.render.write_pyramidal_tiff``, a flat
H&E-like colour, it only feeds the thumbnails), 55 µm square patches (``grid_units`` over an all-tissue
mask, ``write_units``), about 60 cells per patch with 14-vertex outlines (``cells_table``,
``write_cells``), kNN graphs (``knn_graphs``, ``write_graph``) and float16 embeddings with an
``embeddings.json`` that matches the bundle's encoder record (as ``bitro.features.embed.embed_crops``
writes them). Each bundle (the demo ST bundle; a bulk bundle exported here from ``--bulk-model``, which
predicts the slide as one streamed bag) is applied in its own child process with the steps of
``bitro.predict.apply.apply_bundle``; each part's seconds and peak RSS come from wrappers around the
functions it calls (resident set size sampled every 20 ms; ``RssAnon``, the anonymous part, beside it,
since memory-mapped embeddings count in RSS while the kernel may drop them). The target is 4 GiB.

Every run is its own child process, so each peak is its own; the CLI children's peak RSS is
``ru_maxrss`` from ``os.wait4``.

Usage: ``.venv/bin/python benchmarks/bench_predict.py [--bundle results/demo_st/final/bundle]
[--slide results/demo_data/slides/DEMO_NEW01.tif] [--mpp 0.5] [--parts slide,large] [--cells 1000000]
[--bulk-model results/demo_bulk/fold0 | --no-bulk] [--work benchmarks/out/predict] [--out result.json]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_train
from bench_train import RESULT, RssSampler

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "out" / "predict"
BUNDLE = ROOT / "results" / "demo_st" / "final" / "bundle"
SLIDE = ROOT / "results" / "demo_data" / "slides" / "DEMO_NEW01.tif"
BULK_MODEL = ROOT / "results" / "demo_bulk" / "fold0"
MIB = 1024**2
GIB = 1024**3
TARGET_BYTES = 4 * GIB
CELLS_PER_UNIT = 60
PATCH_UM = 55.0


# ------------------------------------------------------------------------------------------ measuring
def run_measured(argv: list[str], log: Path) -> dict[str, Any]:
    """Run ``argv`` with its output to ``log``; wall seconds and the peak RSS (``os.wait4``)."""
    start = time.perf_counter()
    with log.open("w") as handle:
        child = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - start
    if child.returncode:
        sys.stderr.write(log.read_text()[-5000:])
        raise SystemExit(f"{' '.join(argv[:5])} … failed with exit status {child.returncode}")
    return {"seconds": seconds, "max_rss": usage.ru_maxrss * 1024}


def bitro(*args: Any) -> list[str]:
    return [sys.executable, "-m", "bitro.cli", *map(str, args)]


class PhaseSampler(RssSampler):
    """:class:`bench_train.RssSampler` whose phases may nest and that also keeps the peak of ``RssAnon``
    (resident pages not backed by a file: memory-mapped embeddings count in RSS, not here)."""

    def __init__(self, interval: float = 0.02) -> None:
        self.anon_peak = 0
        self.active: dict[str, list[int]] = {}
        super().__init__(interval)

    def now(self) -> int:
        rss = super().now()
        try:
            status = Path("/proc/self/status").read_text()
            anon = int(re.search(r"RssAnon:\s+(\d+) kB", status).group(1)) * 1024  # type: ignore[union-attr]
        except (OSError, AttributeError):
            anon = 0
        self.anon_peak = max(self.anon_peak, anon)
        for peaks in list(self.active.values()):
            peaks[0], peaks[1] = max(peaks[0], rss), max(peaks[1], anon)
        return rss

    @contextmanager
    def phase(self, record: dict[str, Any], name: str) -> Iterator[None]:
        """Record ``{name}_seconds``, ``{name}_rss_peak`` and ``{name}_anon_peak``; the overall peaks
        (``peak``, ``anon_peak``) are never reset."""
        self.active[name] = [0, 0]
        self.now()
        start = time.perf_counter()
        try:
            yield
        finally:
            record[f"{name}_seconds"] = time.perf_counter() - start
            self.now()
            record[f"{name}_rss_peak"], record[f"{name}_anon_peak"] = self.active.pop(name)


# ------------------------------------------------------------------------------------------ part 1
def stage_seconds(log: str) -> dict[str, float]:
    """``predict-slide``'s ``[i/9] slide: stage done in x s`` lines."""
    return {m[1]: float(m[2]) for m in re.finditer(r"\[\d+/\d+\] [^:]+: (\w+) done in ([\d.]+) s", log)}


def per_step_commands(bundle: Path, root: Path, sample: str, folder: Path, out: Path, mpp: float | None):
    """The workflow's per-sample verbs for a ``format: slides`` sample, with the bundle's settings."""
    record = json.loads((bundle / "bundle.json").read_text())
    settings, encoder = record["settings"], record["encoder"]
    tissue, units, stain = settings["tissue"], settings["units"], settings["stain"]
    seg, crops, features = settings["segmentation"], settings["crops"], settings["features"]
    names = ["--format", "slides", "--root", root, "--sample", sample] + (["--mpp", mpp] if mpp else [])
    f = {name: folder / name for name in ("tissue.npz", "units.parquet", "stain.json", "cells.parquet")}
    graph_k = features["graph_k"]
    return [
        ("tissue", bitro("tissue", *names, "--mask-mpp", tissue["mask_mpp"],
                         "--geojson", folder / "tissue.geojson", "--out", f["tissue.npz"])),
        ("units", bitro("units", *names, "--tissue", f["tissue.npz"], "--patch-size-um",
                        units["patch_size_um"], "--min-tissue-fraction", units["min_tissue_fraction"],
                        "--out", f["units.parquet"])),
        ("stain", bitro("stain", *names, "--tissue", f["tissue.npz"], "--reference",
                        bundle / "stain_reference.json", "--method", encoder["stain_method"],
                        "--fit-mpp", stain["fit_mpp"], "--n-tiles", stain["n_tiles"],
                        "--out", f["stain.json"])),
        ("cells", bitro("cells", *names, "--tissue", f["tissue.npz"], "--units", f["units.parquet"],
                        "--backend", "classical", "--stain", f["stain.json"], "--segment-mpp", seg["mpp"],
                        "--min-area-um2", seg["min_area_um2"], "--max-area-um2", seg["max_area_um2"],
                        "--min-distance-um", seg["min_distance_um"],
                        "--threshold-factor", seg["threshold_factor"], "--core-factor", seg["core_factor"],
                        *([] if seg["polygons"] else ["--no-polygons"]),
                        "--workers", 1, "--out", f["cells.parquet"])),
        ("crops", bitro("crops", *names, "--cells", f["cells.parquet"], "--stain", f["stain.json"],
                        "--size", crops["size"], "--crop-mpp", crops["mpp"], "--workers", 1, "--quiet",
                        "--out", folder / "crops.zarr")),
        ("embeddings", bitro("embed", "--mode", "crop", "--crops", folder / "crops.zarr",
                             "--encoder", encoder["name"], "--image-size", features["image_size"],
                             "--pooling", features["pooling"], "--batch-size", features["batch_size"],
                             "--device", "cpu", "--quiet", "--out", folder / "embeddings.npy")),
        ("features", bitro("reduce", "--embeddings", folder / "embeddings.npy",
                           "--n-components", features["n_components"], "--out", folder / "features.npy")),
        ("graph", bitro("graph", "--cells", f["cells.parquet"], "--k", graph_k,
                        "--out", folder / "graph.npz")),
        ("predict", bitro("predict-sample", "--bundle", bundle, "--sample-dir", folder, *names,
                          "--n-genes", 6, "--out-dir", out)),
    ]  # fmt: skip


def compare_h5ad(a: Path, b: Path) -> dict[str, Any]:
    import anndata as ad

    x, y = (np.asarray(ad.read_h5ad(p).X, dtype=np.float64) for p in (a, b))
    same_shape = x.shape == y.shape
    return {
        "shape": list(x.shape),
        "allclose": bool(same_shape and np.allclose(x, y, rtol=1e-5, atol=1e-6, equal_nan=True)),
        "max_abs_difference": float(np.nanmax(np.abs(x - y))) if same_shape else None,
    }


def part_slide(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    slides = work / "slides"
    slides.mkdir(exist_ok=True)
    source = args.slide
    if source is None:
        if SLIDE.is_file():
            source = SLIDE
        else:
            from bitro.demo import write_virtual_slide

            source = work / "VIRTUAL3000.tif"
            if not source.is_file():
                write_virtual_slide(source, n_cells=3000, seed=0, progress=False)
    sample = source.stem
    slide = slides / source.name
    if not slide.exists():
        slide.symlink_to(source.resolve())
    one, steps = work / "one_process", work / "per_step"
    for folder in (one, steps):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir()
    mpp = ["--mpp", args.mpp] if args.mpp else []
    print(f"predict-slide on {source} …", flush=True)
    log = one / "predict-slide.log"
    single = run_measured(
        bitro("predict-slide", "--bundle", args.bundle, "--slide", slide, *mpp, "--workers", 1, "--quiet",
              "--out", one / "predictions"),
        log,
    )  # fmt: skip
    single["stages"] = stage_seconds(log.read_text())
    cells_line = re.search(r": (\d+) cells \((\d+) in a patch\)", log.read_text())
    single["cells"] = int(cells_line[1]) if cells_line else None
    print(f"  {single['seconds']:.1f} s, {single['max_rss'] / MIB:,.0f} MiB", flush=True)
    folder = steps / "sample"
    folder.mkdir()
    per_step: dict[str, dict[str, Any]] = {}
    for name, argv in per_step_commands(args.bundle, slides, sample, folder, steps / "predictions", args.mpp):
        per_step[name] = run_measured(argv, steps / f"{name}.log")
        print(f"  bitro {argv[3]}: {per_step[name]['seconds']:.1f} s", flush=True)
    return {
        "slide": str(source),
        "one_process": single,
        "per_step": per_step,
        "spots": compare_h5ad(one / "predictions" / "spots.h5ad", steps / "predictions" / "spots.h5ad"),
        "cells_h5ad": compare_h5ad(one / "predictions" / "cells.h5ad", steps / "predictions" / "cells.h5ad"),
    }


def slide_table(r: dict[str, Any]) -> str:
    single, steps = r["one_process"], r["per_step"]
    total = sum(s["seconds"] for s in steps.values())
    lines = [
        "| stage | `predict-slide` (one process): log s | per-step verbs: wall s | per-step peak RSS |",
        "| --- | --- | --- | --- |",
    ]
    for name, step in steps.items():
        own = single["stages"].get(name)
        lines.append(
            f"| {name} | {'' if own is None else f'{own:.1f}'} | {step['seconds']:.1f} | "
            f"{step['max_rss'] / MIB:,.0f} MiB |"
        )
    peak = max(s["max_rss"] for s in steps.values())
    lines += [
        f"| **total (wall)** | **{single['seconds']:.1f}** | **{total:.1f}** | |",
        f"| peak RSS | {single['max_rss'] / MIB:,.0f} MiB | {peak / MIB:,.0f} MiB (largest step) | |",
    ]
    return "\n".join(lines) + (
        f"\n\nslide {r['slide']}, {single['cells']} cells; one process / per-step wall time "
        f"{single['seconds'] / total:.2f} (per-step / one process {total / single['seconds']:.2f}×); "
        f"same predictions: spots.h5ad X {r['spots']['shape']} allclose {r['spots']['allclose']} "
        f"(max |difference| {r['spots']['max_abs_difference']:.1e}), cells.h5ad X "
        f"{r['cells_h5ad']['shape']} allclose {r['cells_h5ad']['allclose']} "
        f"(max |difference| {r['cells_h5ad']['max_abs_difference']:.1e})"
    )


# ------------------------------------------------------------------------------------------ part 2
def build_sample(spec: dict[str, Any]) -> dict[str, Any]:
    """Write the synthetic sample folder and slide of ``spec["cells"]`` cells (module docstring)."""
    import shapely

    from bitro.demo.render import write_pyramidal_tiff
    from bitro.features.graph import knn_graphs, write_graph
    from bitro.io import open_slide
    from bitro.preprocess.cells import cells_table, write_cells
    from bitro.preprocess.tissue import TissueMask
    from bitro.preprocess.units import grid_units, write_units

    folder, mpp, n_cells = Path(spec["folder"]), 0.5, int(spec["cells"])
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    side_units = math.ceil(math.sqrt(n_cells / CELLS_PER_UNIT))
    size_px = round(side_units * PATCH_UM / mpp)
    slide_path = Path(spec["slide"])
    colour = np.array([228, 170, 200], np.uint8)

    def render(x0: int, y0: int, w: int, h: int) -> np.ndarray:
        return np.broadcast_to(colour, (h, w, 3)).copy()

    write_pyramidal_tiff(slide_path, render, size_px, size_px, mpp=mpp)
    with open_slide(slide_path) as slide:
        scale = 8.0 / mpp
        mask = TissueMask(
            mask=np.ones((math.ceil(size_px / scale),) * 2, bool), mpp=8.0, slide_mpp=mpp, threshold_od=0.0
        )
        units = grid_units(slide, size_um=PATCH_UM, mask=mask)
        dimensions = slide.dimensions
    write_units(units, folder / "units.parquet")
    # Cells uniform within patches, nuclei as 14-vertex ellipses of 2.5–4.5 µm radii (the classical
    # segmenter's simplified outlines have a median of 14 vertices on the demo slide).
    unit = rng.integers(0, len(units), n_cells)
    half = PATCH_UM / mpp / 2
    corner = units[["x_px", "y_px"]].to_numpy(np.float64)[unit] - half
    xy = corner + rng.uniform(0.5, 2 * half - 0.5, (n_cells, 2))
    angles = np.linspace(0, 2 * np.pi, 15)[None, :]
    radii = rng.uniform(2.5, 4.5, (n_cells, 2)) / mpp
    turn = rng.uniform(0, np.pi, (n_cells, 1))
    dx, dy = radii[:, :1] * np.cos(angles), radii[:, 1:] * np.sin(angles)
    ring = np.stack(
        [
            xy[:, :1] + dx * np.cos(turn) - dy * np.sin(turn),
            xy[:, 1:] + dx * np.sin(turn) + dy * np.cos(turn),
        ],
        axis=-1,
    )
    ring[:, -1] = ring[:, 0]
    polygons = shapely.polygons(ring)
    del ring, dx, dy
    found = {"x_px": xy[:, 0], "y_px": xy[:, 1], "geometry": shapely.to_wkb(polygons)}
    found["area_um2"] = shapely.area(polygons) * mpp * mpp
    del polygons
    import pandas as pd

    table = cells_table(
        pd.DataFrame(found), mpp=mpp, units=units, source="classical", slide_dimensions=dimensions,
        path=folder / "cells.parquet",
    )  # fmt: skip
    del found
    write_cells(table, folder / "cells.parquet")
    graph = knn_graphs(table["x_um"], table["y_um"], table["unit_id"], k=8)
    write_graph(graph, folder / "graph.npz")
    # Embeddings as embed_crops writes them: float16 (n, dim) and the description of the bundle's encoder.
    encoder = dict(spec["encoder"])
    dim = int(encoder["dim"])
    path = folder / "embeddings.npy"
    target = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n_cells, dim))
    centres = rng.standard_normal((16, dim)).astype(np.float32)
    for start in range(0, n_cells, 65_536):
        stop = min(n_cells, start + 65_536)
        pick = rng.integers(0, 16, stop - start)
        block = centres[pick] + 0.5 * rng.standard_normal((stop - start, dim), dtype=np.float32)
        target[start:stop] = np.maximum(block, 0).astype(np.float16)
    target.flush()
    del target
    describe = {
        "encoder": encoder["name"],
        "weights_sha256": encoder["weights_sha256"],
        "dim": dim,
        "mode": encoder.get("mode", "crop"),
        "crop_size": encoder["crop_size"],
        "mpp": encoder["mpp"],
        "stain_method": encoder.get("stain_method"),
        "n_cells": n_cells,
        "dtype": "float16",
        "image_size": encoder.get("image_size"),
        "pooling": encoder.get("pooling"),
    }
    (folder / "embeddings.json").write_text(json.dumps(describe, indent=2) + "\n")
    sizes = np.bincount(table["unit_id"].to_numpy()[table["unit_id"].to_numpy() >= 0])
    return {
        "cells": n_cells,
        "units": len(units),
        "mean_cells_per_unit": float(sizes.mean()),
        "slide_px": list(dimensions),
        "slide_mb": slide_path.stat().st_size / 1e6,
        "embeddings_mb": path.stat().st_size / 1e6,
        "cells_parquet_mb": (folder / "cells.parquet").stat().st_size / 1e6,
    }


def child_build(spec: dict[str, Any]) -> dict[str, Any]:
    start = time.perf_counter()
    out = build_sample(spec)
    out["seconds"] = time.perf_counter() - start
    return out


def child_apply(spec: dict[str, Any]) -> dict[str, Any]:
    """apply_bundle's steps on the large sample, each part timed with its peak RSS."""
    import bitro.predict.apply as apply_module
    import bitro.predict.slide as slide_module
    from bitro.bundle import chosen_genes, load_bundle

    sampler = PhaseSampler()
    out: dict[str, Any] = {"rss_start": sampler.now()}
    folder, target = Path(spec["folder"]), Path(spec["out"])
    shutil.rmtree(target, ignore_errors=True)
    start = time.perf_counter()
    with sampler.phase(out, "load"):
        bundle = load_bundle(spec["bundle"])
        chosen = chosen_genes(bundle, None, 6)
        apply_module.check_sample_features(bundle, folder)
    with sampler.phase(out, "predict"):
        prediction = apply_module.predict_with_bundle(bundle, folder, sample_id="LARGE")
    out["predicted_cells"] = len(prediction.cell_rows)
    out["predicted_units"] = len(prediction.unit_ids)
    out["trained_level"] = bundle.trained_level
    out["genes"] = len(bundle.genes)

    def timed(module: Any, name: str, phase: str) -> Callable[[], None]:
        original = getattr(module, name)

        def wrapper(*a: Any, **k: Any) -> Any:
            with sampler.phase(out, phase):
                return original(*a, **k)

        setattr(module, name, wrapper)
        return lambda: setattr(module, name, original)

    restore = [
        timed(apply_module, "read_cells", "read_cells"),
        timed(slide_module, "visium_images", "thumbnails"),
        timed(slide_module, "write_spots", "spots_h5ad"),
        timed(slide_module, "write_cells", "cells_h5ad"),
        timed(slide_module, "write_cells_qupath", "cells_geojson"),
        timed(slide_module, "write_heatmaps", "maps"),
        timed(apply_module, "write_bulk_table", "profile"),
    ]
    try:
        with sampler.phase(out, "write"):
            apply_module.write_bundle_prediction(
                bundle, prediction, folder, target, slide=spec["slide"], mpp=0.5, chosen=chosen
            )
    finally:
        for undo in restore:
            undo()
    out["seconds"] = time.perf_counter() - start
    sampler.stop()
    out["peak_rss"], out["peak_anon"] = max(sampler.peak, sampler.now()), sampler.anon_peak
    out["files_mb"] = {p.name: p.stat().st_size / 1e6 for p in sorted(target.iterdir()) if p.is_file()}
    return out


CHILDREN: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {"build": child_build, "apply": child_apply}


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one part of this benchmark in a fresh interpreter (:func:`bench_train.run_child`)."""
    return bench_train.run_child(spec, script=__file__)


def export_bulk_bundle(model_dir: Path, work: Path) -> Path:
    """A bundle of the demo bulk model (``bitro export-model``; settings and cohort are minimal)."""
    out = work / "bundle_bulk"
    if (out / "bundle.json").is_file():
        return out
    samples = model_dir.parent / "samples"
    description = next(iter(sorted(samples.glob("*/embeddings.json"))))
    cohort = {"name": model_dir.parent.name, "level": "bulk"}
    run_measured(
        bitro("export-model", "--model-dir", model_dir, "--basis", model_dir / "pca.npz",
              "--stain-reference", ROOT / "resources" / "stain" / "reference.json",
              "--embeddings-description", description, "--settings-json", "{}",
              "--cohort-json", json.dumps(cohort), "--out", out, "--no-zip"),
        work / "export-model.log",
    )  # fmt: skip
    return out


def part_large(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    folder, slide = work / f"sample_{args.cells}", work / f"slide_{args.cells}.tif"
    encoder = json.loads((args.bundle / "bundle.json").read_text())["encoder"]
    stamp = folder / "build.json"
    if stamp.is_file() and json.loads(stamp.read_text()).get("encoder") == encoder:
        build = json.loads(stamp.read_text())["build"]
        print(f"reusing {folder}", flush=True)
    else:
        print(f"building a {args.cells:,}-cell sample in {folder} …", flush=True)
        build = run_child(
            {
                "part": "build",
                "folder": str(folder),
                "slide": str(slide),
                "cells": args.cells,
                "encoder": encoder,
            }
        )
        stamp.write_text(json.dumps({"encoder": encoder, "build": build}))
    bundles = {"st": args.bundle}
    if not args.no_bulk and args.bulk_model and (args.bulk_model / "model.json").is_file():
        bundles["bulk"] = export_bulk_bundle(args.bulk_model, work)
    runs = {}
    for name, bundle in bundles.items():
        print(f"applying the {name} bundle {bundle} …", flush=True)
        runs[name] = run_child(
            {
                "part": "apply",
                "bundle": str(bundle),
                "folder": str(folder),
                "slide": str(slide),
                "out": str(work / f"predictions_{name}"),
            }
        )
        print(
            f"  {runs[name]['seconds']:.1f} s, peak RSS {runs[name]['peak_rss'] / MIB:,.0f} MiB", flush=True
        )
    return {"build": build, "runs": runs}


PARTS = [
    ("load", "load bundle, check embeddings.json"),
    ("predict", "features (PCA projection), graph, model: units + pseudo-cells"),
    ("read_cells", "read cells.parquet with outlines"),
    ("thumbnails", "slide thumbnails (hires, lowres)"),
    ("spots_h5ad", "spots.h5ad"),
    ("cells_h5ad", "cells.h5ad"),
    ("cells_geojson", "cells.geojson (QuPath)"),
    ("maps", "maps/{gene}.png"),
    ("profile", "profile.tsv"),
]


def large_table(r: dict[str, Any]) -> str:
    b, runs = r["build"], r["runs"]
    names = list(runs)
    head = "| part | " + " | ".join(f"{n} bundle: s | peak RSS (anon)" for n in names) + " |"
    lines = [head, "|" + " --- |" * (1 + 2 * len(names))]
    for key, label in PARTS:
        cells = []
        for n in names:
            run = runs[n]
            if f"{key}_seconds" in run:
                cells += [
                    f"{run[f'{key}_seconds']:.1f}",
                    f"{run[f'{key}_rss_peak'] / MIB:,.0f} ({run[f'{key}_anon_peak'] / MIB:,.0f}) MiB",
                ]
            else:
                cells += ["", ""]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    total = []
    for n in names:
        run = runs[n]
        total += [
            f"**{run['seconds']:.1f}**",
            f"**{run['peak_rss'] / MIB:,.0f} MiB = {run['peak_rss'] / TARGET_BYTES:.2f} of 4 GiB** "
            f"(anon {run['peak_anon'] / MIB:,.0f})",
        ]
    lines.append("| **total** | " + " | ".join(total) + " |")
    notes = [
        f"sample: {b['cells']:,} cells in {b['units']:,} patches of 55 µm ({b['mean_cells_per_unit']:.1f} "
        f"cells each), slide {b['slide_px'][0]:,}² px at 0.5 µm/px ({b['slide_mb']:.0f} MB), embeddings "
        f"{b['embeddings_mb']:,.0f} MB (float16), cells.parquet {b['cells_parquet_mb']:.0f} MB; built in "
        f"{b['seconds']:.0f} s"
    ]
    for n in names:
        run = runs[n]
        files = ", ".join(f"{k} {v:,.0f} MB" for k, v in run["files_mb"].items())
        notes.append(
            f"{n} bundle ({run['trained_level']}, {run['genes']} genes): {run['predicted_units']:,} units, "
            f"{run['predicted_cells']:,} cells predicted; RSS at start {run['rss_start'] / MIB:,.0f} MiB; "
            f"files: {files}"
        )
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes)


# ------------------------------------------------------------------------------------------ main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=BUNDLE, help="an ST bundle folder")
    parser.add_argument("--slide", type=Path, default=None, help="part 1's slide (default: the demo's)")
    parser.add_argument("--mpp", type=float, default=None, help="the slide's µm per pixel if it has none")
    parser.add_argument("--parts", default="slide,large")
    parser.add_argument("--cells", type=int, default=1_000_000, help="cells of part 2's slide")
    parser.add_argument("--bulk-model", type=Path, default=BULK_MODEL, help="a bulk model folder to export")
    parser.add_argument("--no-bulk", action="store_true", help="part 2: only the ST bundle")
    parser.add_argument("--work", type=Path, default=OUT, help="scratch folder")
    parser.add_argument("--out", type=Path, default=None, help="also write every figure to this JSON file")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        print(RESULT + json.dumps(CHILDREN[spec.pop("part")](spec)), flush=True)
        return
    args.bundle = args.bundle.resolve()
    parts = set(args.parts.split(","))
    record: dict[str, Any] = {"argv": sys.argv[1:]}
    print(f"# bench_predict on CPU ({os.cpu_count()} cores), {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}\n", flush=True)
    if "slide" in parts:
        record["slide"] = part_slide(args, args.work / "slide")
        print("\n## One slide: `bitro predict-slide` against the per-sample verbs\n")
        print(slide_table(record["slide"]) + "\n", flush=True)
    if "large" in parts:
        record["large"] = part_large(args, args.work / "large")
        print(f"\n## Predicting a {args.cells:,}-cell slide (apply_bundle's steps, one child per bundle)\n")
        print(large_table(record["large"]), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=1, default=str))


if __name__ == "__main__":
    main()
