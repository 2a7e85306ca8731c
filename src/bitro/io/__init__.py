"""Readers for the input layouts bitro accepts (see ``docs/formats.md``)."""

from __future__ import annotations

from pathlib import Path

from bitro.io.cells import cells_frame, read_cell_segmentation, write_cells_geojson
from bitro.io.hest import read_hest_sample
from bitro.io.sample import Sample
from bitro.io.slides import Slide, open_slide
from bitro.io.tcga import list_tcga_slides, read_tcga_cohort, read_tcga_expression, read_tcga_slide
from bitro.io.unlabelled import SlideEntry, read_slides_cohort, read_slides_sample, read_slides_sheet
from bitro.io.xenium import read_xenium_section
from bitro.layout import xenium_bundle

__all__ = [
    "Sample",
    "Slide",
    "SlideEntry",
    "cells_frame",
    "list_tcga_slides",
    "open_slide",
    "read_cell_segmentation",
    "read_hest_sample",
    "read_sample",
    "read_slides_cohort",
    "read_slides_sample",
    "read_slides_sheet",
    "read_tcga_cohort",
    "read_tcga_expression",
    "read_tcga_slide",
    "read_xenium_section",
    "write_cells_geojson",
]


def read_sample(
    kind: str,
    root: str | Path,
    sample_id: str,
    *,
    mpp: float | None = None,
    file: str | Path | None = None,
) -> Sample:
    """Read one sample of any supported layout.

    Parameters
    ----------
    kind
        ``"hest"``/``"st"`` (HEST-1k), ``"tcga"``/``"bulk"`` (TCGA cohort; ``sample_id`` is the slide
        barcode), ``"xenium"`` (``root`` is a directory of bundles, the section's bundle being
        ``root/sample_id``, or the bundle itself) or ``"slides"`` (prediction only: a folder of slides,
        no expression).
    root
        The layout's root directory.
    sample_id
        The sample to read.
    mpp
        µm per level-0 pixel; overrides what the files record.
    file
        ``slides`` only: the slide relative to ``root`` (the sample sheet's ``file`` column).

    Returns
    -------
    Sample
        The sample, as the layout's reader returns it.

    Raises
    ------
    ValueError
        ``kind`` is not one of the above, or ``file`` is given for another layout than ``slides``.
    """
    key = kind.strip().lower()
    if key == "slides":
        return read_slides_sample(root, sample_id, file=file, mpp=mpp)
    if file is not None and str(file).strip():
        raise ValueError(f"file {file!r} is only for the slides layout, not {kind!r}")
    if key in ("hest", "st"):
        return read_hest_sample(root, sample_id, mpp=mpp)
    if key in ("tcga", "bulk"):
        return read_tcga_slide(root, sample_id, mpp=mpp)
    if key == "xenium":
        return read_xenium_section(xenium_bundle(Path(root), sample_id), sample_id=sample_id, mpp=mpp)
    raise ValueError(
        f"unknown sample kind {kind!r}; expected 'hest', 'st', 'tcga', 'bulk', 'xenium' or 'slides'"
    )
