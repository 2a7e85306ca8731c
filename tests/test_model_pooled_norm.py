"""BiTroConfig.pooled_norm: the pooled representations and log density standardised by running moments of
the training bags (GeneQueryMIL.standardise), against a hand computation."""

from __future__ import annotations

import math

import numpy as np
import torch

from bitro.model import Bag, BiTro, BiTroConfig, CellBatch, iter_chunks, predict_streaming
from bitro.model.mil import GeneQueryMIL


def test_off_has_no_running_moments_and_on_reads_standardised_values() -> None:
    assert "running_mean" not in dict(GeneQueryMIL(3, 4, "identity", density_input=True).named_buffers())
    torch.manual_seed(0)
    mil = GeneQueryMIL(3, 4, "identity", readout="per_gene", density_input=True, pooled_norm=True).eval()
    with torch.no_grad():
        mil.density.copy_(torch.tensor([1.0, -2.0, 0.5, 0.0]))
        mil.running_mean.copy_(torch.tensor([1.0, 0.0, -1.0, 2.0, math.log(20.0)]))
        # Variances 4, 1, 0.25, 1, 0.01: second moments mean² + variance.
        mil.running_square.copy_(torch.tensor([5.0, 1.0, 1.25, 5.0, math.log(20.0) ** 2 + 0.01]))
    z = torch.tensor([[[3.0, 1.0, -0.5, 2.0]] * 3])  # one bag, 3 genes
    density = torch.tensor([22.0])
    expected_z = torch.tensor([1.0, 1.0, 1.0, 0.0])  # (z − mean) / sd per dimension
    expected_log_density = (math.log(22.0) - math.log(20.0)) / 0.1
    hand = mil.readout(
        (expected_z + expected_log_density * mil.density).expand(1, 3, 4)
    )  # what the readout must see
    assert torch.allclose(mil.read(z, density), hand, atol=1e-5)


def test_running_moments_move_in_training_only() -> None:
    mil = GeneQueryMIL(2, 3, "identity", readout="per_gene", density_input=True, pooled_norm=True)
    z = torch.full((1, 2, 3), 2.0)
    mil.train().read(z, torch.tensor([math.e]))
    # One step of an exponential average from (0, 1) with weight 0.05: mean 0.1, second moment 1.15.
    assert torch.allclose(mil.running_mean, torch.tensor([0.1, 0.1, 0.1, 0.05]))
    assert torch.allclose(mil.running_square, torch.tensor([1.15, 1.15, 1.15, 1.0]))
    before = mil.running_mean.clone()
    mil.eval().read(z * 3, torch.tensor([5.0]))
    assert torch.equal(mil.running_mean, before)


def test_slides_that_differ_little_reach_the_readout_apart() -> None:
    """Two bags whose pooled cells differ by 1 % of their common part: after the moments have followed
    training batches of such bags, the readout's inputs differ by O(1), not by 1 %."""
    torch.manual_seed(0)
    mil = GeneQueryMIL(1, 8, "identity", readout="per_gene", pooled_norm=True)
    common = torch.randn(8) * 5
    rng = np.random.default_rng(0)
    mil.train()
    for _ in range(400):
        mil.read((common + 0.05 * torch.from_numpy(rng.normal(size=8)).float())[None, None])
    mil.eval()
    a, b = (common + 0.05)[None, None], (common - 0.05)[None, None]
    za, _ = mil.standardise(a, torch.zeros(1))
    zb, _ = mil.standardise(b, torch.zeros(1))
    assert float((za - zb).abs().mean()) > 1.0
    assert float((a - b).abs().mean()) / float(common.abs().mean()) < 0.05


def test_streaming_equals_full_forward_with_pooled_norm() -> None:
    torch.manual_seed(1)
    model = BiTro(BiTroConfig(n_genes=4, in_dim=6, dim=8, position_dim=2, ff_mult=1, pooled_norm=True))
    rng = np.random.default_rng(0)
    sizes = np.array([4, 0, 6, 3])
    edges = [np.stack([np.arange(s - 1), np.arange(1, s)]) if s > 1 else np.zeros((2, 0)) for s in sizes]
    n = int(sizes.sum())
    bag = Bag(rng.normal(size=(n, 6)), rng.uniform(-20, 20, (n, 2)), np.full(n, -1), sizes, edges)
    model.train()(CellBatch.collate([bag]))  # moves the running moments
    model.eval()
    with torch.no_grad():
        full = model(CellBatch.collate([bag])).prediction[0]
    streamed = predict_streaming(model, iter_chunks(bag, 5)).prediction.float()
    assert torch.allclose(streamed, full, atol=1e-5)
