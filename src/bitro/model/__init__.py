"""The BiTro model (paper §3.3–3.5): GAT → Transformer → gene-query attention MIL → readout, its losses,
streaming slide attention, pseudo-cell profiles and LoRA fine-tuning.

Modules, one job each:

- :mod:`~bitro.model.batch`: :class:`Bag` (one bag's numpy pieces) and :class:`CellBatch` (packed cells);
- :mod:`~bitro.model.padding`: packed ↔ padded layouts for attention within segments;
- :mod:`~bitro.model.gat`: graph attention encoder (eq. 4–5);
- :mod:`~bitro.model.transformer`: positional tables and the unit-wise Transformer (eq. 6);
- :mod:`~bitro.model.mil`: gene queries, bag softmax, pooling and readout (eq. 7–9);
- :mod:`~bitro.model.bitro`: :class:`BiTroConfig` and the assembled :class:`BiTro`;
- :mod:`~bitro.model.pseudocells`: count-space pseudo-cell profiles (eq. 10);
- :mod:`~bitro.model.streaming`: exact bounded-memory attention over huge bags (online softmax);
- :mod:`~bitro.model.losses`: gene MSE, cluster loss and their sum (eq. 11–13);
- :mod:`~bitro.model.lora`: LoRA with peft on explicitly named linears; adapter files;
- :mod:`~bitro.model.cost`: parameter counts and FLOPs per cell.
"""

from bitro.model.batch import Bag, CellBatch, iter_chunks
from bitro.model.bitro import BiTro, BiTroConfig, BiTroOutput
from bitro.model.losses import LossTerms, bitro_loss, cluster_loss, gene_loss
from bitro.model.pseudocells import CountTransform, Denormalise, pseudo_cells
from bitro.model.streaming import (
    OnlineGeneAttention,
    StreamingPrediction,
    predict_streaming,
    stream_attention,
    stream_pseudo_cells,
)

__all__ = [
    "Bag",
    "BiTro",
    "BiTroConfig",
    "BiTroOutput",
    "CellBatch",
    "CountTransform",
    "Denormalise",
    "LossTerms",
    "OnlineGeneAttention",
    "StreamingPrediction",
    "bitro_loss",
    "cluster_loss",
    "gene_loss",
    "iter_chunks",
    "predict_streaming",
    "pseudo_cells",
    "stream_attention",
    "stream_pseudo_cells",
]
