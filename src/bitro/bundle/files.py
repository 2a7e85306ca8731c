"""The names of a model bundle's files, and its format: stated once, imported everywhere else.

The model's own files keep the names a fold's folder gives them (:class:`bitro.layout.FoldFile`), so a
bundle folder is also a model folder that :func:`bitro.train.saved.load_trained` reads.
"""

from __future__ import annotations

from typing import Final

from bitro.layout import FoldFile
from bitro.train.saved import ADAPTER_FILE

#: ``bundle.json``'s ``format``.
FORMAT: Final = "bitro-bundle/1"


class BundleFile:
    """Names of the files in a model bundle (``bitro export-model``)."""

    WEIGHTS: Final = FoldFile.MODEL_WEIGHTS
    MODEL: Final = FoldFile.MODEL_DESCRIPTION
    #: A LoRA model's adapters, beside its frozen base in :attr:`WEIGHTS`.
    ADAPTER: Final = ADAPTER_FILE
    PCA: Final = FoldFile.PCA
    STAIN_REFERENCE: Final = "stain_reference.json"
    CV_METRICS: Final = "cv_metrics.tsv"
    CV_GENE_PCC: Final = "cv_gene_pcc.tsv"
    RECORD: Final = "bundle.json"
    CARD: Final = "MODEL_CARD.md"
    #: Added to a bundle folder's name for its zip (``final/bundle`` → ``final/bundle.zip``).
    ZIP_SUFFIX: Final = ".zip"


#: The keys of an ``embeddings.json`` a bundle records as its encoder, under these names.
ENCODER_KEYS: Final = {
    "name": "encoder",
    "weights_sha256": "weights_sha256",
    "mode": "mode",
    "dim": "dim",
    "image_size": "image_size",
    "pooling": "pooling",
    "crop_size": "crop_size",
    "mpp": "mpp",
    "stain_method": "stain_method",
}
