"""Beer–Lambert rendering of virtual H&E tissue and pyramidal tiled TIFF writing."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tifffile
from scipy import ndimage
from tqdm.auto import tqdm

from bitro.demo.morphology import CellTable
from bitro.demo.tissue import TissueFields

#: Reference stain OD vectors (Ruifrok & Johnston), rows = R, G, B absorbance.
H_REF = np.array([0.650, 0.704, 0.286])
E_REF = np.array([0.072, 0.990, 0.105])
RESIDUAL_REF = np.array([0.268, 0.570, 0.776])
TILE = 256
TEXTURE = 256
#: Columns rendered at once (a multiple of TILE).
CHUNK = 2048
#: Margin (px) rendered around each chunk so that the blur is seamless.
MARGIN = 8


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


@dataclass(frozen=True)
class SlideStyle:
    """Per-slide acquisition parameters: the batch effect stain normalisation should remove.

    Attributes
    ----------
    h_vector, e_vector
        Unit OD vectors of haematoxylin and eosin (RGB).
    h_scale, e_scale
        Stain intensity factors multiplying all concentrations.
    residual
        OD of a third, unmodelled absorber added uniformly in tissue.
    blur_sigma_px
        Gaussian blur (focus) in level-0 pixels.
    noise_sd
        Gaussian pixel noise (grey levels).
    illumination
        RGB gain of the light source (glass ≈ 255 × gain).
    """

    h_vector: tuple[float, float, float]
    e_vector: tuple[float, float, float]
    h_scale: float
    e_scale: float
    residual: float
    blur_sigma_px: float
    noise_sd: float
    illumination: tuple[float, float, float]

    def angles_deg(self) -> tuple[float, float]:
        """Angles (degrees) between this slide's H/E vectors and the reference ones."""
        ah = np.degrees(np.arccos(np.clip(np.dot(self.h_vector, _unit(H_REF)), -1, 1)))
        ae = np.degrees(np.arccos(np.clip(np.dot(self.e_vector, _unit(E_REF)), -1, 1)))
        return float(ah), float(ae)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (with the angles to the reference vectors)."""
        ah, ae = self.angles_deg()
        return {
            "h_vector": [float(v) for v in self.h_vector],
            "e_vector": [float(v) for v in self.e_vector],
            "h_scale": float(self.h_scale),
            "e_scale": float(self.e_scale),
            "h_angle_deg": ah,
            "e_angle_deg": ae,
            "residual_od": float(self.residual),
            "blur_sigma_px": float(self.blur_sigma_px),
            "noise_sd": float(self.noise_sd),
            "illumination": [float(v) for v in self.illumination],
        }


def _perturb(rng: np.random.Generator, v: np.ndarray, deg_sd: float) -> np.ndarray:
    """Rotate unit vector ``v`` by a random angle ~ |N(0, deg_sd)| about a random perpendicular axis."""
    v = _unit(v)
    w = rng.standard_normal(3)
    w = _unit(w - w.dot(v) * v)
    ang = np.radians(rng.normal(0.0, deg_sd))
    out = np.cos(ang) * v + np.sin(ang) * w
    return _unit(np.abs(out))


def draw_slide_style(rng: np.random.Generator) -> SlideStyle:
    """Draw one slide's stain vectors, intensities, blur, noise and illumination."""
    return SlideStyle(
        h_vector=tuple(_perturb(rng, H_REF, 6.0)),  # type: ignore[arg-type]
        e_vector=tuple(_perturb(rng, E_REF, 6.0)),  # type: ignore[arg-type]
        h_scale=float(np.exp(rng.normal(0.0, 0.18))),
        e_scale=float(np.exp(rng.normal(0.0, 0.22))),
        residual=float(rng.uniform(0.0, 0.04)),
        blur_sigma_px=float(rng.uniform(0.5, 1.1)),
        noise_sd=float(rng.uniform(1.5, 4.0)),
        illumination=tuple(np.clip(rng.normal(0.95, 0.015, 3), 0.9, 1.0)),  # type: ignore[arg-type]
    )


def _texture(rng: np.random.Generator, sigma: tuple[float, float]) -> np.ndarray:
    """Periodic band-limited noise in [0, 1] (TEXTURE × TEXTURE)."""
    t = ndimage.gaussian_filter(rng.standard_normal((TEXTURE, TEXTURE)), sigma, mode="wrap")
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-9)
    return t.astype(np.float32)


class SlideRenderer:
    """Render a section's level-0 RGB pixels region by region.

    Parameters
    ----------
    cells
        The section's cells (µm), sorted by y.
    fields
        The section's fields (background eosin, tissue outline, vessels).
    style
        Stain and acquisition parameters.
    mpp
        Pixel size (µm/px).
    seed
        Seed list for the textures and pixel noise.
    """

    def __init__(
        self, cells: CellTable, fields: TissueFields, style: SlideStyle, mpp: float, seed: list[int]
    ) -> None:
        self.cells = cells
        self.fields = fields
        self.style = style
        self.mpp = float(mpp)
        self.seed = list(seed)
        rng = np.random.default_rng([*self.seed, 11])
        self.tex_chromatin = _texture(rng, (1.0, 1.0)) * 2.0 - 1.0
        self.tex_fibre = _texture(rng, (0.8, 5.0))
        self.tex_rbc = _texture(rng, (1.5, 1.5))
        s = 1.0 / self.mpp
        # cell geometry in pixels
        self.px = cells.x * s
        self.py = cells.y * s
        self.extent = np.maximum(cells.cyto_major, cells.major * 1.4) * s + 2.0
        self.max_extent = float(self.extent.max()) if len(cells) else 0.0
        # background eosin/haematoxylin on the coarse field grid
        f = fields
        alpha = np.clip(f.tissue / 2.0 + 0.5, 0.0, 1.0)
        stroma = np.clip(-f.depth / 4.0 + 0.5, 0.0, 1.0)
        lumen = np.clip((f.gland_depth - 12.0) / 2.0, 0.0, 1.0)
        bg_e = alpha * (0.10 + 0.22 * stroma * (1.0 - lumen))
        bg_h = alpha * (0.025 + 0.02 * (1.0 - stroma))
        self.bg = np.stack([bg_e, bg_h, alpha]).astype(np.float32)
        self.vx = f.vessel_x * s
        self.vy = f.vessel_y * s
        self.vr = f.vessel_r * s

    # ------------------------------------------------------------------ painting
    @staticmethod
    def _scatter(acc: np.ndarray, flat: np.ndarray, val: np.ndarray) -> None:
        acc += np.bincount(flat, weights=val, minlength=acc.shape[0]).astype(np.float32)

    def _stencil(
        self, cx: np.ndarray, cy: np.ndarray, half: int, x0: int, y0: int, w: int, h: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Pixel grids around each centre: (dx, dy, X, Y, valid) of shape (n, K, K)."""
        off = np.arange(-half, half + 1, dtype=np.int32)
        ix = np.floor(cx).astype(np.int32)[:, None, None] + off[None, None, :]
        iy = np.floor(cy).astype(np.int32)[:, None, None] + off[None, :, None]
        dx = (ix + 0.5 - cx[:, None, None]).astype(np.float32)
        dy = (iy + 0.5 - cy[:, None, None]).astype(np.float32)
        valid = (ix >= x0) & (ix < x0 + w) & (iy >= y0) & (iy < y0 + h)
        return dx, dy, ix, iy, valid

    def _paint_cells(
        self, idx: np.ndarray, x0: int, y0: int, w: int, h: int, acc_h: np.ndarray, acc_e: np.ndarray
    ) -> None:
        c = self.cells
        s = 1.0 / self.mpp
        # nuclei, grouped by stencil size
        ext_n = (c.major[idx] * (1.0 + c.h2[idx] + c.h3[idx])) * s + 1.5
        for half, sel in _groups(ext_n):
            for part in np.array_split(idx[sel], max(1, len(sel) * (2 * half + 1) ** 2 // 2_000_000 + 1)):
                self._paint_nuclei(part, half, x0, y0, w, h, acc_h)
        ext_c = np.maximum(c.cyto_major[idx], c.cyto_minor[idx]) * s + 1.5
        for half, sel in _groups(ext_c):
            for part in np.array_split(idx[sel], max(1, len(sel) * (2 * half + 1) ** 2 // 2_000_000 + 1)):
                self._paint_cytoplasm(part, half, x0, y0, w, h, acc_h, acc_e)

    def _ellipse_frame(
        self,
        idx: np.ndarray,
        major_um: np.ndarray,
        minor_um: np.ndarray,
        half: int,
        x0: int,
        y0: int,
        w: int,
        h: int,
    ) -> tuple[np.ndarray, ...]:
        """Stencil pixels of cells ``idx`` in each cell's ellipse frame.

        Returns semi-axes ``a``, ``b`` (px), coordinates ``un``, ``vn`` scaled by them (the outline is
        ``un² + vn² = 1``), the pixels' slide coordinates ``ix``, ``iy`` and the ``valid`` mask.
        """
        s = 1.0 / self.mpp
        dx, dy, ix, iy, valid = self._stencil(self.px[idx], self.py[idx], half, x0, y0, w, h)
        theta = self.cells.theta[idx]
        ct = np.cos(theta)[:, None, None]
        st = np.sin(theta)[:, None, None]
        a = (major_um[idx] * s)[:, None, None]
        b = (minor_um[idx] * s)[:, None, None]
        return a, b, (ct * dx + st * dy) / a, (-st * dx + ct * dy) / b, ix, iy, valid

    def _paint_nuclei(
        self, idx: np.ndarray, half: int, x0: int, y0: int, w: int, h: int, acc: np.ndarray
    ) -> None:
        if idx.size == 0:
            return
        c = self.cells
        a, b, un, vn, ix, iy, valid = self._ellipse_frame(idx, c.major, c.minor, half, x0, y0, w, h)
        rho = np.sqrt(un * un + vn * vn)
        phi = np.arctan2(vn, un)
        rb = (
            1.0
            + c.h2[idx][:, None, None] * np.cos(2 * phi + c.p2[idx][:, None, None])
            + c.h3[idx][:, None, None] * np.cos(3 * phi + c.p3[idx][:, None, None])
        )
        inside_px = (rb - rho) * np.sqrt(a * b)  # ≈ distance inside the outline in px
        alpha = np.clip(inside_px + 0.5, 0.0, 1.0)
        tex = self.tex_chromatin[iy % TEXTURE, ix % TEXTURE]
        rim = c.rim[idx][:, None, None] * np.clip(1.0 - inside_px / 2.5, 0.0, 1.0)
        val = c.chromatin[idx][:, None, None] * alpha * (1.0 + c.texture[idx][:, None, None] * tex + rim)
        m = valid & (alpha > 0)
        flat = (iy - y0) * w + (ix - x0)
        self._scatter(acc, flat[m], val[m])

    def _paint_cytoplasm(
        self,
        idx: np.ndarray,
        half: int,
        x0: int,
        y0: int,
        w: int,
        h: int,
        acc_h: np.ndarray,
        acc_e: np.ndarray,
    ) -> None:
        if idx.size == 0:
            return
        c = self.cells
        a, b, un, vn, ix, iy, valid = self._ellipse_frame(idx, c.cyto_major, c.cyto_minor, half, x0, y0, w, h)
        rho = np.sqrt(un * un + vn * vn)
        alpha = np.clip((1.0 - rho) * np.sqrt(a * b) / 1.5 + 0.5, 0.0, 1.0)
        m = valid & (alpha > 0)
        flat = (iy - y0) * w + (ix - x0)
        val = c.eosin[idx][:, None, None] * alpha
        self._scatter(acc_e, flat[m], val[m])
        self._scatter(acc_h, flat[m], 0.08 * val[m])

    def _paint_vessels(self, x0: int, y0: int, w: int, h: int, acc_e: np.ndarray) -> None:
        if self.vx.size == 0:
            return
        r = self.vr
        sel = (self.vx + r > x0) & (self.vx - r < x0 + w) & (self.vy + r > y0) & (self.vy - r < y0 + h)
        for half, g in _groups(r[sel] + 1.5):
            ids = np.flatnonzero(sel)[g]
            dx, dy, ix, iy, valid = self._stencil(self.vx[ids], self.vy[ids], half, x0, y0, w, h)
            d = np.sqrt(dx * dx + dy * dy)
            alpha = np.clip(r[ids][:, None, None] - d + 0.5, 0.0, 1.0)
            # plasma with red blood cells (strongly eosinophilic speckle)
            rbc = self.tex_rbc[iy % TEXTURE, ix % TEXTURE]
            val = alpha * (0.12 + 0.9 * np.clip(rbc - 0.45, 0.0, 1.0))
            m = valid & (alpha > 0)
            self._scatter(acc_e, ((iy - y0) * w + (ix - x0))[m], val[m])

    # ------------------------------------------------------------------ region
    def render(self, x0: int, y0: int, w: int, h: int) -> np.ndarray:
        """Render level-0 pixels ``[y0, y0 + h) × [x0, x0 + w)`` as ``(h, w, 3)`` uint8."""
        m = MARGIN
        X0, Y0, W, H = x0 - m, y0 - m, w + 2 * m, h + 2 * m  # noqa: N806
        g = self.fields.grid_um / self.mpp  # px per grid step
        bg = _bilinear(self.bg, (np.arange(Y0, Y0 + H) + 0.5) / g, (np.arange(X0, X0 + W) + 0.5) / g)
        fibre = self.tex_fibre[np.ix_(np.arange(Y0, Y0 + H) % TEXTURE, np.arange(X0, X0 + W) % TEXTURE)]
        acc_e = (bg[0] * (0.65 + 0.7 * fibre)).ravel()
        acc_h = bg[1].ravel()
        alpha = bg[2]
        acc_e = acc_e.astype(np.float32)
        acc_h = acc_h.astype(np.float32)
        # cells overlapping the region (cells are sorted by y)
        r = self.max_extent
        lo, hi = np.searchsorted(self.py, [Y0 - r, Y0 + H + r])
        cand = np.arange(lo, hi)
        ext = self.extent[cand]
        px = self.px[cand]
        cand = cand[(px + ext > X0) & (px - ext < X0 + W)]
        self._paint_vessels(X0, Y0, W, H, acc_e)
        self._paint_cells(cand, X0, Y0, W, H, acc_h, acc_e)
        st = self.style
        conc_h = ndimage.gaussian_filter(acc_h.reshape(H, W) * st.h_scale, st.blur_sigma_px)
        conc_e = ndimage.gaussian_filter(
            0.9 * np.tanh(acc_e.reshape(H, W) / 0.9) * st.e_scale, st.blur_sigma_px
        )
        conc_h = conc_h[m:-m, m:-m]
        conc_e = conc_e[m:-m, m:-m]
        res = st.residual * alpha[m:-m, m:-m]
        hv = np.asarray(st.h_vector, dtype=np.float32)
        ev = np.asarray(st.e_vector, dtype=np.float32)
        rv = _unit(RESIDUAL_REF).astype(np.float32)
        od = conc_h[..., None] * hv + conc_e[..., None] * ev + res[..., None] * rv
        rgb = np.exp(-od) * (255.0 * np.asarray(st.illumination, dtype=np.float32))
        rng = np.random.default_rng([*self.seed, 13, y0, x0])
        rgb += rng.standard_normal(rgb.shape, dtype=np.float32) * np.float32(st.noise_sd)
        return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _bilinear(grid: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Separable bilinear interpolation of ``grid`` (c, ny, nx) at fractional rows × cols (edge-clamped)."""
    ny, nx = grid.shape[1:]
    r = np.clip(rows, 0, ny - 1.0)
    c = np.clip(cols, 0, nx - 1.0)
    r0 = np.minimum(np.floor(r).astype(np.int64), ny - 2)
    c0 = np.minimum(np.floor(c).astype(np.int64), nx - 2)
    fr = (r - r0).astype(np.float32)[None, :, None]
    fc = (c - c0).astype(np.float32)[None, None, :]
    g0 = grid[:, r0, :]
    g1 = grid[:, r0 + 1, :]
    rowi = g0 + (g1 - g0) * fr
    a = rowi[:, :, c0]
    b = rowi[:, :, c0 + 1]
    return a + (b - a) * fc


def _groups(extent: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """Group items by stencil half-size (rounded up to a coarse set of sizes)."""
    if extent.size == 0:
        return
    sizes = np.array([4, 6, 8, 10, 12, 15, 18, 22, 27, 33, 40, 50, 64, 96, 128])
    half = np.ceil(extent).astype(np.int64)
    k = np.minimum(np.searchsorted(sizes, half), sizes.size - 1)
    for j in np.unique(k):
        sel = np.flatnonzero(k == j)
        yield int(max(sizes[j], half[sel].max())), sel


def downsample4(image: np.ndarray, height: int, width: int, band: int = 256) -> np.ndarray:
    """Mean of 4 × 4 blocks: the ``(height, width, 3)`` uint8 image one pyramid level down.

    Works in bands of ``band`` output rows, so the float copy never exceeds one band.
    """
    out = np.empty((height, width, 3), dtype=np.uint8)
    for r0 in range(0, height, band):
        r1 = min(height, r0 + band)
        blocks = image[r0 * 4 : r1 * 4, : width * 4].reshape(r1 - r0, 4, width, 4, 3)
        out[r0:r1] = np.rint(blocks.astype(np.float32).mean(axis=(1, 3))).astype(np.uint8)
    return out


def pyramid_shapes(height: int, width: int) -> list[tuple[int, int]]:
    """Level shapes (downsample 1, 4, 16, …): at least two levels, the smallest ≥ 64 px where possible."""
    shapes = [(height, width)]
    k = 1
    while True:
        h, w = height // 4**k, width // 4**k
        if min(h, w) < 64 and len(shapes) >= 2:
            break
        if min(h, w) < 1:
            break
        shapes.append((h, w))
        k += 1
    return shapes


def write_pyramidal_tiff(
    path: Path,
    render: Callable[[int, int, int, int], np.ndarray],
    height: int,
    width: int,
    *,
    mpp: float,
    quality: int = 90,
    progress: bool = False,
    desc: str = "render",
) -> list[tuple[int, int]]:
    """Write a BigTIFF pyramid (tiled 256, JPEG) whose level 0 is produced strip by strip.

    Only one strip of tiles (256 rows × width) of level 0 and the level-1 image (downsample 4) are held
    in memory; lower levels are computed from level 1.

    Parameters
    ----------
    path
        Output file.
    render
        ``render(x0, y0, w, h) -> (h, w, 3) uint8`` level-0 pixels.
    height, width
        Level-0 size.
    mpp
        Level-0 pixel size (µm/px), written as XResolution/YResolution in pixels per centimetre.
    quality
        JPEG quality.
    progress
        Show a tqdm bar over the strips.
    desc
        Label of the bar.

    Returns
    -------
    list of tuple of int
        The (height, width) of each level.
    """
    shapes = pyramid_shapes(height, width)
    h1, w1 = shapes[1]
    level1 = np.zeros((h1, w1, 3), dtype=np.uint8)
    n_strips = -(-height // TILE)

    def tiles() -> Iterator[np.ndarray]:
        for si in tqdm(range(n_strips), desc=desc, disable=not progress, leave=False):
            y0 = si * TILE
            sh = min(TILE, height - y0)
            strip = np.empty((sh, width, 3), dtype=np.uint8)
            for x0 in range(0, width, CHUNK):
                cw = min(CHUNK, width - x0)
                strip[:, x0 : x0 + cw] = render(x0, y0, cw, sh)
            # downsample into level 1 (rows of this strip that form complete 4×4 blocks)
            r0 = y0 // 4
            nr = min(sh // 4, h1 - r0)
            if nr > 0:
                level1[r0 : r0 + nr] = downsample4(strip, nr, w1)
            for x0 in range(0, width, TILE):
                t = strip[:, x0 : x0 + TILE]
                if t.shape[0] != TILE or t.shape[1] != TILE:
                    t = np.pad(t, ((0, TILE - t.shape[0]), (0, TILE - t.shape[1]), (0, 0)), mode="edge")
                yield t

    common: dict[str, Any] = {
        "tile": (TILE, TILE),
        "compression": "jpeg",
        "compressionargs": {"level": int(quality)},
        "photometric": "rgb",
        "resolutionunit": "CENTIMETER",
        "metadata": None,
    }
    with tifffile.TiffWriter(path, bigtiff=True, ome=False) as tif:
        tif.write(
            tiles(),
            shape=(height, width, 3),
            dtype=np.uint8,
            resolution=(1e4 / mpp, 1e4 / mpp),
            subfiletype=0,
            **common,
        )
        img = level1
        for k, (hk, wk) in enumerate(shapes[1:], start=1):
            if k > 1:
                img = downsample4(img, hk, wk)
            ds = 4**k
            tif.write(img, resolution=(1e4 / (mpp * ds), 1e4 / (mpp * ds)), subfiletype=1, **common)
    return shapes
