"""Layout of the virtual tissue: smooth random fields and cell placement."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from bitro.demo.morphology import (
    ENDOTHELIUM,
    EXCLUSION,
    FIBROBLAST,
    LYMPHOCYTE,
    MACROPHAGE,
    NORMAL_EPI,
    TUMOUR,
    CellTable,
    draw_morphology,
)

#: Size (µm) of the tiles in which cells are generated.
CELL_TILE_UM = 400.0
#: Hard-core distance between two cells = ``PACKING * (r_i + r_j)``.
PACKING = 0.92


@dataclass(frozen=True)
class TissueParams:
    """Biological parameters of one section (shared by sections of a patient up to small jitter).

    Attributes
    ----------
    tumour_fraction
        Fraction of the tissue area inside tumour nests.
    immune_density
        Multiplier of the immune-cell probability in stroma and nests.
    nest_scale_um
        Correlation length (Gaussian sigma) of the nest field.
    stroma_cellularity
        Probability that a stromal candidate becomes a fibroblast (the rest is acellular collagen).
    vessel_density_mm2
        Vessels per mm² of tissue.
    gland_fraction
        Fraction of the stroma occupied by normal glands.
    macrophage_share
        Share of macrophages among immune cells.
    """

    tumour_fraction: float
    immune_density: float
    nest_scale_um: float
    stroma_cellularity: float
    vessel_density_mm2: float
    gland_fraction: float
    macrophage_share: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict."""
        return {k: float(v) for k, v in asdict(self).items()}


def draw_patient_params(rng: np.random.Generator) -> TissueParams:
    """Draw a patient's tissue parameters."""
    return TissueParams(
        tumour_fraction=float(rng.uniform(0.2, 0.6)),
        immune_density=float(np.exp(rng.normal(0.0, 0.6))),
        nest_scale_um=float(rng.uniform(35.0, 65.0)),
        stroma_cellularity=float(rng.uniform(0.25, 0.55)),
        vessel_density_mm2=float(rng.uniform(25.0, 60.0)),
        gland_fraction=float(rng.uniform(0.0, 0.08)),
        macrophage_share=float(rng.uniform(0.15, 0.35)),
    )


def jitter_section_params(rng: np.random.Generator, p: TissueParams) -> TissueParams:
    """Section-to-section variation of a patient's parameters."""
    return TissueParams(
        tumour_fraction=float(np.clip(p.tumour_fraction + rng.normal(0, 0.05), 0.1, 0.75)),
        immune_density=float(p.immune_density * np.exp(rng.normal(0, 0.15))),
        nest_scale_um=float(p.nest_scale_um * np.exp(rng.normal(0, 0.05))),
        stroma_cellularity=float(np.clip(p.stroma_cellularity + rng.normal(0, 0.03), 0.1, 0.8)),
        vessel_density_mm2=float(p.vessel_density_mm2 * np.exp(rng.normal(0, 0.1))),
        gland_fraction=float(max(p.gland_fraction + rng.normal(0, 0.01), 0.0)),
        macrophage_share=float(p.macrophage_share),
    )


def _grf(rng: np.random.Generator, shape: tuple[int, int], sigma_px: float) -> np.ndarray:
    """Smooth Gaussian random field with unit variance (white noise convolved with a Gaussian)."""
    f = ndimage.gaussian_filter(rng.standard_normal(shape), sigma_px, mode="reflect")
    return (f - f.mean()) / max(float(f.std()), 1e-12)


class TissueFields:
    """Smooth fields of one section on a coarse grid (step ``grid_um``).

    Parameters
    ----------
    rng
        Random generator (consumed).
    width_um, height_um
        Section extent.
    params
        Tissue parameters.
    grid_um
        Grid step; the fields are bilinearly interpolated between grid nodes.
    """

    def __init__(
        self,
        rng: np.random.Generator,
        width_um: float,
        height_um: float,
        params: TissueParams,
        grid_um: float | None = None,
    ) -> None:
        if grid_um is None:
            grid_um = 4.0 if max(width_um, height_um) <= 3000 else 8.0
        self.grid_um = float(grid_um)
        self.width_um = float(width_um)
        self.height_um = float(height_um)
        self.params = params
        g = self.grid_um
        ny = int(np.ceil(height_um / g)) + 2
        nx = int(np.ceil(width_um / g)) + 2
        yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float64) * g
        # tissue outline: a rounded square (super-ellipse) perturbed by a smooth field
        cx, cy = width_um / 2, height_um / 2
        rx, ry = 0.44 * width_um, 0.44 * height_um
        r = (np.abs((xx - cx) / rx) ** 4 + np.abs((yy - cy) / ry) ** 4) ** 0.25
        t_field = _grf(rng, (ny, nx), 120.0 / g)
        tissue_val = (1.0 - r) * min(width_um, height_um) + 60.0 * t_field  # ~µm inside the edge
        self.tissue = tissue_val.astype(np.float32)
        tissue = self.tissue > 0
        # tumour nests: thresholded GRF at the quantile giving the tumour fraction
        nest_field = _grf(rng, (ny, nx), params.nest_scale_um / g)
        inside = nest_field[tissue] if tissue.any() else nest_field.ravel()
        thr = np.quantile(inside, 1.0 - params.tumour_fraction)
        nest = (nest_field > thr) & tissue
        d_in = ndimage.distance_transform_edt(nest) * g
        d_out = ndimage.distance_transform_edt(~nest) * g
        self.depth = np.where(nest, d_in - g / 2, -(d_out - g / 2)).astype(np.float32)
        gy, gx = np.gradient(nest_field)
        norm = np.hypot(gx, gy) + 1e-9
        self.grad_x = (gx / norm).astype(np.float32)
        self.grad_y = (gy / norm).astype(np.float32)
        # immune field: lymphoid aggregates / inflamed areas
        self.immune = _grf(rng, (ny, nx), 80.0 / g).astype(np.float32)
        # normal glands: small blobs of a fine field, away from the nests
        gland_field = _grf(rng, (ny, nx), 25.0 / g)
        stroma_far = tissue & (self.depth < -40.0)
        if params.gland_fraction > 0 and stroma_far.any():
            gthr = np.quantile(gland_field[stroma_far], 1.0 - params.gland_fraction)
            gland = (gland_field > gthr) & stroma_far
        else:
            gland = np.zeros_like(tissue)
        self.gland_depth = (ndimage.distance_transform_edt(gland) * g - np.where(gland, g / 2, 0)).astype(
            np.float32
        )
        # vessels: Poisson points in the stroma, each a lumen with an endothelial lining
        area_mm2 = width_um * height_um / 1e6
        n_v = rng.poisson(params.vessel_density_mm2 * area_mm2 * 2.0)
        vx = rng.uniform(0, width_um, n_v)
        vy = rng.uniform(0, height_um, n_v)
        ok = (self.sample(self.tissue, vx, vy) > 15.0) & (self.sample(self.depth, vx, vy) < -12.0)
        vx, vy = vx[ok], vy[ok]
        keep = rng.uniform(size=vx.shape[0]) < 0.5
        self.vessel_x = vx[keep]
        self.vessel_y = vy[keep]
        self.vessel_r = rng.uniform(3.0, 11.0, self.vessel_x.shape[0])
        self._vtree = cKDTree(np.c_[self.vessel_x, self.vessel_y]) if self.vessel_x.size else None

    def sample(self, grid: np.ndarray, x_um: np.ndarray, y_um: np.ndarray) -> np.ndarray:
        """Bilinear interpolation of a grid field at µm positions."""
        coords = np.stack([np.asarray(y_um) / self.grid_um, np.asarray(x_um) / self.grid_um])
        return ndimage.map_coordinates(grid, coords, order=1, mode="nearest")

    def vessel_distance(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Distance of points to the nearest vessel wall (negative in the lumen) and that vessel's index."""
        if self._vtree is None or x.size == 0:
            return np.full(x.shape, np.inf), np.zeros(x.shape, dtype=np.int64)
        d, i = self._vtree.query(np.c_[x, y])
        return d - self.vessel_r[i], i


def _assign_types(
    rng: np.random.Generator, fields: TissueFields, x: np.ndarray, y: np.ndarray, total_intensity: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cell type of candidates at (x, y); returns (type code or -1 to reject, depth, theta).

    ``total_intensity`` is the summed candidate intensity of all rounds (per µm²): the type
    probabilities are target densities divided by it, so that sparse compartments stay sparse.
    """
    p = fields.params
    n = x.shape[0]
    tissue = fields.sample(fields.tissue, x, y)
    depth = fields.sample(fields.depth, x, y)
    immune = fields.sample(fields.immune, x, y)
    gland_d = fields.sample(fields.gland_depth, x, y)
    vdist, vidx = fields.vessel_distance(x, y)
    u = rng.uniform(size=n)
    u2 = rng.uniform(size=n)
    code = np.full(n, -1, dtype=np.int64)
    theta = rng.uniform(0, np.pi, n)

    in_nest = depth > 0
    border = np.exp(-np.abs(depth) / 35.0)
    # stroma: immune infiltrate concentrated at nest borders and in the immune field's highs
    lam = total_intensity
    rho_imm = p.immune_density * (1 / 2500 + border / 180) * np.exp(0.9 * immune - 0.4)
    p_imm = np.clip(np.minimum(rho_imm, 1 / 45) / lam, 0, 0.95)
    rho_til = p.immune_density / 600 * np.exp(-depth / 25.0) * np.exp(0.5 * immune)
    p_til = np.clip(rho_til / lam, 0, 0.5)
    p_fib = p.stroma_cellularity / 150 / lam
    imm_type = np.where(u2 < p.macrophage_share, MACROPHAGE, LYMPHOCYTE)
    stroma_imm = (~in_nest) & (u < p_imm)
    code[stroma_imm] = imm_type[stroma_imm]
    fib = (~in_nest) & (~stroma_imm) & (u < p_imm + p_fib)
    code[fib] = FIBROBLAST
    til = in_nest & (u < p_til)
    code[til] = imm_type[til]
    code[in_nest & ~til] = TUMOUR
    # fibroblasts run along the iso-lines of the nest field (perpendicular to its gradient)
    gx = fields.sample(fields.grad_x, x, y)
    gy = fields.sample(fields.grad_y, x, y)
    theta = np.where(code == FIBROBLAST, np.arctan2(gy, gx) + np.pi / 2 + rng.normal(0, 0.2, n), theta)
    # glands: epithelial ring, empty lumen
    gland_ring = (gland_d > 0) & (gland_d < 12.0)
    code[gland_ring] = NORMAL_EPI
    code[gland_d >= 12.0] = -1
    # vessels: endothelium on the wall, nothing in the lumen
    wall = (vdist >= -1.0) & (vdist < 3.5) & ~in_nest
    code[wall] = ENDOTHELIUM
    if fields.vessel_x.size:
        tang = np.arctan2(y - fields.vessel_y[vidx], x - fields.vessel_x[vidx]) + np.pi / 2
        theta = np.where(wall, tang, theta)
    code[vdist < -1.0] = -1
    code[(tissue <= 0) | (x < 0) | (y < 0) | (x >= fields.width_um) | (y >= fields.height_um)] = -1
    return code, depth, theta


def _place_in_tile(
    rng: np.random.Generator,
    fields: TissueFields,
    x0: float,
    y0: float,
    size: float,
    obstacles: tuple[np.ndarray, np.ndarray, np.ndarray],
    rounds: int = 8,
    intensity: float = 1.0 / 50.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Random sequential adsorption in rounds (parallel dart throwing) inside one tile."""
    ox, oy, orad = obstacles
    acc_x, acc_y, acc_r, acc_c = [ox], [oy], [orad], [np.full(ox.shape, -1)]
    acc_d, acc_t = [np.zeros(ox.shape)], [np.zeros(ox.shape)]
    rmax = float(EXCLUSION.max())
    for _ in range(rounds):
        n = rng.poisson(intensity * size * size)
        cx = x0 + rng.uniform(0, size, n)
        cy = y0 + rng.uniform(0, size, n)
        code, depth, theta = _assign_types(rng, fields, cx, cy, rounds * intensity)
        ok = code >= 0
        cx, cy, code, depth, theta = cx[ok], cy[ok], code[ok], depth[ok], theta[ok]
        rad = EXCLUSION[code]
        ax = np.concatenate(acc_x)
        if ax.size and cx.size:
            ay = np.concatenate(acc_y)
            ar = np.concatenate(acc_r)
            tree = cKDTree(np.c_[ax, ay])
            d, j = tree.query(np.c_[cx, cy], k=8, distance_upper_bound=PACKING * (rmax + rmax))
            ar_pad = np.append(ar, 0.0)
            conflict = (d < PACKING * (rad[:, None] + ar_pad[j])).any(axis=1)
            keep = ~conflict
            cx, cy, code, depth, theta, rad = (a[keep] for a in (cx, cy, code, depth, theta, rad))
        if cx.size > 1:
            # Matérn II thinning within the round: the lower priority of a close pair goes
            prio = rng.uniform(size=cx.size)
            pairs = cKDTree(np.c_[cx, cy]).query_pairs(r=PACKING * 2 * rmax, output_type="ndarray")
            if pairs.size:
                i, j = pairs[:, 0], pairs[:, 1]
                dd = np.hypot(cx[i] - cx[j], cy[i] - cy[j])
                close = dd < PACKING * (rad[i] + rad[j])
                loser = np.where(prio[i[close]] < prio[j[close]], i[close], j[close])
                keep = np.ones(cx.size, dtype=bool)
                keep[loser] = False
                cx, cy, code, depth, theta, rad = (a[keep] for a in (cx, cy, code, depth, theta, rad))
        acc_x.append(cx)
        acc_y.append(cy)
        acc_r.append(rad)
        acc_c.append(code)
        acc_d.append(depth)
        acc_t.append(theta)
    n_obs = ox.shape[0]
    return tuple(np.concatenate(a)[n_obs:] for a in (acc_x, acc_y, acc_c, acc_d, acc_t))  # type: ignore[return-value]


def generate_cells(fields: TissueFields, seed: int | np.ndarray | list[int]) -> CellTable:
    """Place cells over the whole section, tile by tile.

    Tiles are processed in raster order; cells already placed in the previous neighbouring tiles act as
    obstacles, so the hard-core packing has no seams. Each tile draws from its own seeded generator.

    Parameters
    ----------
    fields
        The section's fields.
    seed
        Seed (entropy) of the section's placement.

    Returns
    -------
    CellTable
        Cells sorted by y then x.
    """
    s = CELL_TILE_UM
    ntx = int(np.ceil(fields.width_um / s))
    nty = int(np.ceil(fields.height_um / s))
    seed_list = list(np.atleast_1d(np.asarray(seed, dtype=np.int64)).tolist())
    placed: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    parts: list[CellTable] = []
    margin = 2 * PACKING * float(EXCLUSION.max())
    empty = (np.zeros(0), np.zeros(0), np.zeros(0))
    for ty in range(nty):
        for tx in range(ntx):
            x0, y0 = tx * s, ty * s
            obs = [empty]
            for dy, dx in ((-1, -1), (-1, 0), (-1, 1), (0, -1)):
                nb = placed.get((ty + dy, tx + dx))
                if nb is None:
                    continue
                bx, by, br = nb
                near = (
                    (bx > x0 - margin) & (bx < x0 + s + margin) & (by > y0 - margin) & (by < y0 + s + margin)
                )
                obs.append((bx[near], by[near], br[near]))
            obstacles = tuple(np.concatenate([o[k] for o in obs]) for k in range(3))
            rng = np.random.default_rng([*seed_list, ty, tx, 7])
            cx, cy, code, depth, theta = _place_in_tile(rng, fields, x0, y0, s, obstacles)  # type: ignore[arg-type]
            placed[(ty, tx)] = (cx, cy, EXCLUSION[code])
            placed.pop((ty - 2, tx), None)
            parts.append(draw_morphology(rng, cx, cy, code, depth, theta))
    cells = CellTable.concat(parts)
    order = np.lexsort((cells.x, cells.y))
    return cells.take(order)
