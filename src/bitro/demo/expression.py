"""Gene panel, cell-type expression profiles, spatial programmes and count sampling."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from bitro.demo.morphology import CELL_TYPES, LYMPHOCYTE, TUMOUR, CellTable

#: Marker genes per cell type (log fold change +3.5 in that type).
MARKERS: dict[str, tuple[str, ...]] = {
    "tumour": ("EPCAM", "KRT8", "KRT18", "KRT19", "CDH1", "MUC1", "CEACAM5", "TACSTD2", "AGR2", "TFF1"),
    "lymphocyte": ("PTPRC", "CD3E", "CD3D", "CD2", "CD8A", "CD4", "MS4A1", "CD79A", "IL7R", "CCL5"),
    "fibroblast": ("COL1A1", "COL1A2", "COL3A1", "DCN", "LUM", "FAP", "PDGFRB", "FN1", "SPARC", "POSTN"),
    "macrophage": ("CD68", "CD163", "CD14", "LYZ", "C1QA", "C1QB", "AIF1", "FCGR3A", "MRC1", "APOE"),
    "endothelium": ("PECAM1", "VWF", "CDH5", "CLDN5", "KDR", "ENG", "PLVAP", "EMCN"),
    "normal_epithelium": ("KRT5", "KRT14", "KRT17", "TP63", "KRT7", "PIP"),
}
#: Markers shared with a second type (half the fold change there).
SHARED: dict[str, tuple[str, ...]] = {
    "normal_epithelium": ("EPCAM", "KRT8", "KRT18", "KRT19", "CDH1"),
    "tumour": ("KRT7",),
    "fibroblast": ("ACTA2",),
    "lymphocyte": ("PTPRC",),
    "macrophage": ("PTPRC",),
}
#: Hypoxia programme: rises with depth into tumour nests.
HYPOXIA: tuple[str, ...] = ("VEGFA", "CA9", "SLC2A1", "LDHA", "NDRG1", "ADM", "PGK1", "BNIP3")
#: Proliferation programme: highest at the invasive edge of nests; per-patient level.
PROLIFERATION: tuple[str, ...] = ("MKI67", "TOP2A", "CCNB1", "PCNA", "MCM2", "BIRC5")
#: Cytotoxic activation of lymphocytes near nest borders.
CYTOTOXIC: tuple[str, ...] = ("GZMB", "NKG7", "IFNG", "PRF1")
#: Hormone-receptor genes with a per-patient tumour level the image does not show.
PATIENT_GENES: tuple[str, ...] = ("ESR1", "PGR", "ERBB2")
HOUSEKEEPING: tuple[str, ...] = ("ACTB", "GAPDH", "B2M", "EEF1A1", "TPT1", "MALAT1")
MITO: tuple[str, ...] = ("MT-CO1", "MT-ND1", "MT-ATP6")
RIBO: tuple[str, ...] = ("RPL13", "RPS18", "RPLP0", "RPS27A")
OTHER: tuple[str, ...] = (
    "ACTA2", "GATA3", "FOXA1", "XBP1", "TP53", "MYC", "CD74", "HLA-DRA", "IGKC", "JCHAIN", "MZB1",
    "TAGLN", "MYH11", "RGS5", "MGP", "CXCL12", "S100A4", "VIM", "CXCL13", "SPP1", "MMP9", "TIMP1",
    "CD24", "AR", "SCGB2A2", "CCND1", "FOXP3", "CTLA4", "LAG3", "PDCD1", "CD274", "HAVCR2",
)  # fmt: skip
NON_CODING = {"MALAT1": "lncRNA"}


def gene_symbols(n_genes: int) -> list[str]:
    """The first ``n_genes`` symbols by priority (markers, housekeeping, programmes, others, fillers)."""
    order: list[str] = []
    for group in (
        *MARKERS.values(),
        HOUSEKEEPING,
        MITO,
        RIBO,
        HYPOXIA,
        PROLIFERATION,
        CYTOTOXIC,
        PATIENT_GENES,
        OTHER,
    ):
        for g in group:
            if g not in order:
                order.append(g)
    i = 1
    while len(order) < n_genes:
        order.append(f"DMG{i:04d}")
        i += 1
    return order[:n_genes]


def gene_ids(symbols: list[str]) -> list[str]:
    """Ensembl-like ids ``ENSG9xxxxxxxxxx.N`` derived from the symbols (stable across seeds, unique)."""
    out: list[str] = []
    used: set[str] = set()
    for s in symbols:
        h = zlib.crc32(s.encode())
        k = 0
        while True:
            core = f"ENSG9{(h + k * 7919) % 10**10:010d}"
            if core not in used:
                break
            k += 1
        used.add(core)
        out.append(f"{core}.{1 + h % 19}")
    return out


def gene_type(symbol: str) -> str:
    """GENCODE-style gene type."""
    return NON_CODING.get(symbol, "protein_coding")


@dataclass
class ExpressionModel:
    """Per-type mean profiles and programme weights for a gene panel.

    Attributes
    ----------
    symbols, ids
        Gene symbols and Ensembl-like ids.
    profiles
        ``(n_types, n_genes)`` mean molecules per average cell of each type.
    lengths
        Effective gene lengths (bp) used for TPM.
    """

    symbols: list[str]
    ids: list[str]
    profiles: np.ndarray
    lengths: np.ndarray

    @property
    def n_genes(self) -> int:
        """Number of genes."""
        return len(self.symbols)

    def mask(self, genes: tuple[str, ...]) -> np.ndarray:
        """Boolean gene mask of a programme."""
        s = set(genes)
        return np.array([g in s for g in self.symbols])

    def gene_table(self) -> pd.DataFrame:
        """``gene_id``, ``gene_name``, ``gene_type``."""
        return pd.DataFrame(
            {
                "gene_id": self.ids,
                "gene_name": self.symbols,
                "gene_type": [gene_type(s) for s in self.symbols],
            }
        )


#: Relative RNA content per cell type (× ``cell_library``).
LIBRARY = {
    "tumour": 1.3,
    "lymphocyte": 0.45,
    "fibroblast": 0.9,
    "macrophage": 1.1,
    "endothelium": 0.7,
    "normal_epithelium": 0.9,
}


def build_expression_model(rng: np.random.Generator, n_genes: int, cell_library: float) -> ExpressionModel:
    """Draw per-type log-normal profiles around the marker structure.

    Parameters
    ----------
    rng
        Random generator.
    n_genes
        Number of genes.
    cell_library
        Mean molecules of an average cell.

    Returns
    -------
    ExpressionModel
        The model.
    """
    symbols = gene_symbols(n_genes)
    g = len(symbols)
    base = rng.normal(0.0, 0.8, g)
    for i, s in enumerate(symbols):
        if s in HOUSEKEEPING or s in MITO or s in RIBO:
            base[i] += 3.0
    logp = np.tile(base, (len(CELL_TYPES), 1)) + rng.normal(0.0, 0.35, (len(CELL_TYPES), g))
    for t, name in enumerate(CELL_TYPES):
        for i, s in enumerate(symbols):
            if s in MARKERS[name]:
                logp[t, i] += 3.5 + rng.normal(0, 0.4)
            elif s in SHARED.get(name, ()):
                logp[t, i] += 1.8
    # programme genes: low baseline except in the type they act in
    for i, s in enumerate(symbols):
        if s in HYPOXIA or s in PROLIFERATION or s in PATIENT_GENES:
            logp[TUMOUR, i] += 1.5
        if s in CYTOTOXIC:
            logp[LYMPHOCYTE, i] += 1.0
    prof = np.exp(logp)
    lib = np.array([LIBRARY[t] for t in CELL_TYPES]) * cell_library
    prof = prof / prof.sum(axis=1, keepdims=True) * lib[:, None]
    lengths = np.round(np.exp(rng.normal(np.log(2000.0), 0.5, g))) + 200.0
    return ExpressionModel(symbols=symbols, ids=gene_ids(symbols), profiles=prof, lengths=lengths)


def cell_means(
    model: ExpressionModel,
    cells: CellTable,
    patient_effects: dict[str, float],
) -> np.ndarray:
    """Mean counts per cell: type profile × size × spatial programmes × patient effects.

    Parameters
    ----------
    model
        Expression model.
    cells
        Cells (uses type, depth, nuclear size).
    patient_effects
        ``{"proliferation": log-fold, "ESR1": log-fold, ...}`` per patient.

    Returns
    -------
    numpy.ndarray
        ``(n_cells, n_genes)`` float64 means.
    """
    ct = cells.cell_type.astype(np.int64)
    mu = model.profiles[ct].copy()
    # size factor: larger nuclei, more RNA (relative to the type's mean area)
    area = cells.nucleus_area()
    mean_area = np.array([area[ct == t].mean() if (ct == t).any() else 1.0 for t in range(len(CELL_TYPES))])
    mu *= np.sqrt(area / mean_area[ct])[:, None]
    depth = cells.depth.astype(np.float64)
    tum = ct == TUMOUR
    hyp = 1.3 * np.clip(depth / 80.0, 0.0, 2.0) * tum
    mu[:, model.mask(HYPOXIA)] *= np.exp(hyp)[:, None]
    prol = (0.9 * np.exp(-np.clip(depth, 0, None) / 40.0) + patient_effects.get("proliferation", 0.0)) * tum
    mu[:, model.mask(PROLIFERATION)] *= np.exp(prol)[:, None]
    cyt = 1.2 * np.exp(-np.abs(depth) / 30.0) * (ct == LYMPHOCYTE)
    mu[:, model.mask(CYTOTOXIC)] *= np.exp(cyt)[:, None]
    for gname in PATIENT_GENES:
        m = model.mask((gname,))
        if m.any():
            mu[:, m] *= np.exp(patient_effects.get(gname, 0.0) * tum)[:, None]
    return mu


def sample_counts(rng: np.random.Generator, mu: np.ndarray, theta: float) -> np.ndarray:
    """Negative-binomial counts (gamma–Poisson) with mean ``mu`` and shape ``theta``."""
    lam = rng.gamma(theta, mu / theta)
    return rng.poisson(lam).astype(np.int32)


def tpm(counts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """TPM of genes × samples counts with per-gene effective lengths (each column sums to 1e6)."""
    rate = counts / lengths[:, None]
    return rate / rate.sum(axis=0, keepdims=True) * 1e6
