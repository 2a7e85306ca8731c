"""Readers for the input layouts bitro accepts (see ``docs/formats.md``).

The names below are loaded on first use (a module ``__getattr__``, PEP 562): each reader brings its own
libraries (anndata, geopandas, h5py), and a verb that only opens a slide should not import them all.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from bitro._lazy import lazy_exports

if TYPE_CHECKING:
    from bitro.io.cells import cells_frame, read_cell_segmentation, write_cells_geojson
    from bitro.io.hest import read_hest_sample
    from bitro.io.sample import Sample
    from bitro.io.slides import Slide, open_slide
    from bitro.io.tcga import list_tcga_slides, read_tcga_cohort, read_tcga_expression, read_tcga_slide
    from bitro.io.unlabelled import SlideEntry, read_slides_cohort, read_slides_sample, read_slides_sheet
    from bitro.io.xenium import read_xenium_section

#: Each public name, and the submodule of :mod:`bitro.io` that defines it.
_SOURCES: dict[str, str] = {
    "cells_frame": "cells",
    "read_cell_segmentation": "cells",
    "write_cells_geojson": "cells",
    "read_hest_sample": "hest",
    "Sample": "sample",
    "Slide": "slides",
    "open_slide": "slides",
    "list_tcga_slides": "tcga",
    "read_tcga_cohort": "tcga",
    "read_tcga_expression": "tcga",
    "read_tcga_slide": "tcga",
    "SlideEntry": "unlabelled",
    "read_slides_cohort": "unlabelled",
    "read_slides_sample": "unlabelled",
    "read_slides_sheet": "unlabelled",
    "read_xenium_section": "xenium",
}


__getattr__, __dir__ = lazy_exports(__name__, _SOURCES)

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
        from bitro.io.unlabelled import read_slides_sample

        return read_slides_sample(root, sample_id, file=file, mpp=mpp)
    if file is not None and str(file).strip():
        raise ValueError(f"file {file!r} is only for the slides layout, not {kind!r}")
    if key in ("hest", "st"):
        from bitro.io.hest import read_hest_sample

        return read_hest_sample(root, sample_id, mpp=mpp)
    if key in ("tcga", "bulk"):
        from bitro.io.tcga import read_tcga_slide

        return read_tcga_slide(root, sample_id, mpp=mpp)
    if key == "xenium":
        from bitro.io.xenium import read_xenium_section
        from bitro.layout import xenium_bundle

        return read_xenium_section(xenium_bundle(Path(root), sample_id), sample_id=sample_id, mpp=mpp)
    raise ValueError(
        f"unknown sample kind {kind!r}; expected 'hest', 'st', 'tcga', 'bulk', 'xenium' or 'slides'"
    )
