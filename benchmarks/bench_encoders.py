"""Encoder throughput in crop mode: cells/s per encoder and batch size, and the FLOP rate achieved.

The baseline is a dense matrix product measured in the same run on the same device and dtype: the FLOP
rate an encoder reaches is reported as a fraction of it (issue 4's target for the ViT in bf16: ≥ 30 %).
FLOPs per cell come from ``torch.utils.flop_counter`` on one forward pass. DINOv3 ViT-L/16 is built from
its published configuration with random weights, which costs the same as the real ones, so the figure
needs no download; pass ``--weights`` to time a real checkpoint instead.

Usage: ``.venv/bin/python benchmarks/bench_encoders.py [--device cpu|cuda] [--cells 64]
[--batch-sizes 8,32] [--encoders dinov3_vitl16,efficientnet_lite0,morphology]``. On a GPU node,
``--device cuda`` records the GPU's name beside the figures.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--cells", type=int, default=64, help="cells timed per setting")
    parser.add_argument("--batch-sizes", default="8,32")
    parser.add_argument("--encoders", default="dinov3_vitl16,efficientnet_lite0,morphology")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--weights", type=Path, default=None, help="real DINOv3 weights (a directory)")
    args = parser.parse_args()

    device_name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "CPU"
    threads = torch.get_num_threads()
    peaks = {dtype: matmul_peak(args.device, dtype) for dtype in (torch.float32, torch.bfloat16)}
    crops = np.random.default_rng(0).integers(0, 256, size=(args.cells, 48, 48, 3), dtype=np.uint8)
    rows = []
    for name in args.encoders.split(","):
        encoder = build(name, args.device, args.weights if name == "dinov3_vitl16" else None, args.image_size)
        flops = flops_per_cell(encoder, args.image_size)
        bf16 = bool(getattr(encoder, "bf16", False))
        peak = peaks[torch.bfloat16 if bf16 else torch.float32]
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            encoder.embed(crops[: min(batch, 4)])  # warm-up
            synchronize(args.device)
            start = time.perf_counter()
            for i in range(0, args.cells, batch):
                encoder.embed(crops[i : i + batch])
            synchronize(args.device)
            rate = args.cells / (time.perf_counter() - start)
            achieved = rate * flops
            rows.append(
                {
                    "encoder": name,
                    "image_size": args.image_size,
                    "batch": batch,
                    "dtype": "bf16" if bf16 else "fp32",
                    "cells_per_s": rate,
                    "gflop_per_cell": flops / 1e9,
                    "achieved_tflop_s": achieved / 1e12,
                    "fraction_of_matmul_peak": achieved / peak,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    result = {
        "device": device_name,
        "threads": threads,
        "matmul_peak_tflop_s": {str(k).split(".")[-1]: v / 1e12 for k, v in peaks.items()},
        "rows": rows,
    }
    (OUT / "encoders.json").write_text(json.dumps(result, indent=2))
    print(f"device: {device_name} ({threads} threads)")
    print(
        "dense matmul peak, TFLOP/s: "
        + ", ".join(f"{k} {v:.3f}" for k, v in result["matmul_peak_tflop_s"].items())
    )
    print(f"{'encoder':<20}{'px':>5}{'batch':>7}{'dtype':>7}{'cells/s':>10}{'GFLOP/cell':>12}{'of peak':>9}")
    for r in rows:
        print(
            f"{r['encoder']:<20}{r['image_size']:>5}{r['batch']:>7}{r['dtype']:>7}{r['cells_per_s']:>10.1f}"
            f"{r['gflop_per_cell']:>12.3f}{r['fraction_of_matmul_peak']:>9.2f}"
        )


if __name__ == "__main__":
    main()
