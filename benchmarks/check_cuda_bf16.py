"""One short check on a CUDA GPU: BiTro trains under bf16 autocast and predicts like fp32.

Builds synthetic spots (the model package alone, no pipeline files), runs 30 Adam steps with
``torch.autocast("cuda", dtype=torch.bfloat16)`` as ``bitro.train.fit`` does, and prints the loss before
and after, the step time, and the largest difference between bf16 and fp32 predictions of one batch.

    python benchmarks/check_cuda_bf16.py --device cuda
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from bitro.model.batch import Bag, CellBatch
from bitro.model.bitro import BiTro, BiTroConfig


def synthetic_bags(n: int, rng: np.random.Generator, weights: np.ndarray) -> tuple[list[Bag], np.ndarray]:
    bags, targets = [], []
    for _ in range(n):
        size = int(rng.integers(4, 40))
        x = rng.normal(size=(size, 128)).astype(np.float32)
        src = np.repeat(np.arange(size), min(8, size - 1))
        dst = np.concatenate([rng.choice(np.delete(np.arange(size), i), min(8, size - 1), replace=False)
                              for i in range(size)])  # fmt: skip
        bags.append(
            Bag(
                x, rng.normal(0, 15, size=(size, 2)), rng.integers(0, 8, size), [size], [np.stack([dst, src])]
            )
        )
        targets.append(np.tanh(x @ weights).mean(axis=0) * 3)
    targets = np.stack(targets)
    return bags, ((targets - targets.mean(0)) / targets.std(0)).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(128, 250)) / 8
    torch.manual_seed(0)
    model = BiTro(BiTroConfig(n_genes=250)).to(args.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    bags, targets = synthetic_bags(64, rng, weights)
    batch = CellBatch.collate(bags).to(args.device)
    target = torch.from_numpy(targets).to(args.device)
    losses = []
    started = time.perf_counter()
    for _ in range(args.steps):
        with torch.autocast(device_type=args.device.split(":")[0], dtype=torch.bfloat16):
            prediction = model(batch).prediction.float()
        loss = torch.nn.functional.mse_loss(prediction, target)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(float(loss.detach()))
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    step = (time.perf_counter() - started) / args.steps
    model.eval()
    with torch.no_grad():
        full = model(batch).prediction.float()
        with torch.autocast(device_type=args.device.split(":")[0], dtype=torch.bfloat16):
            half = model(batch).prediction.float()
    print(f"device {torch.cuda.get_device_name() if args.device.startswith('cuda') else 'cpu'}")
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    print(f"bf16 training: loss {first:.4f} -> {last:.4f} over {args.steps} steps, {1000 * step:.1f} ms/step")
    print(f"max |bf16 - fp32| prediction: {float((full - half).abs().max()):.4f} (z-scored targets)")
    assert np.isfinite(losses).all() and last < first


if __name__ == "__main__":
    main()
