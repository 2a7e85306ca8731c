"""Encoder throughput, crop mode and tile-token mode: cells/s per encoder, mode and batch size.

Crop mode runs the encoder on every cell's crop (``--image-sizes``, the crops resized from 48 px). Tile-token
mode (``bitro.features.tokens``) runs it once per tile of ``--tile-size`` + 2 × ``--tile-margin`` px and
pools the tokens under each nucleus. Both are timed on the encoder alone (crops or tiles already in
memory; for tile-token the footprint pooling is included), and tile-token mode also end to end with
``embed_tiles`` on a synthetic JPEG slide (reading, stain normalisation, footprints, forward, pooling and
the memory-mapped output, with ``--loader-workers`` reading ahead). Cells are placed at random at
``--cells-per-mm2`` (4,000 by default: about the demo's density; breast-cancer sections range roughly from
2,000 to 8,000 nuclei/mm²) with 16-vertex elliptical outlines of 20–80 µm².

The crop-mode baseline is a dense matrix product measured in the same run on the same device and dtype:
the FLOP rate an encoder reaches is reported as a fraction of it (issue 4's target for the ViT in bf16:
≥ 30 %). FLOPs come from ``torch.utils.flop_counter`` on one forward pass (per tile for tile-token mode,
divided by the cells a tile serves). DINOv3 ViT-L/16 is built from its published configuration with random
weights, which costs the same as the real ones, so the figure needs no download; pass ``--weights`` to time
a real checkpoint instead. The tile-token speed-up is its encoder-only cells/s over the best crop-mode
cells/s of the same encoder at the first of ``--image-sizes`` (issue 4's target for the ViT: ≥ 10×).

Usage: ``.venv/bin/python benchmarks/bench_encoders.py [--device cpu|cuda] [--quick]
[--modes crop,tile-token] [--encoders dinov3_vitl16,efficientnet_lite0,morphology] [--image-sizes 224,48]
[--batch-sizes 8,32] [--tile-batches 1,4] [--tiles 4]``. ``--quick`` shrinks every count (CPU: a few
minutes; a GPU: well under 3 minutes including building ViT-L). On a GPU node, ``--device cuda`` records
the GPU's name beside the figures; the sizes default to GPU-sized counts there.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import shapely
import torch
from torch.utils.flop_counter import FlopCounterMode

OUT = Path(__file__).resolve().parent / "out"

#: DINOv3 ViT-L/16 (facebook/dinov3-vitl16-pretrain-lvd1689m config.json).
VITL16 = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 24,
    "num_attention_heads": 16,
    "patch_size": 16,
    "num_register_tokens": 4,
    "layerscale_value": 1e-5,
    "rope_theta": 100.0,
}


def matmul_peak(device: str, dtype: torch.dtype, size: int = 2048, seconds: float = 2.0) -> float:
    """FLOP/s of repeated size × size matrix products."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    synchronize(device)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        n += 1
    synchronize(device)
    return 2 * size**3 * n / (time.perf_counter() - start)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def best_rate(run: Callable[[], object], cells: int, device: str, repeats: int) -> float:
    """Cells per second of the fastest of ``repeats`` runs (the least disturbed on a shared machine)."""
    best = math.inf
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        run()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return cells / best


def build(name: str, device: str, weights: Path | None, image_size: int):
    from bitro.features.encoders import DINOv3Encoder, load_encoder

    if name == "dinov3_vitl16" and weights is None:
        import tempfile

        from transformers import DINOv3ViTConfig, DINOv3ViTModel

        folder = Path(tempfile.mkdtemp(prefix="vitl16_"))
        DINOv3ViTModel(DINOv3ViTConfig(**VITL16)).save_pretrained(folder)
        return DINOv3Encoder(folder, image_size=image_size, device=device)
    return load_encoder(name, weights=weights, image_size=image_size, device=device)


def flops_per_cell(encoder: object, image_size: int) -> float:
    model = getattr(encoder, "model", None)
    if model is None:
        return float("nan")
    from bitro.features.encoders import preprocess

    x = preprocess(np.zeros((1, 48, 48, 3), np.uint8), image_size).to(next(model.parameters()).device)
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model.features(x) if hasattr(model, "features") else model(pixel_values=x)
    return float(counter.get_total_flops())


def flops_per_tile(tokens: object, side: int) -> float:
    """FLOPs of one tile-token forward on a ``side``-px tile."""
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        tokens.tokens(np.zeros((1, side, side, 3), np.uint8))
    return float(counter.get_total_flops())


def synthetic_slide(folder: Path, side: int, mpp: float, seed: int = 0) -> Path:
    """A ``side``² px H&E-coloured tiled TIFF (one level) at ``mpp`` µm/px."""
    import tifffile

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    channels = []
    for base in (200.0, 120.0, 170.0):
        fx, fy, phase = rng.uniform(0.005, 0.02), rng.uniform(0.005, 0.02), rng.uniform(0, 6.3)
        channels.append(base + 45.0 * np.sin(fx * xx + phase) * np.cos(fy * yy))
    image = np.stack(channels, axis=-1) + rng.normal(0, 12, (side, side, 3))
    image = np.clip(image, 0, 255).astype(np.uint8)
    path = folder / "bench_tiles.tif"
    res = 1e4 / mpp
    try:  # JPEG, as scanners write, where imagecodecs is installed; else deflate (Python's zlib)
        import imagecodecs  # noqa: F401

        compression = "jpeg"
    except ImportError:
        compression = "zlib"
    print(f"synthetic slide: {side}² px, {compression} tiles", flush=True)
    with tifffile.TiffWriter(path, bigtiff=True) as writer:
        writer.write(
            image,
            tile=(256, 256),
            compression=compression,
            photometric="rgb",
            resolution=(res, res),
            resolutionunit="CENTIMETER",
            metadata=None,
        )
    return path


def synthetic_cells(side: int, mpp: float, per_mm2: float, seed: int = 0) -> pd.DataFrame:
    """Cells at random over a ``side``² px slide: centroids, 16-vertex elliptical outlines (WKB), areas."""
    rng = np.random.default_rng(seed)
    n = round(per_mm2 * (side * mpp / 1000.0) ** 2)
    x, y = rng.uniform(0, side, n), rng.uniform(0, side, n)
    area_um2 = rng.uniform(20, 80, n)
    ratio = rng.uniform(1.0, 2.0, n)
    ry = np.sqrt(area_um2 / (np.pi * ratio)) / mpp
    rx = ry * ratio
    t = np.linspace(0, 2 * np.pi, 17)
    t[-1] = 0.0
    angle = rng.uniform(0, np.pi, n)[:, None]
    px, py = rx[:, None] * np.cos(t), ry[:, None] * np.sin(t)
    coords = np.stack(
        [
            x[:, None] + np.cos(angle) * px - np.sin(angle) * py,
            y[:, None] + np.sin(angle) * px + np.cos(angle) * py,
        ],
        axis=-1,
    )
    geometry = shapely.to_wkb(shapely.polygons(coords))
    return pd.DataFrame({"x_px": x, "y_px": y, "area_um2": area_um2, "geometry": list(geometry)})


def tile_rows(args: argparse.Namespace, name: str, encoder: object, folder: Path, peaks: dict) -> list[dict]:
    """Tile-token rows: encoder + pooling on tiles in memory per batch, then ``embed_tiles`` end to end."""
    from bitro.features.tokens import (
        Footprints,
        TilePlan,
        embed_tiles,
        part_weights,
        pool_part,
        token_encoder,
    )
    from bitro.io.slides import open_slide
    from bitro.preprocess.crops import CropParams, CropReader
    from bitro.preprocess.regions import grid_shape
    from bitro.preprocess.stain import StainNormalizer, read_reference

    tokens = token_encoder(encoder)
    mpp, tile, margin = 0.5, args.tile_size, args.tile_margin
    side = tile + 2 * margin
    per_side = math.ceil(math.sqrt(args.tiles))
    slide_path = folder / "bench_tiles.tif"
    if not slide_path.exists():
        synthetic_slide(folder, per_side * tile, mpp)
    cells = synthetic_cells(per_side * tile, mpp, args.cells_per_mm2)
    reference = read_reference(
        Path(__file__).resolve().parents[1] / "resources/stain/reference.json", "vahadane"
    )
    normalizer = StainNormalizer(reference, reference)  # a full unmix and re-mix: the real cost
    grid = tokens.grid(side)
    bf16 = bool(getattr(encoder, "bf16", False))
    flops = flops_per_tile(tokens, side)
    rows = []
    with open_slide(slide_path) as slide:
        xy = cells[["x_px", "y_px"]].to_numpy()
        plan = TilePlan.build(xy[:, 0], xy[:, 1], grid_shape(slide, mpp), tile)
        footprints = Footprints.from_cells(cells, slide.mpp)
        reader = CropReader(slide, CropParams(mpp=mpp), normalizer)
        start = time.perf_counter()
        origins = plan.tiles * tile - margin
        pixels = np.stack([reader.region((int(x), int(y), side, side)) for x, y in origins])
        read_s = time.perf_counter() - start
        rows_in = plan.order
        start = time.perf_counter()
        per_tile = np.diff(plan.start)
        local = xy[rows_in] - np.repeat(origins, per_tile, axis=0)
        owner, token, weight = part_weights(local, rows_in, footprints, grid, 1.0)
        footprint_s = time.perf_counter() - start
        item = {
            "pixels": pixels,
            "per_tile": per_tile,
            "owner": owner,
            "token": token,
            "weight": weight.astype(np.float32),
        }
        n_cells, n_tiles = len(cells), len(plan.tiles)
        print(
            f"tile-token {name}: {n_tiles} tiles of {side} px, {n_cells} cells ({n_cells / n_tiles:.0f} per "
            f"tile); read + normalise {n_tiles / read_s:.1f} tiles/s, footprints {n_cells / footprint_s:,.0f}"
            " cells/s (one process)",
            flush=True,
        )
        for batch in (int(b) for b in args.tile_batches.split(",")):
            warm = {**item, "pixels": pixels[:batch], "per_tile": per_tile[:batch]}
            pool_part(tokens, grid, warm, batch)  # warm-up
            rate = best_rate(
                lambda b=batch: pool_part(tokens, grid, item, b), n_cells, args.device, args.repeats
            )
            rows.append(row(name, "tile-token", side, batch, bf16, rate, flops * n_tiles / n_cells, peaks))
            print(json.dumps(rows[-1]), flush=True)
        outputs, times = [], []
        for run in range(2):  # twice: the faster counts, and the two outputs must be identical
            outputs.append(folder / f"{name}_tiles{run}.npy")
            start = time.perf_counter()
            embed_tiles(
                slide,
                cells,
                normalizer,
                encoder,
                outputs[-1],
                mpp=mpp,
                tile_px=tile,
                margin_px=margin,
                batch_tiles=max(int(b) for b in args.tile_batches.split(",")),
                part_tiles=args.part_tiles,
                loader_workers=args.loader_workers,
                progress=False,
            )
            synchronize(args.device)
            times.append(time.perf_counter() - start)
        rate = n_cells / min(times)
        deterministic = bool(np.array_equal(np.load(outputs[0]), np.load(outputs[1])))
    best = max(int(b) for b in args.tile_batches.split(","))
    rows.append(row(name, "tile-token end-to-end", side, best, bf16, rate, flops * n_tiles / n_cells, peaks))
    rows[-1] |= {"deterministic": deterministic, "loader_workers": args.loader_workers}
    print(json.dumps(rows[-1]), flush=True)
    return rows


def row(
    name: str, mode: str, size: int, batch: int, bf16: bool, rate: float, flops: float, peaks: dict
) -> dict:
    peak = peaks[torch.bfloat16 if bf16 else torch.float32]
    return {
        "encoder": name,
        "mode": mode,
        "image_size": size,
        "batch": batch,
        "dtype": "bf16" if bf16 else "fp32",
        "cells_per_s": rate,
        "gflop_per_cell": flops / 1e9,
        "achieved_tflop_s": rate * flops / 1e12,
        "fraction_of_matmul_peak": rate * flops / peak,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="small counts: a few minutes on CPU")
    parser.add_argument("--modes", default="crop,tile-token")
    parser.add_argument("--encoders", default="dinov3_vitl16,efficientnet_lite0,morphology")
    parser.add_argument("--cells", type=int, default=None, help="crop mode: cells timed per setting")
    parser.add_argument("--batch-sizes", default=None, help="crop mode: crops per call")
    parser.add_argument("--image-sizes", "--image-size", default="224", help="crop mode: input sides")
    parser.add_argument("--tiles", type=int, default=None, help="tile-token mode: tiles timed")
    parser.add_argument("--tile-batches", default=None, help="tile-token mode: tiles per call")
    parser.add_argument("--tile-size", type=int, default=512)
    parser.add_argument("--tile-margin", type=int, default=64)
    parser.add_argument("--part-tiles", type=int, default=16, help="tile-token end to end: tiles per part")
    parser.add_argument("--cells-per-mm2", type=float, default=4000.0)
    parser.add_argument("--loader-workers", type=int, default=None, help="tile-token end to end")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per setting; the best counts")
    parser.add_argument("--weights", type=Path, default=None, help="real DINOv3 weights (a directory)")
    parser.add_argument("--out", type=Path, default=OUT / "encoders.json")
    args = parser.parse_args()
    gpu = args.device.startswith("cuda")
    # Counts: (cells, crop batches, tiles, tile batches) for CPU / GPU, full / quick.
    sizes = {
        (False, False): (64, "8,32", 4, "1,4"),
        (False, True): (16, "8,16", 4, "1,2"),
        (True, False): (4096, "64,256,1024", 64, "4,16,32"),
        (True, True): (1024, "64,256", 32, "4,16"),
    }[(gpu, args.quick)]
    args.cells = args.cells or sizes[0]
    args.batch_sizes = args.batch_sizes or sizes[1]
    args.tiles = args.tiles or sizes[2]
    args.tile_batches = args.tile_batches or sizes[3]
    args.repeats = args.repeats or (2 if args.quick else 3)
    if args.loader_workers is None:
        args.loader_workers = max(1, min(8, (os.cpu_count() or 2) - 1)) if gpu else 1
    modes = args.modes.split(",")

    device_name = torch.cuda.get_device_name(0) if gpu else "CPU"
    threads = torch.get_num_threads()
    peaks = {dtype: matmul_peak(args.device, dtype) for dtype in (torch.float32, torch.bfloat16)}
    crops = np.random.default_rng(0).integers(0, 256, size=(args.cells, 48, 48, 3), dtype=np.uint8)
    image_sizes = [int(v) for v in args.image_sizes.split(",")]
    rows = []
    folder = Path(tempfile.mkdtemp(prefix="bench_tiles_"))
    for name in args.encoders.split(","):
        encoder = build(name, args.device, args.weights if name == "dinov3_vitl16" else None, image_sizes[0])
        bf16 = bool(getattr(encoder, "bf16", False))
        sizes_here = image_sizes if hasattr(encoder, "image_size") else image_sizes[:1]
        for size in sizes_here if "crop" in modes else []:
            if hasattr(encoder, "image_size"):
                encoder.image_size = size
            flops = flops_per_cell(encoder, size)
            for batch in (int(b) for b in args.batch_sizes.split(",")):
                encoder.embed(crops[:batch])  # warm-up, same shapes
                rate = best_rate(
                    lambda b=batch, e=encoder: [e.embed(crops[i : i + b]) for i in range(0, args.cells, b)],
                    args.cells,
                    args.device,
                    args.repeats,
                )
                px = size if hasattr(encoder, "image_size") else 48
                rows.append(row(name, "crop", px, batch, bf16, rate, flops, peaks))
                print(json.dumps(rows[-1]), flush=True)
        if "tile-token" in modes and name != "morphology":
            rows += tile_rows(args, name, encoder, folder, peaks)
        del encoder
        if gpu:
            torch.cuda.empty_cache()
    speedups = {}
    for name in args.encoders.split(","):
        mine = [r for r in rows if r["encoder"] == name]
        crop = [r["cells_per_s"] for r in mine if r["mode"] == "crop" and r["image_size"] == image_sizes[0]]
        tiles = [r["cells_per_s"] for r in rows if r["encoder"] == name and r["mode"] == "tile-token"]
        ends = [
            r["cells_per_s"] for r in rows if r["encoder"] == name and r["mode"] == "tile-token end-to-end"
        ]
        if crop and tiles:
            speedups[name] = {"encoder_only": max(tiles) / max(crop), "end_to_end": max(ends) / max(crop)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "device": device_name,
        "threads": threads,
        "command": " ".join(["benchmarks/bench_encoders.py", *sys.argv[1:]]),
        "matmul_peak_tflop_s": {str(k).split(".")[-1]: v / 1e12 for k, v in peaks.items()},
        "cells_per_mm2": args.cells_per_mm2,
        "tile": {"size": args.tile_size, "margin": args.tile_margin},
        "rows": rows,
        "tile_token_speedup": speedups,
    }
    args.out.write_text(json.dumps(result, indent=2))
    print(f"device: {device_name} ({threads} threads)")
    print(
        "dense matmul peak, TFLOP/s: "
        + ", ".join(f"{k} {v:.3f}" for k, v in result["matmul_peak_tflop_s"].items())
    )
    print(
        f"{'encoder':<20}{'mode':<23}{'px':>5}{'batch':>7}{'dtype':>7}{'cells/s':>11}{'GFLOP/cell':>12}"
        f"{'of peak':>9}"
    )
    for r in rows:
        print(
            f"{r['encoder']:<20}{r['mode']:<23}{r['image_size']:>5}{r['batch']:>7}{r['dtype']:>7}"
            f"{r['cells_per_s']:>11.1f}{r['gflop_per_cell']:>12.3f}{r['fraction_of_matmul_peak']:>9.2f}"
        )
    for name, ratio in speedups.items():
        print(
            f"tile-token / crop ({image_sizes[0]} px) speed-up, {name}: {ratio['encoder_only']:.1f}x encoder "
            f"only, {ratio['end_to_end']:.1f}x end to end"
        )


if __name__ == "__main__":
    main()
