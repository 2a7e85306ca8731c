"""Slide-level context (BiTroConfig.slide_context): shapes, off = unchanged, information between patches
of a bag and never between bags, and exact streaming."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bitro.model import Bag, BiTro, BiTroConfig, CellBatch, iter_chunks, predict_streaming, stream_attention

F_IN = 10


def bag(seed: int, sizes: list[int]) -> Bag:
    """A bag of units of the given sizes (zeros allowed), kNN-like random edges within each unit."""
    rng = np.random.default_rng(seed)
    edges = []
    for s in sizes:
        src, dst = rng.integers(0, max(s, 1), size=(2, 3 * s))
        keep = src != dst
        edges.append(np.stack([src[keep], dst[keep]]))
    n = sum(sizes)
    return Bag(
        rng.normal(size=(n, F_IN)), rng.uniform(-40, 40, size=(n, 2)), np.full(n, -1), np.array(sizes), edges
    )


def config(**changes: object) -> BiTroConfig:
    base = {"n_genes": 5, "in_dim": F_IN, "dim": 16, "position_dim": 4, "ff_mult": 2, "dropout": 0.0}
    return BiTroConfig(**(base | changes))  # type: ignore[arg-type]


def with_context(seed: int = 0) -> BiTro:
    """A model with slide context whose output projection is not zero (as after training)."""
    torch.manual_seed(seed)
    model = BiTro(config(slide_context="patch_tokens")).eval()
    assert model.context is not None
    with torch.no_grad():
        torch.nn.init.normal_(model.context.out.weight, std=0.3)
        torch.nn.init.normal_(model.context.density, std=0.3)
    return model


def test_config_checks_and_old_models_load_without_context() -> None:
    with pytest.raises(ValueError, match="slide_context"):
        config(slide_context="cells")
    with pytest.raises(ValueError, match="context_layers"):
        config(slide_context="patch_tokens", context_layers=0)
    old = config().to_dict()
    del old["slide_context"], old["context_layers"]
    assert BiTroConfig.from_dict(old).slide_context == "none"


def test_off_is_the_model_without_context_parameter_for_parameter() -> None:
    torch.manual_seed(3)
    off = BiTro(config())
    torch.manual_seed(3)
    on = BiTro(config(slide_context="patch_tokens"))
    assert off.context is None and not any(k.startswith("context") for k in off.state_dict())
    shared = {k: v for k, v in on.state_dict().items() if not k.startswith("context.")}
    assert shared.keys() == off.state_dict().keys()
    assert all(torch.equal(shared[k], v) for k, v in off.state_dict().items())
    # The context's output starts at zero: before training, context changes no prediction.
    batch = CellBatch.collate([bag(0, [4, 6, 0, 3]), bag(1, [5, 2])])
    assert torch.equal(on.eval()(batch).prediction, off.eval()(batch).prediction)


def test_shapes_with_context() -> None:
    model = with_context()
    batch = CellBatch.collate([bag(0, [4, 6, 0, 3]), bag(1, [5]), bag(2, [1, 2])])
    out = model(batch)
    assert out.prediction.shape == (3, 5)
    assert out.cells.shape == (batch.n_cells, 16)
    assert out.attention.shape == (batch.n_cells, 5)
    sums = torch.zeros(3, 5).index_add_(0, batch.cell_bag, out.attention)
    assert torch.allclose(sums, torch.ones(3, 5), atol=1e-5)


def _changed_units(model: BiTro) -> tuple[torch.Tensor, torch.Tensor]:
    """Cells of unit 0 of bag 0 and of bag 1, before and after changing the cells of unit 2 of bag 0."""
    first, second = bag(0, [4, 6, 5, 3]), bag(1, [5, 4])
    features = first.features.copy()
    features[10:15] += 3.0  # unit 2 of the first bag
    changed = Bag(features, first.offsets_um, first.phenotype, first.unit_sizes, first.unit_edges)
    with torch.no_grad():
        before = model(CellBatch.collate([first, second])).cells
        after = model(CellBatch.collate([changed, second])).cells
    return before, after


def test_context_carries_information_between_patches_of_a_bag_only() -> None:
    before, after = _changed_units(with_context())
    unit0, other_bag = slice(0, 4), slice(18, 27)
    assert (before[unit0] - after[unit0]).abs().max() > 1e-3  # another patch's cells reached unit 0
    assert torch.equal(before[other_bag], after[other_bag])  # never across bags


def test_without_context_a_patch_sees_only_its_own_cells() -> None:
    torch.manual_seed(0)
    before, after = _changed_units(BiTro(config()).eval())
    assert torch.equal(before[:4], after[:4])
    assert torch.equal(before[18:], after[18:])
    assert not torch.equal(before[10:15], after[10:15])


@pytest.mark.parametrize("max_cells", [1, 7, 10**6])
def test_streaming_with_context_equals_full_forward(max_cells: int) -> None:
    model = with_context(seed=2)
    slide = bag(5, [3, 7, 0, 1, 6, 4, 0, 5, 2, 0])
    with torch.no_grad():
        full = model(CellBatch.collate([slide]))
    streamed = predict_streaming(model, iter_chunks(slide, max_cells))
    assert torch.allclose(streamed.prediction.float(), full.prediction[0], atol=1e-5)
    attention = torch.cat(list(stream_attention(model, iter_chunks(slide, max_cells), streamed.state)))
    assert torch.allclose(attention, full.attention, atol=1e-6)


def test_stream_attention_needs_the_context_statistics() -> None:
    model = with_context()
    slide = bag(5, [3, 7, 2])
    state = predict_streaming(model, iter_chunks(slide, 5)).state
    state.context = None
    with pytest.raises(ValueError, match="slide context"):
        next(stream_attention(model, iter_chunks(slide, 5), state))
