"""Portable model bundles: a trained model with all that applying it to new slides needs (issue 16).

- :mod:`bitro.bundle.files`: the bundle's file names and format;
- :mod:`bitro.bundle.export`: :func:`export_bundle` writes the folder (and its zip) with ``bundle.json``
  and ``MODEL_CARD.md``;
- :mod:`bitro.bundle.load`: :func:`load_bundle` reads a folder or a zip, checking every file's sha256;
- :mod:`bitro.bundle.checks`: :func:`check_features`, :func:`check_genes` refuse data made otherwise;
- :mod:`bitro.bundle.cv`: the cross-validation record; :mod:`bitro.bundle.card`: the model card.

Applying a bundle to a sample or a slide is :mod:`bitro.predict.apply` and :mod:`bitro.predict.whole_slide`.
"""

from __future__ import annotations

from bitro.bundle.checks import check_features, check_genes, chosen_genes
from bitro.bundle.export import export_bundle, zip_path
from bitro.bundle.files import FORMAT, BundleFile
from bitro.bundle.load import Bundle, load_bundle

__all__ = [
    "FORMAT",
    "Bundle",
    "BundleFile",
    "check_features",
    "check_genes",
    "chosen_genes",
    "export_bundle",
    "load_bundle",
    "zip_path",
]
