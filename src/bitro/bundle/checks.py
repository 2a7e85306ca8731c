"""Refusing to apply a bundle to data made otherwise: another encoder, other weights, other crops, genes.

Each check raises :class:`~bitro.errors.BundleMismatchError` naming the data's file, and for each setting
that differs, the setting, the bundle's value and the data's.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from bitro.bundle.load import Bundle
from bitro.errors import BundleMismatchError

#: (``bundle.json`` ``encoder`` key, ``embeddings.json`` key, the setting as the message names it).
FEATURE_SETTINGS: tuple[tuple[str, str, str], ...] = (
    ("name", "encoder", "encoder (features.encoder)"),
    ("weights_sha256", "weights_sha256", "encoder weights sha256"),
    ("mpp", "mpp", "crop µm/px (crops.mpp)"),
    ("crop_size", "crop_size", "crop size in px (crops.size)"),
    ("mode", "mode", "embedding mode (features.mode)"),
    ("image_size", "image_size", "encoder input size (features.image_size)"),
    ("pooling", "pooling", "token pooling (features.pooling)"),
    ("dim", "dim", "embedding dimension"),
)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, int | float) and isinstance(b, int | float) and not isinstance(a, bool):
        return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-9)
    return a == b


def feature_mismatches(bundle: Bundle, description: Mapping[str, Any]) -> list[str]:
    """One sentence per setting where ``description`` (an ``embeddings.json``) differs from the bundle."""
    encoder = bundle.encoder
    problems = []
    for key, theirs, setting in FEATURE_SETTINGS:
        ours, value = encoder.get(key), description.get(theirs)
        if ours is None and value is None:
            continue
        if not _same(ours, value):
            problems.append(f"{setting} is {value!r} here but {ours!r} in the bundle")
    return problems


def check_features(bundle: Bundle, description: Mapping[str, Any], *, source: str | os.PathLike[str]) -> None:
    """Refuse embeddings (``source``, an ``embeddings.json``, read as ``description``) that were not made
    as the bundle's training cohort's were.

    Raises
    ------
    BundleMismatchError
        Naming ``source`` and, for every setting that differs, the setting, this value and the bundle's.
    """
    problems = feature_mismatches(bundle, description)
    if problems:
        raise BundleMismatchError(
            source,
            "; ".join(problems)
            + f": the bundle {bundle.name} cannot read these embeddings (embed with its settings)",
        )


def check_genes(bundle: Bundle, genes: Sequence[str], *, source: str | os.PathLike[str]) -> None:
    """Refuse a gene list (``source``) that is not the bundle's genes in the bundle's order.

    Raises
    ------
    BundleMismatchError
        Naming ``source``, the genes it lacks and those it adds.
    """
    genes = [str(g) for g in genes]
    if genes == bundle.genes:
        return
    missing = [g for g in bundle.genes if g not in set(genes)]
    extra = [g for g in genes if g not in set(bundle.genes)]
    if not missing and not extra:
        problem = "lists the bundle's genes in another order"
    else:
        problem = (
            f"genes differ from the bundle's {len(bundle.genes)}: {len(missing)} missing "
            f"({', '.join(missing[:5])}{'…' if len(missing) > 5 else ''}), {len(extra)} not in the bundle "
            f"({', '.join(extra[:5])}{'…' if len(extra) > 5 else ''})"
        )
    raise BundleMismatchError(source, problem)


def chosen_genes(bundle: Bundle, genes: Sequence[str] | None, n: int) -> list[str]:
    """The genes of the maps and QuPath measurements: ``genes`` (each one the bundle's), else its best ``n``.

    Raises
    ------
    BundleMismatchError
        A gene the bundle does not predict (``--genes``).
    """
    if not genes:
        return bundle.best_genes(n)
    unknown = [g for g in genes if g not in set(bundle.genes)]
    if unknown:
        raise BundleMismatchError("--genes", f"the bundle does not predict {', '.join(unknown)}")
    return list(dict.fromkeys(genes))
