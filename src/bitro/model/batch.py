"""Packed cells of several bags: the model's input (docs/methods.md).

A *bag* is what one target vector describes: a spot (ST, one unit), a Xenium pseudo-spot (one unit) or a
slide (bulk, many units: its spot-sized patches). A *unit* is a spatial neighbourhood: its cells share a kNN
graph (GAT) and attend to each other (Transformer); edges and attention never cross units.

A batch packs the cells of all its bags into one array: cells are grouped contiguously by unit and units
contiguously by bag, so two pointer arrays describe the whole structure::

    cells of unit u  = [unit_ptr[u], unit_ptr[u + 1])
    units of bag b   = [bag_ptr[b], bag_ptr[b + 1])
    cells of bag b   = [unit_ptr[bag_ptr[b]], unit_ptr[bag_ptr[b + 1]])

Units with no cells are allowed (they contribute nothing); a bag with no cells is an error, because its
attention softmax would be empty.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields
from functools import cached_property

import numpy as np
import torch
from torch import Tensor

from bitro.model.padding import SegmentPadding


@dataclass(frozen=True)
class Bag:
    """One bag's cells as numpy arrays, the unit of :meth:`CellBatch.collate`.

    Attributes
    ----------
    features
        (n, F) float32 cell features (128-d PCA features).
    offsets_um
        (n, 2) float32: cell centroid minus its unit's centre, µm (x, y).
    phenotype
        (n,) int64 K-means phenotype per cell, −1 where unknown.
    unit_sizes
        (u,) int64 cells per unit; cells are grouped by unit in this order. Zeros are allowed.
    unit_edges
        u arrays of shape (2, e_u): kNN edges (source, target) as positions *local to the unit*
        (``graph.npz`` layout), without self-loops (GATConv adds them).
    """

    features: np.ndarray
    offsets_um: np.ndarray
    phenotype: np.ndarray
    unit_sizes: np.ndarray
    unit_edges: Sequence[np.ndarray]

    def __post_init__(self) -> None:
        features = np.asarray(self.features, dtype=np.float32)
        offsets = np.asarray(self.offsets_um, dtype=np.float32)
        phenotype = np.asarray(self.phenotype, dtype=np.int64)
        sizes = np.asarray(self.unit_sizes, dtype=np.int64).reshape(-1)
        edges = tuple(_local_edges(e) for e in self.unit_edges)
        n = features.shape[0] if features.ndim == 2 else -1
        if features.ndim != 2:
            raise ValueError(f"features must be 2-D (cells × features), got shape {features.shape}")
        if offsets.shape != (n, 2):
            raise ValueError(f"offsets_um must have shape ({n}, 2), got {offsets.shape}")
        if phenotype.shape != (n,):
            raise ValueError(f"phenotype must have shape ({n},), got {phenotype.shape}")
        if (sizes < 0).any() or int(sizes.sum()) != n:
            raise ValueError(
                f"unit_sizes must be non-negative and sum to the {n} cells, got {sizes.tolist()}"
            )
        if len(edges) != len(sizes):
            raise ValueError(f"need one edge array per unit: {len(sizes)} units, {len(edges)} edge arrays")
        for u, (size, e) in enumerate(zip(sizes, edges, strict=True)):
            if e.size and (e.min() < 0 or e.max() >= size):
                raise ValueError(
                    f"unit {u}: edge index outside its {size} cells (edges are local to the unit)"
                )
        object.__setattr__(self, "features", features)
        object.__setattr__(self, "offsets_um", offsets)
        object.__setattr__(self, "phenotype", phenotype)
        object.__setattr__(self, "unit_sizes", sizes)
        object.__setattr__(self, "unit_edges", edges)

    @classmethod
    def single_unit(
        cls,
        features: np.ndarray,
        offsets_um: np.ndarray,
        edges: np.ndarray,
        phenotype: np.ndarray | None = None,
    ) -> Bag:
        """A bag made of one unit (an ST spot or a Xenium pseudo-spot); phenotype defaults to −1."""
        n = int(np.asarray(features).shape[0])
        pheno = np.full(n, -1, dtype=np.int64) if phenotype is None else phenotype
        return cls(features, offsets_um, pheno, np.array([n]), (np.asarray(edges),))

    @property
    def n_cells(self) -> int:
        """Number of cells."""
        return int(self.features.shape[0])

    def select_units(self, start: int, stop: int) -> Bag:
        """The bag made of units ``start:stop`` of this one (for chunked prediction)."""
        ptr = np.concatenate([[0], np.cumsum(self.unit_sizes)])
        lo, hi = int(ptr[start]), int(ptr[stop])
        return Bag(
            self.features[lo:hi],
            self.offsets_um[lo:hi],
            self.phenotype[lo:hi],
            self.unit_sizes[start:stop],
            self.unit_edges[start:stop],
        )


def iter_chunks(bag: Bag, max_cells: int) -> Iterator[CellBatch]:
    """Split one bag into consecutive groups of whole units, each a one-bag :class:`CellBatch`.

    Groups hold at most ``max_cells`` cells, except a single unit larger than that, which forms a group of
    its own (units are never split: attention runs over a whole unit). Empty units ride along with their
    neighbours; trailing empty units are dropped (they contribute nothing).

    Parameters
    ----------
    bag
        The (possibly huge) bag, e.g. a whole slide.
    max_cells
        Cell budget per chunk, e.g. 50 000.
    """
    if max_cells < 1:
        raise ValueError(f"max_cells must be at least 1, got {max_cells}")
    start, cells = 0, 0
    for u, size in enumerate(bag.unit_sizes.tolist()):
        if cells and cells + size > max_cells:
            yield CellBatch.collate([bag.select_units(start, u)])
            start, cells = u, 0
        cells += size
    if cells:
        yield CellBatch.collate([bag.select_units(start, len(bag.unit_sizes))])


@dataclass(frozen=True)
class CellBatch:
    """Packed cells of several bags (see the module docstring for the layout).

    Attributes
    ----------
    features
        (N, F) float32 cell features.
    offsets_um
        (N, 2) float32 cell centroid minus its unit centre, µm.
    phenotype
        (N,) int64 phenotype id, −1 if unknown.
    edge_index
        (2, E) int64 kNN edges source → target in packed indices, never crossing units.
    unit_ptr
        (U+1,) int64: cells of unit u are ``[unit_ptr[u], unit_ptr[u+1])``.
    bag_ptr
        (B+1,) int64: units of bag b are ``[bag_ptr[b], bag_ptr[b+1])``.

    Notes
    -----
    Treat instances as immutable: derived index tensors are cached on first use.
    """

    features: Tensor
    offsets_um: Tensor
    phenotype: Tensor
    edge_index: Tensor
    unit_ptr: Tensor
    bag_ptr: Tensor

    # ----------------------------------------------------------------------------------------- sizes
    @property
    def n_cells(self) -> int:
        """N, the number of cells."""
        return int(self.features.shape[0])

    @property
    def n_units(self) -> int:
        """U, the number of units."""
        return int(self.unit_ptr.shape[0]) - 1

    @property
    def n_bags(self) -> int:
        """B, the number of bags."""
        return int(self.bag_ptr.shape[0]) - 1

    @property
    def device(self) -> torch.device:
        """Device of the tensors."""
        return self.features.device

    @cached_property
    def unit_sizes(self) -> Tensor:
        """(U,) cells per unit."""
        return self.unit_ptr[1:] - self.unit_ptr[:-1]

    @cached_property
    def bag_cell_ptr(self) -> Tensor:
        """(B+1,): cells of bag b are ``[bag_cell_ptr[b], bag_cell_ptr[b+1])``."""
        return self.unit_ptr[self.bag_ptr]

    @cached_property
    def bag_sizes(self) -> Tensor:
        """(B,) cells per bag."""
        return self.bag_cell_ptr[1:] - self.bag_cell_ptr[:-1]

    # ------------------------------------------------------------------------------------ index maps
    @cached_property
    def cell_unit(self) -> Tensor:
        """(N,) unit of each cell."""
        units = torch.arange(self.n_units, device=self.device)
        return torch.repeat_interleave(units, self.unit_sizes, output_size=self.n_cells)

    @cached_property
    def unit_bag(self) -> Tensor:
        """(U,) bag of each unit."""
        bags = torch.arange(self.n_bags, device=self.device)
        return torch.repeat_interleave(bags, self.bag_ptr[1:] - self.bag_ptr[:-1], output_size=self.n_units)

    @cached_property
    def cell_bag(self) -> Tensor:
        """(N,) bag of each cell."""
        bags = torch.arange(self.n_bags, device=self.device)
        return torch.repeat_interleave(bags, self.bag_sizes, output_size=self.n_cells)

    @cached_property
    def unit_padding(self) -> SegmentPadding:
        """The (units × largest unit) padded layout of the cells, for attention within units."""
        return SegmentPadding.from_ptr(self.unit_ptr)

    # --------------------------------------------------------------------------------------- methods
    def to(self, device: torch.device | str) -> CellBatch:
        """The same batch on ``device``."""
        return CellBatch(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def validate(self) -> None:
        """Check the packed layout; raise ``ValueError`` naming the first problem.

        Checks shapes and dtypes, monotone pointers that cover every cell and unit, bags with at least one
        cell, and edges that stay inside one unit.
        """
        n = self.n_cells
        if self.features.ndim != 2 or not self.features.is_floating_point():
            raise ValueError(f"features must be a 2-D float tensor, got {tuple(self.features.shape)}")
        if tuple(self.offsets_um.shape) != (n, 2):
            raise ValueError(f"offsets_um must have shape ({n}, 2), got {tuple(self.offsets_um.shape)}")
        if tuple(self.phenotype.shape) != (n,):
            raise ValueError(f"phenotype must have shape ({n},), got {tuple(self.phenotype.shape)}")
        for name in ("phenotype", "edge_index", "unit_ptr", "bag_ptr"):
            if getattr(self, name).dtype != torch.int64:
                raise ValueError(f"{name} must be int64, got {getattr(self, name).dtype}")
        _check_ptr("unit_ptr", self.unit_ptr, n)
        _check_ptr("bag_ptr", self.bag_ptr, self.n_units)
        empty = torch.nonzero(self.bag_sizes == 0).flatten().tolist()
        if empty:
            raise ValueError(f"bag(s) {empty} have no cells; a bag needs at least one cell")
        if self.edge_index.ndim != 2 or self.edge_index.shape[0] != 2:
            raise ValueError(f"edge_index must have shape (2, E), got {tuple(self.edge_index.shape)}")
        if self.edge_index.numel():
            if int(self.edge_index.min()) < 0 or int(self.edge_index.max()) >= n:
                raise ValueError("edge_index refers to cells outside the batch")
            crossing = self.cell_unit[self.edge_index[0]] != self.cell_unit[self.edge_index[1]]
            if bool(crossing.any()):
                raise ValueError(f"{int(crossing.sum())} edge(s) cross units; edges must stay within a unit")

    @classmethod
    def collate(cls, bags: Sequence[Bag]) -> CellBatch:
        """Pack bags into one batch (CPU tensors; call :meth:`to` to move them).

        Parameters
        ----------
        bags
            One :class:`Bag` per target vector, in batch order.

        Raises
        ------
        ValueError
            No bags, a bag without cells, or feature widths that differ between bags.
        """
        if not bags:
            raise ValueError("cannot collate an empty list of bags")
        for b, bag in enumerate(bags):
            if bag.n_cells == 0:
                raise ValueError(f"bag {b} has no cells; a bag needs at least one cell")
        widths = {bag.features.shape[1] for bag in bags}
        if len(widths) != 1:
            raise ValueError(f"bags have different feature widths: {sorted(widths)}")
        unit_sizes = np.concatenate([bag.unit_sizes for bag in bags])
        unit_ptr = np.concatenate([[0], np.cumsum(unit_sizes)])
        bag_ptr = np.concatenate([[0], np.cumsum([len(bag.unit_sizes) for bag in bags])])
        edges = [
            e + unit_ptr[bag_ptr[b] + u]
            for b, bag in enumerate(bags)
            for u, e in enumerate(bag.unit_edges)
            if e.size
        ]
        edge_index = np.concatenate(edges, axis=1) if edges else np.zeros((2, 0), dtype=np.int64)
        return cls(
            features=torch.from_numpy(np.concatenate([bag.features for bag in bags])),
            offsets_um=torch.from_numpy(np.concatenate([bag.offsets_um for bag in bags])),
            phenotype=torch.from_numpy(np.concatenate([bag.phenotype for bag in bags])),
            edge_index=torch.from_numpy(edge_index.astype(np.int64)),
            unit_ptr=torch.from_numpy(unit_ptr.astype(np.int64)),
            bag_ptr=torch.from_numpy(bag_ptr.astype(np.int64)),
        )


def _local_edges(edges: np.ndarray) -> np.ndarray:
    """One unit's edges as a (2, e) int64 array; any empty array means no edges."""
    e = np.asarray(edges)
    if e.size == 0:
        return np.zeros((2, 0), dtype=np.int64)
    if e.ndim != 2 or e.shape[0] != 2:
        raise ValueError(f"unit edges must have shape (2, e) (source row, target row), got {e.shape}")
    return e.astype(np.int64)


def _check_ptr(name: str, ptr: Tensor, total: int) -> None:
    """A pointer array must start at 0, never decrease and end at ``total``."""
    if ptr.ndim != 1 or ptr.numel() < 2:
        raise ValueError(f"{name} must be 1-D with at least 2 entries, got shape {tuple(ptr.shape)}")
    if int(ptr[0]) != 0 or int(ptr[-1]) != total:
        raise ValueError(f"{name} must run from 0 to {total}, got {int(ptr[0])}..{int(ptr[-1])}")
    if bool((ptr[1:] < ptr[:-1]).any()):
        raise ValueError(f"{name} must be non-decreasing")
