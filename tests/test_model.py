"""BiTro model on synthetic tensors: each equation against a hand computation (paper eq. 4–13)."""

from __future__ import annotations

import math
from copy import deepcopy
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812 (the PyTorch convention)

from bitro.model import (
    Bag,
    BiTro,
    BiTroConfig,
    CellBatch,
    Denormalise,
    bitro_loss,
    cluster_loss,
    gene_loss,
    pseudo_cells,
)
from bitro.model.cost import count_parameters, flops_per_cell
from bitro.model.gat import GATLayer, dense_graph
from bitro.model.mil import GeneQueryMIL, Readout, segment_softmax
from bitro.model.padding import SegmentPadding
from bitro.model.transformer import EncoderBlock, PositionEmbedding

F_IN = 12


def random_bag(rng: np.random.Generator, sizes: list[int], n_clusters: int = 3) -> Bag:
    """A bag with random features, offsets, phenotypes (some −1) and random local edges per unit."""
    n = sum(sizes)
    edges = []
    for s in sizes:
        src, dst = rng.integers(0, max(s, 1), size=(2, 3 * s))
        keep = src != dst
        edges.append(np.stack([src[keep], dst[keep]]))
    return Bag(
        features=rng.normal(size=(n, F_IN)),
        offsets_um=rng.uniform(-70, 70, size=(n, 2)),
        phenotype=rng.integers(-1, n_clusters, size=n),
        unit_sizes=np.array(sizes),
        unit_edges=edges,
    )


def small_config(**kwargs: object) -> BiTroConfig:
    base = {"n_genes": 6, "in_dim": F_IN, "dim": 16, "position_dim": 4, "ff_mult": 2}
    base.update(kwargs)
    return BiTroConfig(**base)  # type: ignore[arg-type]


@pytest.fixture
def bags() -> list[Bag]:
    rng = np.random.default_rng(0)
    return [random_bag(rng, [5, 0, 4]), random_bag(rng, [1]), random_bag(rng, [9, 3, 2])]


# ------------------------------------------------------------------------------------------------- batch
def test_collate_builds_packed_layout(bags: list[Bag]) -> None:
    batch = CellBatch.collate(bags)
    batch.validate()
    assert batch.n_cells == 24 and batch.n_units == 7 and batch.n_bags == 3
    assert batch.unit_ptr.tolist() == [0, 5, 5, 9, 10, 19, 22, 24]
    assert batch.bag_ptr.tolist() == [0, 3, 4, 7]
    assert batch.bag_cell_ptr.tolist() == [0, 9, 10, 24]
    assert batch.bag_sizes.tolist() == [9, 1, 14]
    assert batch.cell_bag.tolist() == [0] * 9 + [1] + [2] * 14
    assert batch.cell_unit.tolist() == [0] * 5 + [2] * 4 + [3] + [4] * 9 + [5] * 3 + [6] * 2
    assert batch.unit_bag.tolist() == [0, 0, 0, 1, 2, 2, 2]
    # local edges of bag 2, unit 1 (packed unit 5) are shifted by that unit's first cell (19)
    local = bags[2].unit_edges[1]
    start = int(batch.unit_ptr[5])
    packed = batch.edge_index.numpy()
    for s, t in local.T:
        assert ((packed[0] == s + start) & (packed[1] == t + start)).any()
    assert batch.features.dtype == torch.float32 and batch.phenotype.dtype == torch.int64


def test_collate_and_validate_reject_bad_bags(bags: list[Bag]) -> None:
    empty = Bag(np.zeros((0, F_IN)), np.zeros((0, 2)), np.zeros(0), np.array([0, 0]), [np.zeros((2, 0))] * 2)
    with pytest.raises(ValueError, match="bag 1 has no cells"):
        CellBatch.collate([bags[0], empty])
    with pytest.raises(ValueError, match="outside its 2 cells"):
        Bag(np.zeros((2, F_IN)), np.zeros((2, 2)), np.zeros(2), np.array([2]), [np.array([[0], [2]])])
    with pytest.raises(ValueError, match=r"shape \(2, e\)"):
        Bag(
            np.zeros((3, F_IN)),
            np.zeros((3, 2)),
            np.zeros(3),
            np.array([3]),
            [np.array([[0, 1], [1, 2], [2, 0]])],
        )
    with pytest.raises(ValueError, match="sum to"):
        Bag(np.zeros((2, F_IN)), np.zeros((2, 2)), np.zeros(2), np.array([3]), [np.zeros((2, 0))])
    batch = CellBatch.collate(bags)
    crossing = CellBatch(
        batch.features,
        batch.offsets_um,
        batch.phenotype,
        torch.tensor([[0], [6]]),
        batch.unit_ptr,
        batch.bag_ptr,
    )
    with pytest.raises(ValueError, match="cross units"):
        crossing.validate()
    # a bag made only of empty units, built by hand, fails clearly in validate() and in the model
    no_cells = CellBatch(
        batch.features[:5],
        batch.offsets_um[:5],
        batch.phenotype[:5],
        torch.zeros((2, 0), dtype=torch.int64),
        torch.tensor([0, 5, 5]),
        torch.tensor([0, 1, 2]),
    )
    with pytest.raises(ValueError, match=r"bag\(s\) \[1\] have no cells"):
        no_cells.validate()
    with pytest.raises(ValueError, match="no cells"):
        BiTro(small_config())(no_cells)


# --------------------------------------------------------------------------------------------- GAT eq 4–5
def test_gat_attention_coefficients_match_eq5() -> None:
    torch.manual_seed(0)
    layer = GATLayer(dim=6, heads=4, dropout=0.0, residual=False).eval()
    x = torch.randn(5, 6)
    edge_index = torch.tensor([[1, 2, 3, 0, 4], [0, 0, 0, 1, 3]])  # source → target
    out, (ei, alpha) = layer.conv(x, edge_index, return_attention_weights=True)
    conv = layer.conv
    wx = (x @ conv.lin.weight.t()).view(5, 4, 6)  # W h, per head
    a_dst, a_src = conv.att_dst[0], conv.att_src[0]  # a = [a_dst ; a_src] for [W h_i ⊕ W h_j]
    i = 0
    neighbours = [1, 2, 3, i]  # N(i) ∪ {i}
    scores = torch.stack(
        [F.leaky_relu((wx[i] * a_dst).sum(-1) + (wx[j] * a_src).sum(-1), 0.2) for j in neighbours]
    )
    alpha_hand = torch.softmax(scores, dim=0)  # (4 neighbours, 4 heads)
    for row, j in enumerate(neighbours):
        got = alpha[(ei[0] == j) & (ei[1] == i)]
        assert got.shape == (1, 4)
        torch.testing.assert_close(got[0], alpha_hand[row], atol=1e-6, rtol=0)
    # eq. 4 for node i: heads concatenated, projected, LayerNorm, ReLU
    agg = (alpha_hand[:, :, None] * wx[neighbours]).sum(0).reshape(-1)
    torch.testing.assert_close(out[i], agg, atol=1e-6, rtol=0)
    h_hand = F.relu(F.layer_norm(layer.proj(agg), (6,), layer.norm.weight, layer.norm.bias))
    torch.testing.assert_close(layer(x, edge_index)[i], h_hand, atol=1e-6, rtol=0)
    # with the skip connection (the default) the layer adds its input
    layer.residual = True
    torch.testing.assert_close(layer(x, edge_index)[i], x[i] + h_hand, atol=1e-6, rtol=0)
    # a cell without neighbours only sees itself (self-loop added by GATConv)
    alone = alpha[(ei[1] == 2)]
    torch.testing.assert_close(alone, torch.ones(1, 4))


# --------------------------------------------------------------------------------------- positions eq 6
def test_position_bins_clip_and_bin_by_hand() -> None:
    pos = PositionEmbedding(bin_um=2.0, range_um=64.0, dim=3)
    assert pos.n_bins == 65
    offsets = torch.tensor([[-64.0, 64.0], [-100.0, 100.0], [0.0, 1.99], [-0.01, 3.0], [63.9, -63.0]])
    expected = torch.tensor([[0, 64], [0, 64], [32, 32], [31, 33], [63, 0]])
    assert torch.equal(pos.bins(offsets), expected)
    codes = pos(offsets)
    torch.testing.assert_close(codes[2], torch.cat([pos.x.weight[32], pos.y.weight[32]]))


# ----------------------------------------------------------------------------------------- transformer
def test_encoder_block_matches_hand_attention_and_ignores_padding() -> None:
    torch.manual_seed(1)
    block = EncoderBlock(dim=8, heads=2, ff_mult=2, dropout=0.0).eval()
    seq = torch.randn(3, 8)

    def by_hand(x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x, (8,), block.norm1.weight, block.norm1.bias)
        q, k, v = (
            lin(y).view(-1, 2, 4).transpose(0, 1) for lin in (block.attn.q, block.attn.k, block.attn.v)
        )
        a = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(4), dim=-1)
        x = x + block.attn.out((a @ v).transpose(0, 1).reshape(-1, 8))
        y = F.layer_norm(x, (8,), block.norm2.weight, block.norm2.bias)
        return x + block.ff2(F.gelu(block.ff1(y)))

    padded = torch.zeros(2, 5, 8)
    padded[0, :3] = seq
    padded[0, 3:] = 1e3  # garbage in padding must not matter
    padded[1] = torch.randn(5, 8)
    mask = torch.tensor([[True, True, True, False, False], [True] * 5])
    with torch.no_grad():
        out = block(padded, mask)
        torch.testing.assert_close(out[0, :3], by_hand(seq), atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------- MIL eq 7–9
def test_mil_attention_pooling_and_readout_by_hand() -> None:
    torch.manual_seed(2)
    mil = GeneQueryMIL(n_genes=3, dim=4, output="identity")
    h = torch.randn(7, 4)
    cell_bag = torch.tensor([0, 0, 0, 0, 1, 1, 1])  # bag 0 = two units (2 + 2 cells), bag 1 = 3 cells
    prediction, attention = mil(h, cell_bag, [4, 3])
    for b, cells in enumerate((slice(0, 4), slice(4, 7))):
        a_hand = torch.softmax(
            mil.queries @ h[cells].t() / 2.0, dim=1
        )  # (G, n), softmax over the bag's cells
        torch.testing.assert_close(attention[cells].t(), a_hand, atol=1e-6, rtol=0)
        torch.testing.assert_close(attention[cells].sum(0), torch.ones(3), atol=1e-6, rtol=0)
        z = a_hand @ h[cells]  # eq. 8
        r = mil.readout
        y = F.layer_norm(z, (4,), r.norm.weight, r.norm.bias)
        y_hand = (F.relu(y @ r.fc1.weight.t() + r.fc1.bias) @ r.fc2.weight.t() + r.fc2.bias)[:, 0]
        torch.testing.assert_close(prediction[b], y_hand, atol=1e-6, rtol=0)


def test_segment_softmax_is_stable_for_large_scores() -> None:
    logits = torch.tensor([[1000.0], [999.0], [-1000.0]])
    a = segment_softmax(logits, torch.tensor([0, 0, 1]), 2)
    torch.testing.assert_close(
        a[:, 0], torch.tensor([1 / (1 + math.exp(-1)), math.exp(-1) / (1 + math.exp(-1)), 1.0])
    )


def test_readout_softplus_only_when_asked() -> None:
    torch.manual_seed(3)
    z = torch.randn(2, 5, 4) * 10
    ident, soft = Readout(4, "identity"), Readout(4, "softplus")
    soft.load_state_dict(ident.state_dict())
    torch.testing.assert_close(soft(z), F.softplus(ident(z)))
    assert (ident(z) < 0).any() and (soft(z) >= 0).all()
    with pytest.raises(ValueError, match="identity"):
        BiTroConfig(n_genes=3, output="relu")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------- pseudo-cells eq 10
def test_pseudo_cells_sum_to_bag_prediction_in_count_space(bags: list[Bag]) -> None:
    torch.manual_seed(4)
    model = BiTro(small_config()).eval()
    batch = CellBatch.collate(bags)
    out = model(batch)
    mean, std = torch.linspace(0.5, 3.0, 6), torch.linspace(0.2, 1.5, 6)
    to_counts = Denormalise(mean, std, eps=1e-6)
    counts = to_counts(out.prediction)
    torch.testing.assert_close(counts, torch.expm1(out.prediction * (std + 1e-6) + mean).clamp(min=0))
    cells = pseudo_cells(out.attention, counts, batch.cell_bag)
    sums = torch.zeros(3, 6).index_add_(0, batch.cell_bag, cells)
    torch.testing.assert_close(sums, counts, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(cells[3], out.attention[3] * counts[0])
    with pytest.raises(ValueError, match="cell_bag"):
        pseudo_cells(out.attention, counts)


# --------------------------------------------------------------------------------------- losses eq 11–13
def test_gene_loss_mean_and_sum() -> None:
    pred, target = (
        torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]),
        torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]]),
    )
    # squared norms per bag: 4 + 9 = 13 and 3; mean over bags 8; divided by G = 3 for "mean"
    assert gene_loss(pred, target, "sum").item() == pytest.approx(8.0)
    assert gene_loss(pred, target).item() == pytest.approx(8.0 / 3)
    torch.testing.assert_close(gene_loss(pred, target), F.mse_loss(pred, target))


def test_cluster_loss_by_hand() -> None:
    rng = np.random.default_rng(5)
    cells = rng.gamma(2.0, 50.0, size=(11, 4))
    phenotype = np.array([0, 0, 1, -1, 1, 1, 3, 0, -1, 3, 3])
    scale = np.array([1.0, 10.0, 100.0, 0.5])
    for gene_scale in (None, scale):
        x = cells / (1.0 if gene_scale is None else gene_scale)
        expected_sum = 0.0
        for k in set(phenotype.tolist()) - {-1}:
            members = x[phenotype == k]
            expected_sum += ((members - members.mean(0)) ** 2).sum() / len(members)
        got = cluster_loss(
            torch.tensor(cells),
            torch.tensor(phenotype),
            None if gene_scale is None else torch.tensor(gene_scale),
            genes="sum",
        )
        assert got.item() == pytest.approx(expected_sum, rel=1e-9)
        got_mean = cluster_loss(
            torch.tensor(cells),
            torch.tensor(phenotype),
            None if gene_scale is None else torch.tensor(gene_scale),
        )
        assert got_mean.item() == pytest.approx(expected_sum / 4, rel=1e-9)
    unknown = cluster_loss(torch.ones(3, 2, requires_grad=True), torch.full((3,), -1))
    assert unknown.item() == 0.0 and unknown.requires_grad


def test_total_loss_combines_terms(bags: list[Bag]) -> None:
    torch.manual_seed(6)
    model = BiTro(small_config())
    batch = CellBatch.collate(bags)
    out = model(batch)
    target = torch.randn(3, 6)
    to_counts = Denormalise(torch.full((6,), 2.0), torch.ones(6))
    off = bitro_loss(out, target, batch, lam=0.0)
    assert off.total is off.gene and off.cluster.item() == 0.0
    on = bitro_loss(out, target, batch, to_counts=to_counts, lam=0.3)
    cells = pseudo_cells(out.attention, to_counts(out.prediction), batch.cell_bag)
    torch.testing.assert_close(on.cluster, cluster_loss(cells, batch.phenotype))
    torch.testing.assert_close(on.total, on.gene + 0.3 * on.cluster)
    with pytest.raises(ValueError, match="to_counts"):
        bitro_loss(out, target, batch, lam=0.3)


# ------------------------------------------------------------------------------------ whole-model checks
def test_bag_outputs_do_not_depend_on_batch_or_padding(bags: list[Bag]) -> None:
    torch.manual_seed(7)
    model = BiTro(small_config()).eval()  # dropout 0.1, inactive in eval
    batch = CellBatch.collate(bags)
    with torch.no_grad():
        together = model(batch)
        for b, bag in enumerate(bags):
            alone = model(CellBatch.collate([bag]))
            cells = slice(int(batch.bag_cell_ptr[b]), int(batch.bag_cell_ptr[b + 1]))
            torch.testing.assert_close(alone.prediction[0], together.prediction[b], atol=1e-6, rtol=0)
            torch.testing.assert_close(alone.attention, together.attention[cells], atol=1e-6, rtol=0)
            torch.testing.assert_close(alone.cells, together.cells[cells], atol=1e-6, rtol=0)
        reordered = model(CellBatch.collate([bags[2], bags[0], bags[1]]))
    torch.testing.assert_close(reordered.prediction, together.prediction[[2, 0, 1]], atol=1e-6, rtol=0)
    assert torch.isfinite(together.prediction).all()


def test_single_cell_bag_and_unit() -> None:
    rng = np.random.default_rng(8)
    model = BiTro(small_config()).eval()
    bag = Bag.single_unit(rng.normal(size=(1, F_IN)), np.zeros((1, 2)), np.zeros((2, 0)))
    out = model(CellBatch.collate([bag]))
    assert out.prediction.shape == (1, 6) and torch.isfinite(out.prediction).all()
    torch.testing.assert_close(out.attention, torch.ones(1, 6))


def test_gradient_reaches_every_parameter(bags: list[Bag]) -> None:
    torch.manual_seed(9)
    model = BiTro(small_config(dropout=0.0)).train()
    batch = CellBatch.collate(bags)
    out = model(batch)
    to_counts = Denormalise(torch.full((6,), 1.5), torch.full((6,), 0.5))
    loss = bitro_loss(out, torch.randn(3, 6), batch, to_counts=to_counts, lam=0.2).total
    loss.backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
        assert param.grad.abs().sum() > 0, name


def test_deterministic_with_seed(bags: list[Bag]) -> None:
    batch = CellBatch.collate(bags)
    results = []
    for _ in range(2):
        torch.manual_seed(10)
        model = BiTro(small_config()).train()  # dropout on: same seed, same masks
        out = model(batch)
        out.prediction.sum().backward()
        results.append((out.prediction.detach(), model.mil.queries.grad.clone()))
    assert torch.equal(results[0][0], results[1][0]) and torch.equal(results[0][1], results[1][1])


def test_config_round_trip_and_defaults() -> None:
    config = BiTroConfig(n_genes=250)
    assert (config.in_dim, config.dim, config.gat_layers, config.gat_heads) == (128, 128, 2, 4)
    assert (config.transformer_layers, config.transformer_heads, config.ff_mult, config.dropout) == (
        2,
        4,
        4,
        0.1,
    )
    assert (config.position_bin_um, config.position_range_um, config.position_dim) == (2.0, 64, 16)
    assert config.output == "identity"
    assert (config.readout, config.density_input, config.pooling) == ("per_gene", True, "gene_query")
    assert BiTroConfig.from_dict(config.to_dict()) == config
    # A model.json written before the readout options existed describes eq. 9's model.
    old = {k: v for k, v in config.to_dict().items() if k not in ("readout", "density_input")}
    assert BiTroConfig.from_dict(old) == replace(config, readout="shared", density_input=False)
    # One written before pooled_norm existed (or became the default) was trained without it.
    assert config.pooled_norm
    before = {k: v for k, v in config.to_dict().items() if k != "pooled_norm"}
    assert BiTroConfig.from_dict(before) == replace(config, pooled_norm=False)
    with pytest.raises(ValueError, match="unknown"):
        BiTroConfig.from_dict({**config.to_dict(), "heads": 3})
    model = BiTro(config)
    assert isinstance(model.gat.input_proj, torch.nn.Identity)  # in_dim == dim: no input projection
    with pytest.raises(ValueError, match="width"):
        model(CellBatch.collate([Bag.single_unit(np.zeros((2, 5)), np.zeros((2, 2)), np.zeros((2, 0)))]))


def test_parameter_count_and_flops() -> None:
    config = BiTroConfig(n_genes=250)
    model = BiTro(config)
    assert count_parameters(model) == sum(p.numel() for p in model.parameters())
    model.gat.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) < count_parameters(model)
    small, large = flops_per_cell(config, cells_per_unit=32), flops_per_cell(config, cells_per_unit=256)
    assert large["transformer"] > small["transformer"] and large["gat"] == small["gat"]
    assert small["total"] == pytest.approx(sum(v for k, v in small.items() if k != "total"))
    # GAT layer: per head W (2·D·D), aggregation over k+1 = 9 inputs, scores, head projection
    d = 128
    layer = 2 * d * 4 * d + 2 * 9 * 4 * d + 2 * 2 * 4 * d + 2 * 4 * d * d
    assert small["gat"] == 2 * layer


# --------------------------------------------------------------------------- readout and pooling options
def test_shared_readout_gives_every_gene_the_same_value_under_uniform_attention() -> None:
    """The defect the accuracy benchmark found: with eq. 9's shared readout, a gene's identity reaches its
    prediction only through attention, so a bag whose cells look alike predicts every gene alike."""
    torch.manual_seed(0)
    h = torch.randn(1, 8).expand(5, 8).contiguous()  # five identical cells: attention cannot tell them apart
    bag = torch.zeros(5, dtype=torch.long)
    shared, _ = GeneQueryMIL(4, 8, "identity")(h, bag, [5])
    assert torch.allclose(shared, shared[0, 0].expand_as(shared))
    per_gene, _ = GeneQueryMIL(4, 8, "identity", readout="per_gene")(h, bag, [5])
    assert per_gene[0].unique().numel() == 4


def test_per_gene_readout_by_hand() -> None:
    torch.manual_seed(1)
    mil = GeneQueryMIL(3, 4, "identity", readout="per_gene")
    h = torch.randn(6, 4)
    prediction, attention = mil(h, torch.zeros(6, dtype=torch.long), [6])
    z = attention.t() @ h  # (G, D)
    r = mil.readout
    hidden = F.relu(F.layer_norm(z, (4,), r.norm.weight, r.norm.bias) @ r.fc1.weight.t() + r.fc1.bias)
    weights, bias = mil.readout.gene_weights, mil.readout.gene_bias
    torch.testing.assert_close(prediction[0], (hidden * weights).sum(1) + bias)
    assert mil.readout.fc2 is None


def test_density_input_reads_cells_per_unit_not_bag_size() -> None:
    """Softmax pooling averages: without density_input, 4 or 12 copies of a spot's cells predict alike."""
    torch.manual_seed(2)
    mil = GeneQueryMIL(3, 4, "identity", readout="per_gene", density_input=True)
    with torch.no_grad():
        mil.density.normal_()  # not a constant vector: LayerNorm would remove that
    h = torch.randn(4, 4)
    few, _ = mil(h, torch.zeros(4, dtype=torch.long), [4], torch.tensor([4.0]))
    many, _ = mil(h.repeat(3, 1), torch.zeros(12, dtype=torch.long), [12], torch.tensor([12.0]))
    assert not torch.allclose(few, many)
    plain = GeneQueryMIL(3, 4, "identity")
    a, _ = plain(h, torch.zeros(4, dtype=torch.long), [4])
    b, _ = plain(h.repeat(3, 1), torch.zeros(12, dtype=torch.long), [12])
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="density"):
        mil(h, torch.zeros(4, dtype=torch.long), [4])


def test_mean_pooling_ablation_attends_uniformly(bags: list[Bag]) -> None:
    torch.manual_seed(3)
    model = BiTro(small_config(pooling="mean")).eval()
    batch = CellBatch.collate(bags)
    out = model(batch)
    sizes = batch.bag_sizes
    torch.testing.assert_close(out.attention, (1.0 / sizes.float())[batch.cell_bag][:, None].expand(-1, 6))
    assert out.prediction[0].unique().numel() == 6  # one head per gene
    with pytest.raises(ValueError, match="pooling"):
        BiTro(small_config(pooling="max"))
    with pytest.raises(ValueError, match="per_gene"):
        BiTro(small_config(pooling="mean", readout="shared"))


@pytest.mark.parametrize(
    "options",
    [{"readout": "shared", "density_input": False}, {"density_input": False}, {}, {"pooling": "mean"}],
)
def test_options_round_trip_and_reach_every_parameter(bags: list[Bag], options: dict) -> None:
    config = small_config(dropout=0.0, **options)
    assert BiTroConfig.from_dict(config.to_dict()) == config
    torch.manual_seed(4)
    model = BiTro(config).train()
    out = model(CellBatch.collate(bags))
    out.prediction.square().sum().backward()
    unused = {"mil.queries"} if options.get("pooling") == "mean" else set()
    for name, param in model.named_parameters():
        if name not in unused:
            assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_schema_lists_the_model_options_the_model_knows() -> None:
    import typing
    from pathlib import Path

    import yaml

    from bitro.model.mil import Pooling, ReadoutKind

    schema = yaml.safe_load((Path(__file__).parents[1] / "workflow/schemas/config.schema.yaml").read_text())
    model = schema["properties"]["model"]["properties"]
    assert model["readout"]["enum"] == list(typing.get_args(ReadoutKind))
    assert model["pooling"]["enum"] == list(typing.get_args(Pooling))


# ---------------------------------------------------------------- the fast forms against the reference ones
def reference_encode(model: BiTro, batch: CellBatch) -> torch.Tensor:
    """``BiTro.encode`` as it was before the fast forms: PyG's sparse ``GATConv`` on the edge list, and
    every Transformer block on the fully padded units."""
    h = model.gat(batch.features, batch.edge_index)  # no layout: the sparse form
    t = model.transformer
    x = t.dropout(t.fuse(torch.cat([h, t.position(batch.offsets_um)], dim=-1)))
    layout = SegmentPadding.from_ptr(batch.unit_ptr)
    padded = layout.pad(x)
    for block in t.blocks:
        padded = block(padded, layout.mask)
    return t.norm(layout.unpad(padded))


def test_dense_gat_equals_gatconv_with_duplicate_edges_and_self_loops(bags: list[Bag]) -> None:
    torch.manual_seed(3)
    batch = CellBatch.collate(bags)
    # random_bag's edges repeat some pairs; add listed self-loops too (GATConv replaces them by one)
    loops = torch.arange(0, batch.n_cells, 3).repeat(2, 1)
    edge_index = torch.cat([batch.edge_index, loops, batch.edge_index[:, :4]], dim=1)
    layer = GATLayer(dim=F_IN, heads=4, dropout=0.0, residual=True)
    graph = dense_graph(edge_index, batch.unit_padding, max_ratio=math.inf)
    assert graph is not None
    x = batch.features.clone().requires_grad_(True)
    sparse = layer(x, edge_index)
    (grad_sparse,) = torch.autograd.grad(sparse.square().sum(), x)
    dense = layer(x, edge_index, graph)
    (grad_dense,) = torch.autograd.grad(dense.square().sum(), x)
    torch.testing.assert_close(dense, sparse, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(grad_dense, grad_sparse, atol=1e-5, rtol=1e-5)


def test_dense_gat_only_where_the_padding_is_small() -> None:
    rng = np.random.default_rng(4)
    small = CellBatch.collate([random_bag(rng, [12, 20, 4])])
    assert dense_graph(small.edge_index, small.unit_padding) is not None
    lopsided = CellBatch.collate([random_bag(rng, [400] + [3] * 60)])  # one huge unit: (61, 400, 400)
    assert dense_graph(lopsided.edge_index, lopsided.unit_padding) is None


def test_fast_encode_equals_the_reference_in_predictions_losses_and_gradients(bags: list[Bag]) -> None:
    torch.manual_seed(5)
    model = BiTro(small_config(dropout=0.0))  # dropout off: the two forms draw their masks differently
    batch = CellBatch.collate(bags)
    to_counts = Denormalise(torch.full((6,), 1.5), torch.full((6,), 0.5))
    target = torch.randn(3, 6)
    results = []
    for fast in (True, False):
        copy = deepcopy(model)  # each its own pooled_norm running moments
        if not fast:
            copy.encode = lambda b, m=copy: reference_encode(m, b)  # type: ignore[method-assign]
        with torch.no_grad():
            prediction = copy.eval()(batch).prediction
        loss = bitro_loss(copy.train()(batch), target, batch, to_counts=to_counts, lam=0.2).total
        loss.backward()
        grads = {n: p.grad for n, p in copy.named_parameters() if p.grad is not None}
        results.append((prediction, loss.detach(), grads))
    (fast_pred, fast_loss, fast_grads), (ref_pred, ref_loss, ref_grads) = results
    torch.testing.assert_close(fast_pred, ref_pred, atol=1e-6, rtol=0)
    torch.testing.assert_close(fast_loss, ref_loss, atol=1e-6, rtol=1e-6)
    assert fast_grads.keys() == ref_grads.keys()
    for name, grad in fast_grads.items():
        torch.testing.assert_close(grad, ref_grads[name], atol=1e-5, rtol=1e-4, msg=name)
