"""Cell graphs: k nearest neighbours within each unit, by Euclidean distance in µm (paper §3.3).

``graph.npz`` (docs/formats.md) stores one graph per unit in CSR form:

- ``unit_ids`` (n_units,) int64: the units that hold cells, ascending;
- ``cell_index`` (n_cells_in_units,) int32: rows of ``cells.parquet``, grouped by unit (ascending rows
  within a unit); ``cell_offsets`` (n_units + 1,) int64 delimits each unit's cells;
- ``edges`` (2, n_edges) int32: ``(source, target)`` as *local* positions in the unit's cell list, so a
  unit's bag is ``cell_index[cell_offsets[u]:cell_offsets[u + 1]]`` and its edges index into it directly;
  ``edge_offsets`` (n_units + 1,) int64 delimits each unit's edges;
- ``k`` and ``self_loops``.

Each cell receives an edge from each of its k nearest neighbours in its unit (messages flow from source to
target, PyTorch Geometric's default), so every target has exactly k incoming edges; a unit with k cells or
fewer connects all of them. Self-loops are not stored by default, because ``GATConv`` adds them itself
(``add_self_loops=True``); pass ``self_loops=True`` to store them for a layer that does not.

Neighbours come from one ``scipy.spatial.cKDTree`` query over all cells (no pyg-lib), with
the unit as a third coordinate far larger than any slide, so no query can cross units.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from bitro._atomic import atomic_path
from bitro.errors import ConfigError, InputError
from bitro.io.validate import require_file

GRAPH_KEYS = ("unit_ids", "cell_index", "cell_offsets", "edges", "edge_offsets", "k", "self_loops")


@dataclass(frozen=True)
class UnitGraphs:
    """kNN graphs of every unit of a sample (see the module docstring for the fields)."""

    unit_ids: np.ndarray
    cell_index: np.ndarray
    cell_offsets: np.ndarray
    edges: np.ndarray
    edge_offsets: np.ndarray
    k: int
    self_loops: bool

    def unit(self, position: int) -> tuple[np.ndarray, np.ndarray]:
        """(cell rows, local edges 2 × e) of the unit at ``position`` in ``unit_ids``."""
        cells = self.cell_index[self.cell_offsets[position] : self.cell_offsets[position + 1]]
        edges = self.edges[:, self.edge_offsets[position] : self.edge_offsets[position + 1]]
        return cells, edges

    def global_edges(self) -> np.ndarray:
        """All edges as ``cells.parquet`` rows (2 × n_edges, int64)."""
        unit_of_edge = np.repeat(np.arange(len(self.unit_ids)), np.diff(self.edge_offsets))
        base = self.cell_offsets[:-1][unit_of_edge]
        return self.cell_index[base + self.edges].astype(np.int64)


def knn_graphs(
    x_um: np.ndarray, y_um: np.ndarray, unit_id: np.ndarray, *, k: int = 8, self_loops: bool = False
) -> UnitGraphs:
    """Build the kNN graph of every unit.

    Parameters
    ----------
    x_um, y_um
        Cell centroids in µm (rows of ``cells.parquet``).
    unit_id
        Each cell's unit (−1: in no unit; such cells get no graph).
    k
        Neighbours per cell.
    self_loops
        Also store an edge from each cell to itself.
    """
    if k < 1:
        raise ConfigError("features.graph_k", f"k must be at least 1, got {k}")
    unit_id = np.asarray(unit_id, dtype=np.int64)
    rows = np.nonzero(unit_id >= 0)[0]
    order = rows[np.lexsort((rows, unit_id[rows]))]
    units, starts, counts = np.unique(unit_id[order], return_index=True, return_counts=True)
    cell_offsets = np.append(starts, len(order)).astype(np.int64)
    position = np.empty(len(unit_id), dtype=np.int64)
    position[order] = np.arange(len(order)) - np.repeat(starts, counts)
    unit_pos = np.repeat(np.arange(len(units)), counts)  # unit position of each grouped cell

    sources, targets = [], []
    small = counts <= k
    # Units with at most k cells: every ordered pair of distinct cells.
    for size in np.unique(counts[small]):
        first = starts[small & (counts == size)]
        grid = first[:, None] + np.arange(size)[None, :]
        src = np.repeat(grid, size, axis=1).reshape(-1)
        dst = np.tile(grid, (1, size)).reshape(-1)
        keep = src != dst
        sources.append(src[keep])
        targets.append(dst[keep])
    # Larger units: one KD-tree over all their cells, units set far apart along a third axis.
    big_cells = np.nonzero(~small[unit_pos])[0]
    if len(big_cells):
        xy = np.column_stack([np.asarray(x_um, np.float64)[order], np.asarray(y_um, np.float64)[order]])
        span = float(np.ptp(xy[big_cells], axis=0).max()) + 1.0
        points = np.column_stack([xy[big_cells], unit_pos[big_cells] * (4.0 * span)])
        _, neighbours = cKDTree(points).query(points, k=k + 1)
        neighbours = big_cells[neighbours]
        # Drop each cell from its own list; with duplicate points it may not come first, or (more than
        # k + 1 copies) not at all, in which case the farthest neighbour goes instead.
        is_self = neighbours == big_cells[:, None]
        is_self[~is_self.any(axis=1), -1] = True
        sources.append(neighbours[~is_self])
        targets.append(np.repeat(big_cells, k))
    src = np.concatenate(sources) if sources else np.empty(0, np.int64)
    dst = np.concatenate(targets) if targets else np.empty(0, np.int64)
    if self_loops:
        src = np.concatenate([src, np.arange(len(order))])
        dst = np.concatenate([dst, np.arange(len(order))])
    edge_unit = unit_pos[dst]
    sort = np.lexsort((src, dst, edge_unit))
    src, dst, edge_unit = src[sort], dst[sort], edge_unit[sort]
    edge_offsets = np.searchsorted(edge_unit, np.arange(len(units) + 1)).astype(np.int64)
    local = np.stack([position[order][src], position[order][dst]]).astype(np.int32)
    return UnitGraphs(
        unit_ids=units.astype(np.int64),
        cell_index=order.astype(np.int32),
        cell_offsets=cell_offsets,
        edges=local,
        edge_offsets=edge_offsets,
        k=int(k),
        self_loops=bool(self_loops),
    )


def write_graph(graphs: UnitGraphs, path: str | Path) -> None:
    """Write ``graph.npz`` atomically."""
    with atomic_path(path) as tmp:
        np.savez_compressed(tmp, **{key: getattr(graphs, key) for key in GRAPH_KEYS})


def read_graph(path: str | Path) -> UnitGraphs:
    """Read ``graph.npz``, checking that offsets and indices are consistent."""
    path = require_file(path, "cell graph")
    try:
        with np.load(path) as data:
            fields = {key: data[key] for key in GRAPH_KEYS}
    except (OSError, KeyError, ValueError) as exc:
        raise InputError(path, f"is not a bitro cell graph ({exc})") from exc
    graphs = UnitGraphs(**{**fields, "k": int(fields["k"]), "self_loops": bool(fields["self_loops"])})
    sizes = np.diff(graphs.cell_offsets)
    unit_of_edge = np.repeat(np.arange(len(graphs.unit_ids)), np.diff(graphs.edge_offsets))
    if graphs.edges.size and (graphs.edges.min() < 0 or np.any(graphs.edges >= sizes[unit_of_edge])):
        raise InputError(path, "edges point outside their unit")
    return graphs
