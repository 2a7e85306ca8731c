"""Exact slide-level prediction in bounded memory: online softmax over chunks of a huge bag.

A bulk slide holds 10⁴–10⁶ cells. Because the GAT and the Transformer work within units, the cells of a
chunk of whole units get the same features H as in a full forward pass; only the MIL softmax spans the
bag. It is accumulated per gene over chunks with running values (log-sum-exp trick)::

    m_g  = max_i l_ig                         running maximum of the scores
    s_g  = Σ_i exp(l_ig − m_g)                running normaliser
    w_g  = Σ_i exp(l_ig − m_g) h_i            running weighted sum (D values per gene)

rescaled by exp(m_old − m_new) whenever the maximum grows; Z = w / s equals eq. 8 exactly. A second pass
(:func:`stream_attention`) recomputes each chunk's scores and returns A[g, i] = exp(l_ig − m_g) / s_g chunk
by chunk, so pseudo-cell profiles of a million cells never need the full G × N matrix.

Memory is bounded by one chunk plus O(G·D). The model must be in eval mode (both passes must see the same
features), and the chunk iterables must yield the same chunks in the same order in both passes.

A model with slide context (:mod:`bitro.model.context`) needs every patch token before any cell's final
features exist. :func:`predict_streaming` then encodes each chunk once, keeps its encoded cells
(N × D, 0.5 GB at 10⁶ cells and D = 128) and the sum of each unit's cells, runs the token Transformer
over all of the slide's units at once (one sequence, no mask: the memory-efficient attention kernel)
and only then folds the chunks into the softmax, each cell plus its unit's context. The per-unit context
(U × D) is kept in the statistics, so :func:`stream_attention` adds it to each chunk it re-encodes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from bitro.model.batch import CellBatch
from bitro.model.bitro import BiTro
from bitro.model.pseudocells import pseudo_cells


@dataclass
class OnlineGeneAttention:
    """Running per-gene softmax statistics of one bag (see the module docstring).

    Attributes
    ----------
    max
        (G,) running maximum m of the scores.
    sum
        (G,) running normaliser s.
    weighted
        (G, D) running weighted sum w.
    n_cells
        Cells seen so far.
    context
        (U, D) slide-level context of each unit of the bag, in chunk order (models with slide context).
    """

    max: Tensor
    sum: Tensor
    weighted: Tensor
    n_cells: int = 0
    context: Tensor | None = None

    @classmethod
    def empty(
        cls, n_genes: int, dim: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float64
    ) -> OnlineGeneAttention:
        """Statistics before any cell (m = −∞, s = 0, w = 0) in the accumulation dtype."""
        return cls(
            max=torch.full((n_genes,), -torch.inf, device=device, dtype=dtype),
            sum=torch.zeros(n_genes, device=device, dtype=dtype),
            weighted=torch.zeros(n_genes, dim, device=device, dtype=dtype),
        )

    def update(self, logits: Tensor, h: Tensor) -> None:
        """Fold in one chunk: (n, G) scores and (n, D) cell features."""
        logits, h = logits.to(self.sum.dtype), h.to(self.sum.dtype)
        new_max = torch.maximum(self.max, logits.max(dim=0).values)
        rescale = torch.exp(self.max - new_max)  # 0 on the first chunk (exp(−∞))
        e = torch.exp(logits - new_max)
        self.sum = self.sum * rescale + e.sum(dim=0)
        self.weighted = self.weighted * rescale[:, None] + e.t() @ h
        self.max = new_max
        self.n_cells += int(logits.shape[0])

    def pooled(self) -> Tensor:
        """(G, D) Z = A·H over every cell seen (eq. 8)."""
        if self.n_cells == 0:
            raise ValueError("no cells were streamed; a bag needs at least one cell")
        return self.weighted / self.sum[:, None]

    def attention(self, logits: Tensor) -> Tensor:
        """(n, G) scores of some of the bag's cells → their final attention A[g, i] (cell-major)."""
        return (torch.exp(logits.to(self.sum.dtype) - self.max) / self.sum).to(logits.dtype)


@dataclass(frozen=True)
class StreamingPrediction:
    """Result of :func:`predict_streaming`: (G,) prediction and the softmax statistics for pass two."""

    prediction: Tensor
    state: OnlineGeneAttention


def _one_bag_chunks(chunks: Iterable[CellBatch], device: torch.device) -> Iterator[CellBatch]:
    for i, chunk in enumerate(chunks):
        if chunk.n_bags != 1:
            raise ValueError(f"chunk {i} holds {chunk.n_bags} bags; each chunk must be part of one bag")
        yield chunk.to(device)


def _require_eval(model: BiTro) -> None:
    if model.training:
        raise ValueError("streaming needs the model in eval mode (call model.eval()): both passes must agree")


@torch.no_grad()
def predict_streaming(
    model: BiTro, chunks: Iterable[CellBatch], accumulate_dtype: torch.dtype = torch.float64
) -> StreamingPrediction:
    """Predict one huge bag from chunks of its units with exact, bounded-memory MIL attention.

    Parameters
    ----------
    model
        A :class:`~bitro.model.bitro.BiTro` in eval mode.
    chunks
        One-bag :class:`~bitro.model.batch.CellBatch` chunks that together hold every unit of the bag
        once, e.g. ``iter_chunks(bag, 50_000)``.
    accumulate_dtype
        dtype of the running statistics (float64 keeps sums over 10⁶ cells exact to float32 precision).

    Returns
    -------
    StreamingPrediction
        The (G,) prediction in target space and the statistics :func:`stream_attention` needs.
    """
    _require_eval(model)
    device = next(model.parameters()).device
    state = OnlineGeneAttention.empty(model.config.n_genes, model.config.dim, device, accumulate_dtype)
    cells = units = 0
    if model.context is None:
        for chunk in _one_bag_chunks(chunks, device):
            h = model.encode(chunk)
            state.update(model.mil.logits(h), h)
            cells, units = cells + chunk.n_cells, units + int((chunk.unit_sizes > 0).sum())
    else:
        encoded, state.context = _slide_context(model, chunks, device)
        for h, unit in encoded:
            h = h + state.context[unit]
            state.update(model.mil.logits(h), h)
        cells = sum(int(h.shape[0]) for h, _ in encoded)
        units = int(torch.unique(torch.cat([unit for _, unit in encoded])).numel()) if encoded else 0
    z = state.pooled().to(model.mil.queries.dtype)
    density = torch.tensor(cells / max(units, 1), dtype=z.dtype, device=z.device)
    return StreamingPrediction(prediction=model.mil.read(z, density), state=state)


@torch.no_grad()
def stream_attention(
    model: BiTro, chunks: Iterable[CellBatch], state: OnlineGeneAttention
) -> Iterator[Tensor]:
    """Second pass: yield each chunk's (n_chunk, G) attention, ``[i, g] = A[g, i]`` over the whole bag.

    ``chunks`` must repeat the chunks given to :func:`predict_streaming`, in the same order.
    """
    _require_eval(model)
    device = next(model.parameters()).device
    if model.context is not None and state.context is None:
        raise ValueError("the model has slide context: pass the statistics predict_streaming returned")
    offset = 0
    for chunk in _one_bag_chunks(chunks, device):
        h = model.encode(chunk)
        if model.context is not None:
            assert state.context is not None
            h = h + state.context[chunk.cell_unit + offset]
            offset += chunk.n_units
        yield state.attention(model.mil.logits(h))


def _slide_context(
    model: BiTro, chunks: Iterable[CellBatch], device: torch.device
) -> tuple[list[tuple[Tensor, Tensor]], Tensor]:
    """Pass one of a model with slide context: each chunk's encoded cells with the bag-wide unit of each,
    and the (U, D) context of every unit (zero for empty ones), the units numbered in chunk order."""
    assert model.context is not None
    encoded: list[tuple[Tensor, Tensor]] = []
    sums, counts = [], []
    offset = 0
    for chunk in _one_bag_chunks(chunks, device):
        h = model.encode(chunk)
        sums.append(h.new_zeros(chunk.n_units, h.shape[1]).index_add_(0, chunk.cell_unit, h))
        counts.append(chunk.unit_sizes)
        encoded.append((h, chunk.cell_unit + offset))
        offset += chunk.n_units
    if not encoded:
        raise ValueError("no cells were streamed; a bag needs at least one cell")
    unit_sums, unit_counts = torch.cat(sums), torch.cat(counts)
    filled = torch.nonzero(unit_counts > 0).flatten()
    tokens = model.context.tokens(unit_sums[filled], unit_counts[filled])
    context = unit_sums.new_zeros(unit_sums.shape)
    context[filled] = model.context.context(tokens, torch.zeros_like(filled), 1)
    return encoded, context


def stream_pseudo_cells(
    model: BiTro, chunks: Iterable[CellBatch], state: OnlineGeneAttention, prediction_counts: Tensor
) -> Iterator[Tensor]:
    """Yield each chunk's (n_chunk, G) pseudo-cell profiles (eq. 10) for a (G,) count-space prediction."""
    for attention in stream_attention(model, chunks, state):
        yield pseudo_cells(attention, prediction_counts.to(attention.device))
