"""Reading ``embeddings.npy`` and its ``.json`` description (written by :mod:`bitro.features.embed`).

A module of its own so that the steps that only read embeddings (PCA, phenotypes, baselines, training)
do not import torch and the crop readers at start-up.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from bitro.errors import InputError


def read_embeddings(path: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """``embeddings.npy`` (memory-mapped) and its description."""
    path = Path(path)
    if not path.is_file() or not path.with_suffix(".json").is_file():
        raise InputError(path, "embeddings (.npy and .json) not found")
    try:
        describe = json.loads(path.with_suffix(".json").read_text())
        array = np.load(path, mmap_mode="r")
        shape = (int(describe["n_cells"]), int(describe["dim"]))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InputError(path, f"is not an embeddings file written by bitro ({exc})") from exc
    if array.shape != shape:
        raise InputError(
            path, f"shape {array.shape} disagrees with its .json ({describe['n_cells']} × {describe['dim']})"
        )
    return array, describe
