"""Preprocessing throughput (stain fit and apply, segmentation, crops) and peak memory on a 10⁶-cell slide.

Each figure comes with a baseline measured in the same run:

- stain fit: our mini-batch Vahadane against scikit-learn's batch ``DictionaryLearning`` (the textbook
  implementation) on the same tissue pixels;
- stain apply: our normaliser against scikit-image's colour deconvolution round trip
  (``rgb2hed`` + ``hed2rgb``, fixed Ruifrok vectors) on the same pixels;
- segmentation: megapixels per second against the read-only floor (reading the same tiles and computing
  haematoxylin, no segmentation);
- crops: our tile-based reader against one ``read_region`` + resize + normalisation per cell, the way
  published pipelines cut crops;
- peak memory of preprocessing a 10⁶-cell slide (tissue, stain, units, segmentation with 2 workers,
  cell table, crops with 2 workers), the proportional set size summed over the process tree (pages
  shared between processes count once), against the 4 GiB budget and the slide's level-0 RGB raster.

Usage: ``.venv/bin/python benchmarks/bench_preprocess.py [--slide benchmarks/out/virtual_1e6.tif]
[--workers 2] [--skip-large]``; the slide is generated (``bitro virtual-slide``) when missing.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil

OUT = Path(__file__).resolve().parent / "out"

LARGE = r"""
import json, sys, time
import numpy as np
from bitro.io import open_slide
from bitro.preprocess.cells import cells_table, read_cells, write_cells
from bitro.preprocess.crops import CropParams, write_crops
from bitro.preprocess.segment import ClassicalParams, segment_classical
from bitro.preprocess.stain import StainNormalizer, fit_slide_stain, read_reference
from bitro.preprocess.tissue import tissue_mask
from bitro.preprocess.units import grid_units

path, out, workers, reference = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
times = {}
def mark(name, t0):
    times[name] = time.perf_counter() - t0
    print(json.dumps({"stage": name, "seconds": times[name], "at": time.time()}), flush=True)
with open_slide(path) as slide:
    t = time.perf_counter(); mask = tissue_mask(slide); mark("tissue", t)
    t = time.perf_counter(); model = fit_slide_stain(slide, mask); mark("stain", t)
    t = time.perf_counter(); units = grid_units(slide, size_um=55.0, mask=mask); mark("units", t)
    t = time.perf_counter()
    cells = segment_classical(slide, mask, model, params=ClassicalParams(), workers=workers,
                              checkpoint=out + "/segment-parts", progress=False)
    mark("segment", t)
    t = time.perf_counter()
    table = cells_table(cells, mpp=slide.mpp, units=units, source="classical",
                        slide_dimensions=slide.dimensions, path=path)
    del cells
    write_cells(table, out + "/cells.parquet"); mark("cells", t)
    n_cells = len(table)
    del table  # the workflow's crops rule is its own process, reading only the centroids
    t = time.perf_counter()
    xy = read_cells(out + "/cells.parquet", geometry=False)
    normalizer = StainNormalizer(model, read_reference(reference, "vahadane"))
    write_crops(slide, xy["x_px"].to_numpy(), xy["y_px"].to_numpy(), out + "/crops.zarr",
                params=CropParams(), normalizer=normalizer, workers=workers, progress=False)
    mark("crops", t)
    tissue_px = float(mask.mask.mean()) * slide.dimensions[0] * slide.dimensions[1]
    print(json.dumps({"done": True, "times": times, "n_cells": n_cells, "dimensions": slide.dimensions,
                      "tissue_megapixels": tissue_px / 1e6, "mpp": slide.mpp}), flush=True)
"""


def tree_rss(process: psutil.Process) -> int:
    """Proportional set size of a process and its descendants: shared pages are counted once."""
    total = 0
    for p in [process, *process.children(recursive=True)]:
        try:
            total += p.memory_full_info().pss
        except psutil.NoSuchProcess:
            continue
    return total


def run_large(slide: Path, workers: int) -> dict:
    """Preprocess ``slide`` in a child process, sampling the process tree's memory every 0.2 s."""
    work = OUT / "preprocess_large"
    work.mkdir(parents=True, exist_ok=True)
    reference = Path(__file__).resolve().parents[1] / "resources" / "stain" / "reference.json"
    child = subprocess.Popen(
        [sys.executable, "-c", LARGE, str(slide), str(work), str(workers), str(reference)],
        stdout=subprocess.PIPE,
        text=True,
    )
    proc = psutil.Process(child.pid)
    peaks: dict[str, int] = {}
    current = {"stage": "tissue"}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            try:
                rss = tree_rss(proc)
            except psutil.NoSuchProcess:
                return
            peaks[current["stage"]] = max(peaks.get(current["stage"], 0), rss)
            time.sleep(0.2)

    order = ["tissue", "stain", "units", "segment", "cells", "crops"]
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    result: dict = {}
    assert child.stdout is not None
    for line in child.stdout:
        record = json.loads(line)
        if "stage" in record:
            i = order.index(record["stage"])
            current["stage"] = order[min(i + 1, len(order) - 1)]
            print(f"  {record['stage']}: {record['seconds']:.1f} s", flush=True)
        else:
            result = record
    child.wait()
    stop.set()
    sampler.join()
    if child.returncode != 0:
        raise SystemExit(f"preprocessing the large slide failed ({child.returncode})")
    result["peak_rss_bytes"] = peaks
    return result


def small_benchmarks(work: Path) -> dict:
    """Throughput against baselines on a 3,000-cell virtual slide (2,200² px at 0.5 µm/px)."""
    from PIL import Image
    from skimage.color import hed2rgb, rgb2hed
    from sklearn.decomposition import DictionaryLearning

    from bitro.demo import write_virtual_slide
    from bitro.io import open_slide
    from bitro.preprocess.crops import CropParams, CropReader
    from bitro.preprocess.regions import read_at_mpp
    from bitro.preprocess.segment import ClassicalParams, haematoxylin, segment_classical, tissue_tiles
    from bitro.preprocess.stain import (
        RUIFROK,
        StainNormalizer,
        fit_stain_model,
        glass_background,
        read_reference,
        sample_tissue_tiles,
        tissue_od,
    )
    from bitro.preprocess.tissue import tissue_mask

    path = work / "bench_3000.tif"
    if not path.exists():
        write_virtual_slide(path, n_cells=3000, seed=5, progress=False)
    out: dict = {}
    with open_slide(path) as slide:
        mask = tissue_mask(slide)
        pixels = np.concatenate(sample_tissue_tiles(slide, mask, mpp=1.0))
        background = glass_background(slide, mask)
        t = time.perf_counter()
        model = fit_stain_model(pixels, method="vahadane", background=background)
        out["stain_fit_vahadane_s"] = time.perf_counter() - t
        t = time.perf_counter()
        fit_stain_model(pixels, method="macenko", background=background)
        out["stain_fit_macenko_s"] = time.perf_counter() - t
        od = tissue_od(pixels, background)
        od = od[np.random.default_rng(0).choice(len(od), 10000, replace=False)]
        t = time.perf_counter()
        DictionaryLearning(
            n_components=2,
            alpha=0.1,
            fit_algorithm="cd",
            transform_algorithm="lasso_cd",
            positive_dict=True,
            positive_code=True,
            dict_init=RUIFROK.copy(),
            code_init=np.maximum(od @ np.linalg.pinv(RUIFROK), 0.0),
            max_iter=30,
            tol=1e-4,
            random_state=0,
        ).fit(od)
        out["stain_fit_batch_dictionary_learning_s"] = time.perf_counter() - t

        image = slide.read_region((0, 0), 0, slide.dimensions)
        normalizer = StainNormalizer(
            model, read_reference(Path(__file__).parents[1] / "resources/stain/reference.json", "vahadane")
        )
        t = time.perf_counter()
        normalizer(image)
        out["stain_apply_mpx_s"] = image.shape[0] * image.shape[1] / 1e6 / (time.perf_counter() - t)
        t = time.perf_counter()
        hed2rgb(rgb2hed(image))
        out["skimage_hed_round_trip_mpx_s"] = (
            image.shape[0] * image.shape[1] / 1e6 / (time.perf_counter() - t)
        )

        params = ClassicalParams()
        tiles = tissue_tiles(slide, mask, params)
        megapixels = sum(tile.core[2] * tile.core[3] for tile in tiles) / 1e6
        t = time.perf_counter()
        cells = segment_classical(slide, mask, model, params=params, progress=False)
        out["segment_mpx_s"] = megapixels / (time.perf_counter() - t)
        t = time.perf_counter()
        segment_classical(slide, mask, model, params=ClassicalParams(polygons=False), progress=False)
        out["segment_no_outlines_mpx_s"] = megapixels / (time.perf_counter() - t)
        t = time.perf_counter()
        for tile in tiles:
            haematoxylin(read_at_mpp(slide, tile.box, params.mpp), model)
        out["read_floor_mpx_s"] = megapixels / (time.perf_counter() - t)
        out["segment_cells"] = len(cells)

        x, y = cells["x_px"].to_numpy(), cells["y_px"].to_numpy()
        t = time.perf_counter()
        CropReader(slide, CropParams(), normalizer).crops(x, y)
        out["crops_per_s"] = len(x) / (time.perf_counter() - t)
        n_naive = min(1000, len(x))
        t = time.perf_counter()
        for cx, cy in zip(x[:n_naive], y[:n_naive], strict=True):
            region = slide.read_region((int(cx) - 24, int(cy) - 24), 0, (48, 48))
            normalizer(np.asarray(Image.fromarray(region).resize((48, 48), Image.Resampling.BILINEAR)))
        out["naive_crops_per_s"] = n_naive / (time.perf_counter() - t)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slide", type=Path, default=OUT / "virtual_1e6.tif")
    parser.add_argument("--cells", type=int, default=1_000_000, help="cells of a generated slide")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--skip-large", action="store_true", help="only the throughput figures")
    args = parser.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)

    small = small_benchmarks(OUT)
    rows = [
        ("stain fit, Vahadane (mini-batch), s", small["stain_fit_vahadane_s"]),
        ("stain fit, batch DictionaryLearning (baseline), s", small["stain_fit_batch_dictionary_learning_s"]),
        (
            "speed-up over the baseline",
            small["stain_fit_batch_dictionary_learning_s"] / small["stain_fit_vahadane_s"],
        ),
        ("stain fit, Macenko, s", small["stain_fit_macenko_s"]),
        ("stain apply, Mpx/s", small["stain_apply_mpx_s"]),
        ("skimage rgb2hed + hed2rgb (baseline), Mpx/s", small["skimage_hed_round_trip_mpx_s"]),
        ("apply / baseline", small["stain_apply_mpx_s"] / small["skimage_hed_round_trip_mpx_s"]),
        ("segmentation with outlines, Mpx/s (1 process)", small["segment_mpx_s"]),
        ("segmentation without outlines, Mpx/s", small["segment_no_outlines_mpx_s"]),
        ("read + haematoxylin floor (baseline), Mpx/s", small["read_floor_mpx_s"]),
        ("segmentation / floor", small["segment_mpx_s"] / small["read_floor_mpx_s"]),
        ("crops/s, tile reader + normalisation (1 process)", small["crops_per_s"]),
        ("crops/s, one read_region per cell (baseline)", small["naive_crops_per_s"]),
        ("tile reader / baseline", small["crops_per_s"] / small["naive_crops_per_s"]),
    ]
    result = {"small": small}
    if not args.skip_large:
        if not args.slide.exists():
            subprocess.run(
                [sys.executable, "-m", "bitro.cli", "virtual-slide", "--out", str(args.slide),
                 "--cells", str(args.cells)],
                check=True,
            )  # fmt: skip
        print(f"preprocessing {args.slide} ...", flush=True)
        large = run_large(args.slide, args.workers)
        result["large"] = large
        peak = max(large["peak_rss_bytes"].values())
        w, h = large["dimensions"]
        raster = w * h * 3
        total = sum(large["times"].values())
        rows += [
            ("10⁶-cell slide: cells found", large["n_cells"]),
            ("10⁶-cell slide: tissue megapixels", large["tissue_megapixels"]),
            *[(f"10⁶-cell slide: {k} s", v) for k, v in large["times"].items()],
            ("10⁶-cell slide: total s", total),
            ("10⁶-cell slide: segmentation Mpx/s", large["tissue_megapixels"] / large["times"]["segment"]),
            ("10⁶-cell slide: crops/s", large["n_cells"] / large["times"]["crops"]),
            *[(f"peak memory (PSS) during {k}, MiB", v / 2**20) for k, v in large["peak_rss_bytes"].items()],
            ("peak memory / 4 GiB budget", peak / 2**32),
            ("peak memory / level-0 raster", peak / raster),
        ]
    (OUT / "preprocess.json").write_text(json.dumps(result, indent=2, default=str))
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        text = f"{value:,.0f}" if isinstance(value, int) else f"{value:,.2f}"
        print(f"{name:<{width}}  {text}")


if __name__ == "__main__":
    main()
