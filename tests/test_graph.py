"""kNN cell graphs within units, against brute force (docs/pitfalls.md#knn-graphs-without-pyg-lib)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bitro.errors import InputError
from bitro.features.graph import knn_graphs, read_graph, write_graph


def random_cells(seed: int, n: int = 3000, n_units: int = 120) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    unit = rng.integers(-1, n_units, size=n)
    # Units of every size, including a few with k cells or fewer.
    unit[:40] = np.repeat(np.arange(n_units, n_units + 10), 4)
    centre = rng.uniform(0, 5000, size=(n_units + 10, 2))
    xy = centre[unit] + rng.normal(0, 20, size=(n, 2))
    return xy[:, 0], xy[:, 1], unit


def brute_force(x: np.ndarray, y: np.ndarray, unit: np.ndarray, k: int) -> set[tuple[int, int]]:
    edges = set()
    for u in np.unique(unit[unit >= 0]):
        members = np.nonzero(unit == u)[0]
        d = np.hypot(x[members, None] - x[None, members], y[members, None] - y[None, members])
        np.fill_diagonal(d, np.inf)
        for i, row in enumerate(d):
            nearest = np.argsort(row)[: min(k, len(members) - 1)]
            edges.update((int(members[j]), int(members[i])) for j in nearest)
    return edges


@pytest.mark.parametrize(("seed", "k"), [(0, 8), (1, 3), (2, 1)])
def test_edges_equal_brute_force_knn_within_units(seed: int, k: int) -> None:
    x, y, unit = random_cells(seed)
    graphs = knn_graphs(x, y, unit, k=k)
    src, dst = graphs.global_edges()
    assert set(zip(src.tolist(), dst.tolist(), strict=True)) == brute_force(x, y, unit, k)
    assert len(src) == len(set(zip(src.tolist(), dst.tolist(), strict=True)))
    assert np.array_equal(unit[src], unit[dst]), "an edge crosses units"
    assert (unit[dst] >= 0).all()


def test_layout_is_per_unit_csr_with_local_indices() -> None:
    x, y, unit = random_cells(3)
    graphs = knn_graphs(x, y, unit, k=8)
    assert np.array_equal(graphs.unit_ids, np.unique(unit[unit >= 0]))
    for position, u in enumerate(graphs.unit_ids):
        cells, edges = graphs.unit(position)
        assert np.array_equal(cells, np.nonzero(unit == u)[0])
        n = len(cells)
        assert edges.dtype == np.int32 and (edges >= 0).all() and (edges < n).all()
        incoming = np.bincount(edges[1], minlength=n)
        assert np.all(incoming == min(8, n - 1))
        assert not np.any(edges[0] == edges[1])


def test_self_loops_on_request_and_duplicate_points() -> None:
    x = np.zeros(12)
    y = np.zeros(12)
    unit = np.zeros(12, dtype=int)
    graphs = knn_graphs(x, y, unit, k=8, self_loops=True)
    _, edges = graphs.unit(0)
    assert np.bincount(edges[1], minlength=12).tolist() == [9] * 12
    assert (edges[0] == edges[1]).sum() == 12


def test_graph_file_round_trip_and_bad_file(tmp_path: Path) -> None:
    x, y, unit = random_cells(4, n=500, n_units=20)
    graphs = knn_graphs(x, y, unit)
    write_graph(graphs, tmp_path / "graph.npz")
    back = read_graph(tmp_path / "graph.npz")
    assert back.k == 8 and not back.self_loops
    assert np.array_equal(back.global_edges(), graphs.global_edges())
    np.savez(tmp_path / "bad.npz", edges=np.zeros((2, 3)))
    with pytest.raises(InputError, match=r"bad\.npz"):
        read_graph(tmp_path / "bad.npz")
