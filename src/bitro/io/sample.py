"""The in-memory sample model every reader returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    import anndata as ad

    from bitro.io.slides import Slide

SampleKind = Literal["st", "bulk", "xenium", "unlabelled"]
"""What a sample's expression measures (the levels of :data:`bitro.options.LEVELS`), or ``unlabelled``: a
slide of a prediction-only layout (:data:`bitro.options.PREDICTION_FORMATS`) with no expression."""


@dataclass
class Sample:
    """One slide with its expression, as read from HEST-1k, TCGA or Xenium layouts, or a slide without
    expression (the prediction-only ``slides`` layout).

    Attributes
    ----------
    sample_id
        The sample's identifier (HEST id, TCGA slide barcode, Xenium section name).
    kind
        ``"st"`` (spots), ``"bulk"`` (one profile per slide), ``"xenium"`` (per-cell counts) or
        ``"unlabelled"`` (no expression: a trained model is only applied to it).
    slide_path
        The H&E whole-slide image.
    mpp
        Micrometres per level-0 pixel of ``slide_path`` (read from the slide or metadata, or overridden).
    expression
        ``st``: spots × genes raw counts, ``obsm["spatial"]`` = (x, y) level-0 pixels.
        ``bulk``: 1 × genes TPM (obs name = ``sample_id``).
        ``xenium``: cells × genes raw counts, ``obsm["spatial"]`` = (x, y) level-0 pixels of the H&E image.
        ``var_names`` are unique gene symbols; ``var["gene_ids"]`` holds Ensembl-style ids when known.
        ``unlabelled``: ``None``.
    patient_id
        Patient the sample comes from (HEST ``patient``, TCGA barcode[:12], the sheet's ``patient_id`` for
        ``slides``; the sample itself by default).
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
    expression: ad.AnnData | None
    patient_id: str
    spot_diameter_um: float | None = None
    cells: pd.DataFrame | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def labelled(self) -> bool:
        """Whether the sample has measured expression (every kind but ``unlabelled``)."""
        return self.expression is not None

    @property
    def units(self) -> pd.DataFrame | None:
        """The measured units: for ``st``, one row per spot in expression order; ``None`` otherwise.

        Columns ``barcode``, ``x_px``, ``y_px`` (centre, level-0 px), ``x_um``, ``y_um``, ``diameter_um``
        and ``in_tissue`` (the layout's flag, true when it has none). Bulk and Xenium slides have no
        measured units: their spot-sized patches come from :func:`bitro.preprocess.units.grid_units`.
        """
        if self.kind != "st" or self.expression is None:
            return None
        xy = np.asarray(self.expression.obsm["spatial"], dtype=np.float64)
        obs = self.expression.obs
        in_tissue = np.ones(len(xy), bool)
        if "in_tissue" in obs:  # 0/1 as numbers, booleans, or category labels "0"/"1"
            raw = obs["in_tissue"]
            is_bool = pd.api.types.is_bool_dtype(raw)
            flags = raw if is_bool else pd.to_numeric(raw.astype(str), errors="coerce")
            in_tissue = flags.to_numpy().astype(float) == 1
        return pd.DataFrame(
            {
                "barcode": obs.index.astype(str).to_numpy(),
                "x_px": xy[:, 0],
                "y_px": xy[:, 1],
                "x_um": xy[:, 0] * self.mpp,
                "y_um": xy[:, 1] * self.mpp,
                "diameter_um": np.full(
                    len(xy), np.nan if self.spot_diameter_um is None else self.spot_diameter_um
                ),
                "in_tissue": in_tissue,
            }
        )

    def open_slide(self) -> Slide:
        """Open the sample's slide with the sample's pixel size, its last tile of every level decoded.

        A truncated or corrupt slide fails here with an ``InputError`` naming it, before any output.
        """
        from bitro.io.slides import open_slide

        slide = open_slide(self.slide_path, mpp=self.mpp)
        try:
            slide.verify()
        except Exception:
            slide.close()
            raise
        return slide
