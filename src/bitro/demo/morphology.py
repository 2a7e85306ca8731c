"""Cell types of the virtual tissue and their nuclear / cytoplasmic appearance."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely

#: Cell types, in the order used for integer codes.
CELL_TYPES: tuple[str, ...] = (
    "tumour",
    "lymphocyte",
    "fibroblast",
    "macrophage",
    "endothelium",
    "normal_epithelium",
)
TUMOUR, LYMPHOCYTE, FIBROBLAST, MACROPHAGE, ENDOTHELIUM, NORMAL_EPI = range(6)

#: CellViT class of each true cell type.
CELLVIT_CLASS: dict[str, str] = {
    "tumour": "Neoplastic",
    "lymphocyte": "Inflammatory",
    "fibroblast": "Connective",
    "macrophage": "Inflammatory",
    "endothelium": "Connective",
    "normal_epithelium": "Epithelial",
}
CELLVIT_CLASSES: tuple[str, ...] = ("Neoplastic", "Inflammatory", "Connective", "Dead", "Epithelial")


@dataclass(frozen=True)
class Morphology:
    """Mean appearance of one cell type (lengths in µm, densities in optical-density units).

    Attributes
    ----------
    major, minor
        Nuclear semi-axes (µm).
    size_sd
        Log-normal spread of the nuclear size between cells.
    shape_irregularity
        Amplitude of the 2nd/3rd angular harmonics of the nuclear outline (0 = ellipse).
    chromatin
        Mean haematoxylin concentration inside the nucleus.
    texture
        Relative amplitude of the chromatin texture (coarse clumps).
    rim
        Extra haematoxylin at the nuclear membrane (vesicular nuclei have a marked rim).
    cyto_major, cyto_minor
        Cytoplasm semi-axes (µm), centred on the nucleus.
    eosin
        Eosin concentration of the cytoplasm.
    exclusion
        Hard-core radius used by the placement process (µm).
    """

    major: float
    minor: float
    size_sd: float
    shape_irregularity: float
    chromatin: float
    texture: float
    rim: float
    cyto_major: float
    cyto_minor: float
    eosin: float
    exclusion: float


MORPHOLOGY: dict[str, Morphology] = {
    # large, pleomorphic, vesicular nuclei with coarse chromatin, moderate pink cytoplasm
    "tumour": Morphology(5.6, 4.4, 0.18, 0.12, 0.55, 0.45, 0.35, 8.0, 7.0, 0.32, 4.9),
    # small, round, dense, homogeneous nuclei with scant cytoplasm
    "lymphocyte": Morphology(3.1, 2.9, 0.08, 0.02, 1.05, 0.10, 0.05, 3.8, 3.6, 0.08, 3.2),
    # spindle nuclei elongated along the stromal iso-lines, thin cytoplasm
    "fibroblast": Morphology(7.0, 1.7, 0.15, 0.03, 0.75, 0.15, 0.10, 10.0, 2.8, 0.15, 3.0),
    # pale kidney-ish nuclei, fine chromatin, abundant eosinophilic cytoplasm
    "macrophage": Morphology(4.8, 3.6, 0.12, 0.10, 0.42, 0.25, 0.15, 10.5, 9.0, 0.48, 5.5),
    # flat elongated nuclei lining vessels
    "endothelium": Morphology(5.8, 1.5, 0.12, 0.02, 0.65, 0.12, 0.05, 7.0, 2.2, 0.12, 2.8),
    # small regular oval nuclei, cuboidal cells with clear-pink cytoplasm
    "normal_epithelium": Morphology(3.8, 3.0, 0.08, 0.03, 0.68, 0.15, 0.10, 6.0, 5.0, 0.26, 4.0),
}

#: Exclusion radius per type code.
EXCLUSION = np.array([MORPHOLOGY[t].exclusion for t in CELL_TYPES])


@dataclass
class CellTable:
    """Per-cell arrays of one slide; lengths in µm, positions in µm from the slide's top-left corner."""

    x: np.ndarray
    y: np.ndarray
    cell_type: np.ndarray  # int8 codes into CELL_TYPES
    depth: np.ndarray  # signed distance to the nest border (µm, > 0 inside nests)
    theta: np.ndarray  # orientation of the major axis (rad, image x towards y)
    major: np.ndarray
    minor: np.ndarray
    h2: np.ndarray
    p2: np.ndarray
    h3: np.ndarray
    p3: np.ndarray
    chromatin: np.ndarray
    texture: np.ndarray
    rim: np.ndarray
    cyto_major: np.ndarray
    cyto_minor: np.ndarray
    eosin: np.ndarray

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def take(self, idx: np.ndarray) -> CellTable:
        """Return the rows ``idx``."""
        return CellTable(**{k: v[idx] for k, v in self.__dict__.items()})

    @staticmethod
    def concat(tables: list[CellTable]) -> CellTable:
        """Concatenate tables row-wise."""
        keys = CellTable.__dataclass_fields__.keys()
        return CellTable(**{k: np.concatenate([getattr(t, k) for t in tables]) for k in keys})

    def nucleus_area(self) -> np.ndarray:
        """Nuclear area (µm²) including the harmonic outline terms."""
        return np.pi * self.major * self.minor * (1.0 + 0.5 * (self.h2**2 + self.h3**2))


def draw_morphology(
    rng: np.random.Generator,
    x: np.ndarray,
    y: np.ndarray,
    cell_type: np.ndarray,
    depth: np.ndarray,
    theta: np.ndarray,
) -> CellTable:
    """Draw per-cell morphology around each type's mean appearance.

    Parameters
    ----------
    rng
        Random generator.
    x, y
        Cell centres (µm).
    cell_type
        Integer type codes.
    depth
        Signed distance to the nest border (µm).
    theta
        Major-axis orientation (rad).

    Returns
    -------
    CellTable
        The cells with their morphology.
    """
    n = x.shape[0]
    f = {
        k: np.array([getattr(MORPHOLOGY[t], k) for t in CELL_TYPES])[cell_type]
        for k in Morphology.__dataclass_fields__
    }
    size = np.exp(rng.normal(0.0, 1.0, n) * f["size_sd"])
    aspect = np.exp(rng.normal(0.0, 0.08, n))
    major = f["major"] * size * aspect
    minor = f["minor"] * size / aspect
    # tumour nuclei grow a little deeper in the nests (higher grade at the core)
    is_t = cell_type == TUMOUR
    major = np.where(is_t, major * (1.0 + 0.08 * np.clip(depth / 80.0, 0, 1.5)), major)
    irr = f["shape_irregularity"]
    h2 = irr * rng.uniform(0.2, 1.0, n)
    h3 = irr * rng.uniform(0.0, 0.8, n)
    p2 = rng.uniform(0, 2 * np.pi, n)
    p3 = rng.uniform(0, 2 * np.pi, n)
    chromatin = f["chromatin"] * np.exp(rng.normal(0.0, 0.12, n))
    cyto = np.exp(rng.normal(0.0, 0.12, n))
    return CellTable(
        x=x.astype(np.float64),
        y=y.astype(np.float64),
        cell_type=cell_type.astype(np.int8),
        depth=depth.astype(np.float32),
        theta=theta.astype(np.float32),
        major=major.astype(np.float32),
        minor=minor.astype(np.float32),
        h2=h2.astype(np.float32),
        p2=p2.astype(np.float32),
        h3=h3.astype(np.float32),
        p3=p3.astype(np.float32),
        chromatin=chromatin.astype(np.float32),
        texture=(f["texture"] * np.exp(rng.normal(0, 0.1, n))).astype(np.float32),
        rim=f["rim"].astype(np.float32),
        cyto_major=(f["cyto_major"] * cyto * np.maximum(size, 1.0)).astype(np.float32),
        cyto_minor=(f["cyto_minor"] * cyto * np.maximum(size, 1.0)).astype(np.float32),
        eosin=(f["eosin"] * np.exp(rng.normal(0.0, 0.15, n))).astype(np.float32),
    )


def nucleus_outline(cells: CellTable, n_vertices: int = 24, scale: float = 1.0) -> np.ndarray:
    """Vertices of each true nucleus outline.

    Parameters
    ----------
    cells
        The cells.
    n_vertices
        Vertices per outline (not repeated at the end).
    scale
        Multiply coordinates by this (e.g. ``1 / mpp`` for pixels).

    Returns
    -------
    numpy.ndarray
        ``(n_cells, n_vertices, 2)`` (x, y) coordinates.
    """
    phi = np.linspace(0.0, 2 * np.pi, n_vertices, endpoint=False)[None, :]
    r = (
        1.0
        + cells.h2[:, None] * np.cos(2 * phi + cells.p2[:, None])
        + cells.h3[:, None] * np.cos(3 * phi + cells.p3[:, None])
    )
    u = cells.major[:, None] * r * np.cos(phi)
    v = cells.minor[:, None] * r * np.sin(phi)
    c = np.cos(cells.theta)[:, None]
    s = np.sin(cells.theta)[:, None]
    px = cells.x[:, None] + c * u - s * v
    py = cells.y[:, None] + s * u + c * v
    return np.stack([px, py], axis=-1) * scale


def polygons_from_vertices(vertices: np.ndarray) -> np.ndarray:
    """Shapely polygons from an ``(n, k, 2)`` vertex array (rings closed automatically)."""
    closed = np.concatenate([vertices, vertices[:, :1]], axis=1)
    return shapely.polygons(closed)
