"""BiTro on a CUDA device (skipped without one): batch invariance, streaming = full, CPU = GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bitro.model import (
    Bag,
    BiTro,
    BiTroConfig,
    CellBatch,
    Denormalise,
    bitro_loss,
    iter_chunks,
    predict_streaming,
    stream_attention,
)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CUDA = torch.device("cuda")


def random_bag(rng: np.random.Generator, n_units: int, mean_cells: int, k: int = 8) -> Bag:
    """Units of Poisson-many cells with k random in-unit neighbours per cell; 128-d features."""
    sizes = rng.poisson(mean_cells, size=n_units)
    edges = []
    for s in sizes.tolist():
        if s < 2:
            edges.append(np.zeros((2, 0), dtype=np.int64))
            continue
        dst = np.repeat(np.arange(s), min(k, s - 1))
        src = (dst + rng.integers(1, s, size=dst.size)) % s
        edges.append(np.stack([src, dst]))
    n = int(sizes.sum())
    return Bag(
        rng.normal(size=(n, 128)).astype(np.float32),
        rng.uniform(-40, 40, size=(n, 2)),
        rng.integers(-1, 8, size=n),
        sizes,
        edges,
    )


@pytest.fixture(scope="module")
def model() -> BiTro:
    torch.manual_seed(0)
    return BiTro(BiTroConfig(n_genes=250)).to(CUDA).eval()


def test_cuda_batch_invariance_and_cpu_agreement(model: BiTro) -> None:
    rng = np.random.default_rng(0)
    bags = [random_bag(rng, 1, m) for m in (5, 60, 1, 150)] + [random_bag(rng, 20, 40)]
    batch = CellBatch.collate(bags).to(CUDA)
    with torch.no_grad():
        together = model(batch)
        worst = 0.0
        for b, bag in enumerate(bags):
            alone = model(CellBatch.collate([bag]).to(CUDA)).prediction[0]
            worst = max(worst, float((alone - together.prediction[b]).abs().max()))
        cpu = BiTro(model.config).eval()
        cpu.load_state_dict({k: v.cpu() for k, v in model.state_dict().items()})
        on_cpu = cpu(CellBatch.collate(bags)).prediction
    print(f"cuda alone-vs-batched max |diff| {worst:.2e}")
    assert worst < 1e-5
    torch.testing.assert_close(together.prediction.cpu(), on_cpu, atol=1e-4, rtol=0)


@pytest.mark.parametrize("max_cells", [3_000, 50_000])
def test_cuda_streaming_equals_full(model: BiTro, max_cells: int) -> None:
    bag = random_bag(np.random.default_rng(1), 400, 60)
    with torch.no_grad():
        full = model(CellBatch.collate([bag]).to(CUDA))
    streamed = predict_streaming(model, iter_chunks(bag, max_cells))
    diff = float((streamed.prediction - full.prediction[0]).abs().max())
    print(f"cuda streaming ({bag.n_cells} cells, chunks of {max_cells}) max |diff| {diff:.2e}")
    assert diff < 1e-5
    attention = torch.cat(list(stream_attention(model, iter_chunks(bag, max_cells), streamed.state)))
    torch.testing.assert_close(attention, full.attention, atol=1e-7, rtol=1e-4)


def test_cuda_training_step_is_finite() -> None:
    torch.manual_seed(1)
    model = BiTro(BiTroConfig(n_genes=250)).to(CUDA).train()
    rng = np.random.default_rng(2)
    batch = CellBatch.collate([random_bag(rng, 1, 50) for _ in range(16)]).to(CUDA)
    to_counts = Denormalise(torch.full((250,), 2.0), torch.ones(250))
    out = model(batch)
    loss = bitro_loss(out, torch.randn(16, 250, device=CUDA), batch, to_counts=to_counts, lam=0.3)
    loss.total.backward()
    assert torch.isfinite(loss.total)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
