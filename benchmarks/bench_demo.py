"""Demo generation time, and the peak memory of writing a 10⁶-cell virtual slide.

Prints a table with two ratios against baselines measured in the same run:

- time of the default demo against the time to JPEG-encode and write the same number of slide pixels
  (a real rendered tile, repeated): the floor any generator that writes those slides pays;
- peak resident memory of the 10⁶-cell slide against the bytes of its level-0 RGB raster (what a generator
  that renders the slide in one array would need at least).

Usage: ``.venv/bin/python benchmarks/bench_demo.py [--cells 1000000] [--out benchmarks/out]``
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

CHILD = """
import json, resource, sys, time
from bitro.demo import write_virtual_slide
t = time.perf_counter()
stats = write_virtual_slide(sys.argv[1], n_cells=int(sys.argv[2]), seed=0)
stats["seconds_total"] = time.perf_counter() - t
stats["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps(stats, default=str))
"""

IMPORT_ONLY = """
import json, resource
import bitro.demo
print(json.dumps({"peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def encode_only_seconds(width: int, height: int, block: np.ndarray) -> float:
    """Seconds to write a width × height RGB BigTIFF of JPEG tiles that all equal ``block`` (no rendering)."""
    tile = block.shape[0]

    def tiles():
        for _ in range(-(-height // tile) * -(-width // tile)):
            yield block

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        with tifffile.TiffWriter(Path(tmp) / "blank.tif", bigtiff=True) as tiff:
            tiff.write(
                tiles(),
                shape=(height, width, 3),
                dtype=np.uint8,
                tile=(tile, tile),
                photometric="rgb",
                compression="jpeg",
            )
        return time.perf_counter() - start


def run_json(code: str, *args: str) -> dict:
    """Run ``code`` in a fresh interpreter and parse the JSON it prints last."""
    done = subprocess.run([sys.executable, "-c", code, *args], check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=1_000_000, help="cells of the large slide")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    from bitro.demo import generate_demo
    from bitro.io import open_slide

    demo_dir = args.out / "demo"
    shutil.rmtree(demo_dir, ignore_errors=True)
    start = time.perf_counter()
    summary = generate_demo(demo_dir, progress=False)
    demo_seconds = time.perf_counter() - start
    slides = sorted(p for p in demo_dir.rglob("*.tif") if "truth" not in p.parts)
    pixels = 0
    for path in slides:
        with open_slide(path) as slide:
            pixels += slide.dimensions[0] * slide.dimensions[1]
    side = int(np.sqrt(pixels))
    with open_slide(slides[0]) as slide:
        w0, h0 = slide.dimensions
        block = slide.read_region((w0 // 2 - 128, h0 // 2 - 128), 0, (256, 256))
    floor_seconds = encode_only_seconds(side, side, block)

    big = run_json(CHILD, str(args.out / "virtual_1e6.tif"), str(args.cells))
    imports = run_json(IMPORT_ONLY)
    width, height = big["width"], big["height"]
    raster_bytes = width * height * 3
    big_floor = encode_only_seconds(width, height, block)

    n_samples = sum(len(v) for v in summary["samples"].values()) if "samples" in summary else len(slides)
    rows = [
        ("default demo: samples", f"{n_samples}"),
        ("default demo: slide pixels (level 0)", f"{pixels / 1e6:.1f} M"),
        ("default demo: seconds", f"{demo_seconds:.1f}"),
        ("encode-only floor, same pixels: seconds", f"{floor_seconds:.1f}"),
        ("demo / encode-only time ratio", f"{demo_seconds / floor_seconds:.1f}x"),
        (f"virtual slide: cells (asked {args.cells})", f"{big['cells']}"),
        ("virtual slide: level-0 size (px)", f"{width} x {height}"),
        ("virtual slide: seconds", f"{big['seconds_total']:.1f}"),
        ("encode-only floor, same size: seconds", f"{big_floor:.1f}"),
        ("virtual slide / encode-only time ratio", f"{big['seconds_total'] / big_floor:.1f}x"),
        ("virtual slide: peak RSS", f"{big['peak_rss_bytes'] / 2**20:.0f} MiB"),
        ("interpreter + imports: peak RSS", f"{imports['peak_rss_bytes'] / 2**20:.0f} MiB"),
        ("level-0 RGB raster (naive renderer)", f"{raster_bytes / 2**20:.0f} MiB"),
        ("peak RSS / raster ratio", f"{big['peak_rss_bytes'] / raster_bytes:.3f}"),
    ]
    width_col = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width_col}}  {value}")


if __name__ == "__main__":
    main()
