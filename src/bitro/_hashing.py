"""sha256 of files, read in chunks: weights are gigabytes and never need to be in memory at once."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path


def files_sha256(paths: Sequence[str | Path]) -> str:
    """Hex sha256 over the files' bytes, in name order (one file: that file's ordinary sha256)."""
    digest = hashlib.sha256()
    for path in sorted(Path(p) for p in paths):
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of one file (what ``sha256sum`` prints)."""
    return files_sha256([path])
