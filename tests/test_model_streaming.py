"""Streaming slide attention: online softmax over chunks equals the full forward pass."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from bitro.model import (
    Bag,
    BiTro,
    BiTroConfig,
    CellBatch,
    Denormalise,
    OnlineGeneAttention,
    iter_chunks,
    predict_streaming,
    stream_attention,
    stream_pseudo_cells,
)

F_IN = 10


def slide_bag(seed: int = 0, n_units: int = 12) -> Bag:
    """A bulk-like bag: many units of varied size, including empty and single-cell units."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(2, 15, size=n_units)
    sizes[3], sizes[7], sizes[-1] = 0, 1, 0
    edges = []
    for s in sizes:
        src, dst = rng.integers(0, max(int(s), 1), size=(2, 4 * int(s)))
        keep = src != dst
        edges.append(np.stack([src[keep], dst[keep]]))
    n = int(sizes.sum())
    return Bag(
        rng.normal(size=(n, F_IN)) * 2,
        rng.uniform(-60, 60, size=(n, 2)),
        rng.integers(-1, 4, size=n),
        sizes,
        edges,
    )


@pytest.fixture(scope="module")
def model() -> BiTro:
    torch.manual_seed(0)
    config = BiTroConfig(n_genes=7, in_dim=F_IN, dim=16, position_dim=4, ff_mult=2)
    return BiTro(config).eval()


def test_iter_chunks_keeps_units_whole_and_covers_the_bag() -> None:
    bag = slide_bag()
    for max_cells in (1, 5, 20, 10**6):
        chunks = list(iter_chunks(bag, max_cells))
        sizes = [c.unit_sizes.tolist() for c in chunks]
        flat = [s for chunk in sizes for s in chunk]
        assert flat == bag.unit_sizes.tolist()[: len(flat)]  # in order; only trailing empty units dropped
        assert sum(flat) == bag.n_cells
        for chunk in chunks:
            chunk.validate()
            assert chunk.n_bags == 1
            assert chunk.n_cells <= max_cells or chunk.n_units - int((chunk.unit_sizes == 0).sum()) == 1
        got = torch.cat([c.features for c in chunks])
        assert torch.equal(got, torch.from_numpy(bag.features))
    with pytest.raises(ValueError, match="max_cells"):
        next(iter_chunks(bag, 0))


@pytest.mark.parametrize("max_cells", [1, 9, 25, 10**6])
def test_streaming_equals_full_forward(model: BiTro, max_cells: int) -> None:
    _streaming_equals_full_forward(model, max_cells)


@pytest.mark.parametrize("max_cells", [1, 25])
def test_streaming_equals_full_forward_with_per_gene_readout_and_density(max_cells: int) -> None:
    torch.manual_seed(1)
    config = BiTroConfig(n_genes=7, in_dim=F_IN, dim=16, position_dim=4, ff_mult=2)
    model = BiTro(replace(config, readout="per_gene", density_input=True)).eval()
    with torch.no_grad():
        model.mil.density.normal_()
    _streaming_equals_full_forward(model, max_cells)


def _streaming_equals_full_forward(model: BiTro, max_cells: int) -> None:
    bag = slide_bag()
    with torch.no_grad():
        full = model(CellBatch.collate([bag]))
    streamed = predict_streaming(model, iter_chunks(bag, max_cells))
    torch.testing.assert_close(streamed.prediction, full.prediction[0], atol=1e-5, rtol=0)
    assert streamed.state.n_cells == bag.n_cells
    attention = torch.cat(list(stream_attention(model, iter_chunks(bag, max_cells), streamed.state)))
    torch.testing.assert_close(attention, full.attention, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(attention.sum(0), torch.ones(7), atol=1e-5, rtol=0)


def test_streamed_pseudo_cells_sum_to_prediction(model: BiTro) -> None:
    bag = slide_bag(seed=1, n_units=30)
    streamed = predict_streaming(model, iter_chunks(bag, 40))
    counts = Denormalise(torch.linspace(1.0, 4.0, 7), torch.full((7,), 0.8))(streamed.prediction)
    total = torch.zeros(7)
    for cells in stream_pseudo_cells(model, iter_chunks(bag, 40), streamed.state, counts):
        assert cells.shape[1] == 7
        total += cells.sum(0)
    torch.testing.assert_close(total, counts, rtol=1e-5, atol=0)


def test_online_softmax_by_hand() -> None:
    torch.manual_seed(1)
    logits, h = torch.randn(10, 3) * 30, torch.randn(10, 4)
    state = OnlineGeneAttention.empty(3, 4)
    for part in ((0, 1), (1, 6), (6, 10)):
        state.update(logits[part[0] : part[1]], h[part[0] : part[1]])
    a = torch.softmax(logits.double(), dim=0)  # (N, G), softmax over cells
    torch.testing.assert_close(state.pooled(), a.t() @ h.double())
    torch.testing.assert_close(state.attention(logits[2:5]), a[2:5].float())
    assert torch.equal(state.max, logits.double().max(0).values)
    with pytest.raises(ValueError, match="no cells"):
        OnlineGeneAttention.empty(3, 4).pooled()


def test_streaming_refuses_training_mode_and_multi_bag_chunks(model: BiTro) -> None:
    bag = slide_bag()
    model.train()
    try:
        with pytest.raises(ValueError, match="eval"):
            predict_streaming(model, iter_chunks(bag, 20))
    finally:
        model.eval()
    two = CellBatch.collate([bag, bag])
    with pytest.raises(ValueError, match="one bag"):
        predict_streaming(model, [two])
    with pytest.raises(ValueError, match="no cells"):
        predict_streaming(model, [])
