"""The in-memory sample model every reader returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import anndata as ad
    import pandas as pd

    from bitro.io.slides import Slide

SampleKind = Literal["st", "bulk", "xenium"]


@dataclass
class Sample:
    """One slide with its expression, as read from HEST-1k, TCGA or Xenium layouts.

    Attributes
    ----------
    sample_id
        The sample's identifier (HEST id, TCGA slide barcode, Xenium section name).
    kind
        ``"st"`` (spots), ``"bulk"`` (one profile per slide) or ``"xenium"`` (per-cell counts).
    slide_path
        The H&E whole-slide image.
    mpp
        Micrometres per level-0 pixel of ``slide_path`` (read from the slide or metadata, or overridden).
    expression
        ``st``: spots × genes raw counts, ``obsm["spatial"]`` = (x, y) level-0 pixels.
        ``bulk``: 1 × genes TPM (obs name = ``sample_id``).
        ``xenium``: cells × genes raw counts, ``obsm["spatial"]`` = (x, y) level-0 pixels of the H&E image.
        ``var_names`` are unique gene symbols; ``var["gene_ids"]`` holds Ensembl-style ids when known.
    patient_id
        Patient the sample comes from (HEST ``patient``, TCGA barcode[:12], Xenium section by default).
    spot_diameter_um
        Spot diameter in µm for ``st``; ``None`` otherwise.
    cells
        Segmented cells when the layout has them: one row per cell with ``cell_id``, ``x_px``, ``y_px``,
        ``x_um``, ``y_um``, ``source``, optional ``class`` and ``geometry`` (shapely polygons, level-0 px).
    metadata
        Everything else the layout recorded (HEST metadata JSON, experiment.xenium, TCGA barcodes).
    """

    sample_id: str
    kind: SampleKind
    slide_path: Path
    mpp: float
    expression: ad.AnnData
    patient_id: str
    spot_diameter_um: float | None = None
    cells: pd.DataFrame | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def open_slide(self) -> Slide:
        """Open the sample's slide with the sample's pixel size."""
        from bitro.io.slides import open_slide

        return open_slide(self.slide_path, mpp=self.mpp)
