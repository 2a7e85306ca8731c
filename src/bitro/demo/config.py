"""Configuration of the virtual-tissue demo cohorts."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

#: Version of the generator; stored in ``truth/params.json``.
GENERATOR_VERSION = "1.0"


@dataclass(frozen=True)
class DemoConfig:
    """Parameters of the demo cohorts written by :func:`bitro.demo.generate_demo`.

    Parameters
    ----------
    seed
        Master seed; every random draw derives from it, so the same seed gives identical files.
    n_genes
        Number of genes simulated (the first ``n_genes`` of the built-in symbol list, padded with
        filler symbols when larger).
    mpp
        Pixel size of the written H&E slides (µm/px).
    n_hest_patients, hest_sections_per_patient
        HEST-1k cohort: ``DEMO01`` … from patients ``P1`` …, consecutive sections per patient.
    st_size_um
        (width, height) of an ST section in µm.
    n_tcga_patients, tcga_two_slide_patients
        TCGA cohort: patients ``TCGA-DM-A001`` …; the first ``tcga_two_slide_patients`` have two
        diagnostic slides (``DX1`` and ``DX2``).
    bulk_size_um
        (width, height) of a bulk (TCGA) slide in µm.
    n_xenium
        Number of Xenium sections (``XENIUM_DEMO``, ``XENIUM_DEMO2``, …).
    xenium_size_um
        (width, height) of the Xenium section's H&E image in µm.
    xenium_panel_size, xenium_n_negative
        Genes in the Xenium panel and negative-control probes added to its feature matrix.
    xenium_efficiency
        Binomial detection probability of a cell's transcripts in Xenium.
    st_umi_per_spot
        Target mean UMIs of an in-tissue spot after thinning (the capture efficiency is set per slide
        so that the mean matches, times a per-slide log-normal factor).
    cell_library
        Mean simulated RNA molecules of an average cell (scaled per cell type).
    nb_dispersion
        Negative-binomial shape ``theta`` of per-cell counts (variance ``mu + mu**2 / theta``).
    jpeg_quality
        JPEG quality of the slide tiles.
    workers
        Processes used to render slides (1 = in process). Output does not depend on it.
    """

    seed: int = 0
    n_genes: int = 100
    mpp: float = 0.5
    n_hest_patients: int = 3
    hest_sections_per_patient: int = 2
    st_size_um: tuple[float, float] = (1000.0, 1000.0)
    n_tcga_patients: int = 10
    tcga_two_slide_patients: int = 2
    bulk_size_um: tuple[float, float] = (800.0, 800.0)
    n_xenium: int = 1
    xenium_size_um: tuple[float, float] = (1200.0, 1000.0)
    xenium_panel_size: int = 60
    xenium_n_negative: int = 5
    xenium_efficiency: float = 0.5
    st_umi_per_spot: float = 3000.0
    cell_library: float = 450.0
    nb_dispersion: float = 4.0
    jpeg_quality: int = 90
    workers: int = 2

    def to_dict(self) -> dict[str, Any]:
        """Return the configuration as a JSON-serialisable dict."""
        d = asdict(self)
        for key, value in d.items():
            if isinstance(value, tuple):
                d[key] = list(value)
        return d


#: Named demo sizes: ``default`` is the embedded demo ``make demo`` runs; ``small`` is a quick cohort for
#: tests and trying the pipeline (3 ST sections of one patient, 4 bulk slides of 3 patients, 1 Xenium): the
#: fewest that leave-one-out and a patient split with a validation set can run on.
PRESETS: dict[str, DemoConfig] = {
    "default": DemoConfig(),
    "small": DemoConfig(
        n_genes=80,
        n_hest_patients=1,
        hest_sections_per_patient=3,
        st_size_um=(600.0, 600.0),
        n_tcga_patients=3,
        tcga_two_slide_patients=1,
        bulk_size_um=(500.0, 500.0),
        n_xenium=1,
        xenium_size_um=(600.0, 500.0),
        xenium_panel_size=40,
    ),
}


def preset(name: str, *, seed: int = 0) -> DemoConfig:
    """The named demo size (see :data:`PRESETS`) with the given seed."""
    if name not in PRESETS:
        raise ValueError(f"unknown demo preset {name!r}; choose from {sorted(PRESETS)}")
    return replace(PRESETS[name], seed=seed)
