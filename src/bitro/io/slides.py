"""Whole-slide images: one ``Slide`` over OpenSlide, tifffile or pyvips.

OpenSlide reads every vendor format it knows. Pyramidal TIFFs it cannot read as pyramids (OME-TIFF with
SubIFDs, BigTIFFs written by other tools) are read with tifffile, then pyvips when it is importable.
The pixel size is read from the slide (``openslide.mpp-x/y``, TIFF ``XResolution`` with
``ResolutionUnit``, OME ``PhysicalSizeX``) or given explicitly; it is never assumed.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import numpy as np

from bitro.errors import InputError, MissingInputError, PixelSizeError

Backend = Literal["openslide", "tifffile", "pyvips"]

_TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8", ".tf2")
_OME_UNITS_UM = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6, "Å": 1e-4, "pm": 1e-6}


@dataclass(frozen=True)
class _PixelSize:
    """A pixel size in µm/px and where it was read."""

    mpp: float
    source: str


# --------------------------------------------------------------------------------------------------
# pixel size helpers
# --------------------------------------------------------------------------------------------------


def _valid_mpp(value: Any) -> float | None:
    """Return ``value`` as a positive finite float, or ``None`` when it is not one."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def _mpp_from_resolution(xres: Any, unit: Any) -> float | None:
    """Return µm/px from a TIFF ``XResolution`` (pixels per unit) and ``ResolutionUnit``.

    Returns ``None`` for unit "none" (1) or a missing/zero resolution.
    """
    if xres is None or unit is None:
        return None
    if isinstance(xres, tuple):
        if len(xres) != 2 or not xres[1]:
            return None
        xres = xres[0] / xres[1]
    px_per_unit = _valid_mpp(xres)
    if px_per_unit is None:
        return None
    unit_name = str(getattr(unit, "name", unit)).lower()
    if unit_name in {"3", "centimeter", "cm"}:
        return _valid_mpp(1e4 / px_per_unit)
    if unit_name in {"2", "inch"}:
        return _valid_mpp(25400.0 / px_per_unit)
    return None


def _mpp_from_ome(xml: str | None) -> float | None:
    """Return µm/px from the first OME ``Pixels`` element's ``PhysicalSizeX``, or ``None``."""
    if not xml:
        return None
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    for element in root.iter():
        if element.tag.rsplit("}", 1)[-1] == "Pixels":
            size = _valid_mpp(element.get("PhysicalSizeX"))
            if size is None:
                return None
            unit = element.get("PhysicalSizeXUnit", "µm")
            factor = _OME_UNITS_UM.get(unit)
            return None if factor is None else size * factor
    return None


def _mpp_from_aperio(description: str | None) -> float | None:
    """Return the ``MPP = …`` value of an Aperio ImageDescription, or ``None``."""
    if not description:
        return None
    match = re.search(r"\|\s*MPP\s*=\s*([0-9.eE+-]+)", description)
    return _valid_mpp(match.group(1)) if match else None


def _tiff_pixel_size(tif: Any) -> _PixelSize | None:
    """Return the pixel size recorded in an open ``tifffile.TiffFile``, or ``None``."""
    ome = _mpp_from_ome(tif.ome_metadata if tif.is_ome else None)
    if ome is not None:
        return _PixelSize(ome, "OME PhysicalSizeX")
    page = tif.pages[0]
    xres = page.tags.get("XResolution")
    unit = page.tags.get("ResolutionUnit")
    res = _mpp_from_resolution(xres.value if xres else None, unit.value if unit else None)
    if res is not None:
        return _PixelSize(res, "TIFF XResolution")
    aperio = _mpp_from_aperio(page.description)
    return _PixelSize(aperio, "Aperio MPP") if aperio is not None else None


# --------------------------------------------------------------------------------------------------
# pixel helpers
# --------------------------------------------------------------------------------------------------


def _to_rgb(pixels: np.ndarray) -> np.ndarray:
    """Return ``pixels`` (H×W, H×W×1, H×W×3 or H×W×4, any int dtype) as H×W×3 uint8, alpha on white."""
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if pixels.dtype != np.uint8:
        if np.issubdtype(pixels.dtype, np.integer) and pixels.dtype.itemsize > 1:
            pixels = (pixels.astype(np.float64) / np.iinfo(pixels.dtype).max * 255.0).round()
        pixels = np.clip(pixels, 0, 255).astype(np.uint8)
    channels = pixels.shape[2]
    if channels in (1, 2):
        grey = pixels[:, :, :1]
        alpha = pixels[:, :, 1:2] if channels == 2 else None
        pixels = np.concatenate([grey, grey, grey] + ([alpha] if alpha is not None else []), axis=2)
        channels = pixels.shape[2]
    if channels == 3:
        return np.ascontiguousarray(pixels)
    rgb = pixels[:, :, :3].astype(np.float32)
    alpha = pixels[:, :, 3:4].astype(np.float32) / 255.0
    out = rgb * alpha + 255.0 * (1.0 - alpha)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _white(height: int, width: int) -> np.ndarray:
    """Return an H×W×3 white uint8 canvas."""
    return np.full((height, width, 3), 255, dtype=np.uint8)


def _level_xy(location: tuple[int, int], downsample: float) -> tuple[int, int]:
    """Return level-0 ``location`` as (x, y) pixels of a level with ``downsample``."""
    return math.floor(location[0] / downsample), math.floor(location[1] / downsample)


def _clip_window(
    x: int, y: int, width: int, height: int, bounds: tuple[int, int]
) -> tuple[int, int, int, int] | None:
    """Return the part ``(x0, y0, x1, y1)`` of a window inside ``bounds`` = (w, h), or ``None``."""
    x0, y0 = max(x, 0), max(y, 0)
    x1, y1 = min(x + width, bounds[0]), min(y + height, bounds[1])
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1, y1


# --------------------------------------------------------------------------------------------------
# backends
# --------------------------------------------------------------------------------------------------


class _OpenSlideBackend:
    """Pixel access through openslide-python."""

    name: Backend = "openslide"

    def __init__(self, path: Path) -> None:
        import openslide

        self._slide = openslide.OpenSlide(str(path))
        self.level_dimensions = [tuple(map(int, d)) for d in self._slide.level_dimensions]

    def pixel_size(self) -> _PixelSize | None:
        props = self._slide.properties
        mpp_x = _valid_mpp(props.get("openslide.mpp-x"))
        if mpp_x is not None:
            return _PixelSize(mpp_x, "openslide.mpp-x")
        res = _mpp_from_resolution(props.get("tiff.XResolution"), props.get("tiff.ResolutionUnit"))
        return _PixelSize(res, "TIFF XResolution") if res is not None else None

    def read(
        self, level: int, location: tuple[int, int], width: int, height: int, downsample: float
    ) -> np.ndarray:
        region = self._slide.read_region(location, level, (width, height))
        return _to_rgb(np.asarray(region))

    def close(self) -> None:
        self._slide.close()


class _WindowedBackend:
    """A backend that decodes only the part of a region inside the level; the rest stays white."""

    level_dimensions: list[tuple[int, int]]

    def _window_pixels(self, level: int, window: tuple[int, int, int, int]) -> np.ndarray:
        raise NotImplementedError

    def read(
        self, level: int, location: tuple[int, int], width: int, height: int, downsample: float
    ) -> np.ndarray:
        x, y = _level_xy(location, downsample)
        canvas = _white(height, width)
        window = _clip_window(x, y, width, height, self.level_dimensions[level])
        if window is None:
            return canvas
        x0, y0, x1, y1 = window
        canvas[y0 - y : y1 - y, x0 - x : x1 - x] = _to_rgb(self._window_pixels(level, window))
        return canvas


class _TiffFileBackend(_WindowedBackend):
    """Pixel access through tifffile, decoding only the tiles a region needs."""

    name: Backend = "tifffile"

    def __init__(self, path: Path) -> None:
        import tifffile

        self._tif = tifffile.TiffFile(str(path))
        try:
            series = self._tif.series[0]
            self._pages = [level.keyframe for level in series.levels]
            self.level_dimensions = [(int(p.imagewidth), int(p.imagelength)) for p in self._pages]
            for page in self._pages:
                if page.imagedepth != 1:
                    raise ValueError("volumetric TIFF pages are not slides")
        except Exception:
            self._tif.close()
            raise
        self._full: dict[int, np.ndarray] = {}

    def pixel_size(self) -> _PixelSize | None:
        return _tiff_pixel_size(self._tif)

    def _level_array(self, level: int) -> np.ndarray:
        if level not in self._full:
            self._full[level] = self._pages[level].asarray()
        return self._full[level]

    def _read_tiles(self, page: Any, window: tuple[int, int, int, int]) -> np.ndarray:
        x0, y0, x1, y1 = window
        tw, th = int(page.tilewidth), int(page.tilelength)
        tiles_across = math.ceil(page.imagewidth / tw)
        out: np.ndarray | None = None
        fh = self._tif.filehandle
        for row in range(y0 // th, (y1 - 1) // th + 1):
            for col in range(x0 // tw, (x1 - 1) // tw + 1):
                index = row * tiles_across + col
                offset, count = page.dataoffsets[index], page.databytecounts[index]
                if count == 0:
                    continue
                decode = page.decode  # a cached property that may move the file position: fetch it first
                fh.seek(offset)
                data = fh.read(count)
                segment, _, _ = decode(data, index, jpegtables=page.jpegtables)
                tile = np.asarray(segment).reshape(segment.shape[-3:])
                if out is None:
                    out = np.zeros((y1 - y0, x1 - x0, tile.shape[2]), dtype=tile.dtype)
                ty, tx = row * th, col * tw
                sy0, sx0 = max(y0, ty), max(x0, tx)
                sy1, sx1 = min(y1, ty + tile.shape[0]), min(x1, tx + tile.shape[1])
                out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = tile[sy0 - ty : sy1 - ty, sx0 - tx : sx1 - tx]
        if out is None:
            samples = int(page.samplesperpixel)
            out = np.zeros((y1 - y0, x1 - x0, samples), dtype=page.dtype)
        return out

    def _window_pixels(self, level: int, window: tuple[int, int, int, int]) -> np.ndarray:
        page = self._pages[level]
        if page.is_tiled and page.planarconfig == 1:
            return self._read_tiles(page, window)
        x0, y0, x1, y1 = window
        full = self._level_array(level)
        if full.ndim == 3 and full.shape[0] == page.samplesperpixel and page.planarconfig == 2:
            full = np.moveaxis(full, 0, -1)
        return full[y0:y1, x0:x1]

    def close(self) -> None:
        self._tif.close()


class _PyVipsBackend(_WindowedBackend):
    """Pixel access through pyvips (SubIFD pyramids or one page per level)."""

    name: Backend = "pyvips"

    def __init__(self, path: Path) -> None:
        import pyvips

        self._path = path
        base = pyvips.Image.new_from_file(str(path), access="random")
        n_subifds = int(base.get("n-subifds")) if "n-subifds" in base.get_fields() else 0
        if n_subifds:
            self._levels = [base] + [
                pyvips.Image.new_from_file(str(path), subifd=i, access="random") for i in range(n_subifds)
            ]
        else:
            self._levels = [base]
            n_pages = int(base.get("n-pages")) if "n-pages" in base.get_fields() else 1
            for page in range(1, n_pages):
                image = pyvips.Image.new_from_file(str(path), page=page, access="random")
                previous = self._levels[-1]
                if image.width >= previous.width or image.height >= previous.height:
                    break  # not a reduced level (e.g. a label or macro image)
                self._levels.append(image)
        self.level_dimensions = [(int(im.width), int(im.height)) for im in self._levels]
        self._base = base

    def pixel_size(self) -> _PixelSize | None:
        try:
            import tifffile

            with tifffile.TiffFile(str(self._path)) as tif:
                found = _tiff_pixel_size(tif)
            if found is not None:
                return found
        except Exception:
            pass
        xres = _valid_mpp(self._base.xres)  # pixels per mm
        if xres is not None and "resolution-unit" in self._base.get_fields():
            return _PixelSize(1000.0 / xres, "TIFF XResolution")
        return None

    def _window_pixels(self, level: int, window: tuple[int, int, int, int]) -> np.ndarray:
        x0, y0, x1, y1 = window
        return self._levels[level].crop(x0, y0, x1 - x0, y1 - y0).numpy()

    def close(self) -> None:
        self._levels = []


def _tiff_level_count(path: Path) -> int | None:
    """Return the number of pyramid levels tifffile sees in ``path``, or ``None`` if it cannot read it."""
    try:
        import tifffile

        with tifffile.TiffFile(str(path)) as tif:
            return len(tif.series[0].levels)
    except Exception:
        return None


def _open_backend(path: Path, backend: Backend | None) -> Any:
    """Open ``path`` with the requested backend, or the first that reads it as a pyramid."""
    order: list[Backend] = [backend] if backend else ["openslide", "tifffile", "pyvips"]
    factories = {"openslide": _OpenSlideBackend, "tifffile": _TiffFileBackend, "pyvips": _PyVipsBackend}
    errors: list[str] = []
    for name in order:
        try:
            opened = factories[name](path)
        except ImportError as exc:
            errors.append(f"{name}: not installed ({exc})")
            continue
        except Exception as exc:
            errors.append(f"{name}: {exc}")
            continue
        if name == "openslide" and backend is None and path.suffix.lower() in _TIFF_SUFFIXES:
            # OpenSlide reads OME/SubIFD pyramids as one flat level: prefer a reader that sees them all.
            tiff_levels = _tiff_level_count(path)
            if tiff_levels is not None and tiff_levels > len(opened.level_dimensions):
                opened.close()
                errors.append("openslide: sees fewer pyramid levels than the TIFF holds")
                continue
        return opened
    raise InputError(path, "cannot be read as a whole-slide image (" + "; ".join(errors) + ")")


# --------------------------------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------------------------------


class Slide:
    """A whole-slide image with level-0 pixel size.

    Attributes
    ----------
    path
        The slide file.
    backend
        ``"openslide"``, ``"tifffile"`` or ``"pyvips"``.
    dimensions
        (width, height) of level 0.
    level_count, level_dimensions, level_downsamples
        The pyramid, level 0 first; downsamples are relative to level 0.
    mpp
        Micrometres per level-0 pixel.
    mpp_source
        Where ``mpp`` came from (e.g. ``"openslide.mpp-x"``, ``"OME PhysicalSizeX"``, ``"override"``).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        mpp: float | None = None,
        mpp_source: str = "override",
        fallback_mpp: float | None = None,
        fallback_source: str = "fallback",
        backend: Backend | None = None,
    ) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise MissingInputError(self.path, "slide")
        self._impl = _open_backend(self.path, backend)
        self.backend: Backend = self._impl.name
        self.level_dimensions: list[tuple[int, int]] = list(self._impl.level_dimensions)
        self.dimensions: tuple[int, int] = self.level_dimensions[0]
        self.level_count = len(self.level_dimensions)
        w0, h0 = self.dimensions
        self.level_downsamples: list[float] = [(w0 / w + h0 / h) / 2.0 for w, h in self.level_dimensions]
        try:
            self.mpp, self.mpp_source = self._resolve_mpp(mpp, mpp_source, fallback_mpp, fallback_source)
        except Exception:
            self.close()
            raise

    def _resolve_mpp(
        self, mpp: float | None, source: str, fallback: float | None, fallback_source: str
    ) -> tuple[float, str]:
        if mpp is not None:
            value = _valid_mpp(mpp)
            if value is None:
                raise InputError(self.path, f"pixel size override {mpp!r} is not a positive number")
            return value, source
        found = self._impl.pixel_size()
        if found is None and self.backend == "openslide" and self.path.suffix.lower() in _TIFF_SUFFIXES:
            try:
                import tifffile

                with tifffile.TiffFile(str(self.path)) as tif:
                    found = _tiff_pixel_size(tif)
            except Exception:
                found = None
        if found is not None:
            return found.mpp, found.source
        if fallback is not None and _valid_mpp(fallback) is not None:
            return float(fallback), fallback_source
        raise PixelSizeError(
            self.path,
            "no pixel size (µm/px) in the slide (no openslide.mpp-x, TIFF XResolution with a "
            "centimetre/inch unit, or OME PhysicalSizeX); give it explicitly with mpp=…",
        )

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """Read a region of one pyramid level.

        Parameters
        ----------
        location
            (x, y) of the top-left corner in level-0 pixels.
        level
            Pyramid level to read.
        size
            (width, height) of the region in pixels of ``level``.

        Returns
        -------
        numpy.ndarray
            height × width × 3 uint8 RGB; transparent pixels and pixels outside the slide are white.
        """
        if not 0 <= level < self.level_count:
            raise ValueError(f"level {level} out of range 0..{self.level_count - 1} for {self.path}")
        width, height = int(size[0]), int(size[1])
        if width <= 0 or height <= 0:
            raise ValueError(f"region size must be positive, got {size}")
        location = (int(location[0]), int(location[1]))
        try:
            return self._impl.read(level, location, width, height, self.level_downsamples[level])
        except Exception as exc:
            raise InputError(
                self.path,
                f"cannot decode level {level} at {location} ({type(exc).__name__}: {exc}): the file is "
                "truncated or corrupt; download or copy it again",
            ) from exc

    def verify(self, size: int = 64) -> None:
        """Decode the last tile of every level (the end of the file, where a truncated copy breaks).

        Raises
        ------
        InputError
            A level cannot be decoded, naming the slide.
        """
        for level, (width, height) in enumerate(self.level_dimensions):
            w, h = min(size, width), min(size, height)
            scale = self.level_downsamples[level]
            self.read_region((int((width - w) * scale), int((height - h) * scale)), level, (w, h))

    def get_thumbnail(self, max_size: int) -> np.ndarray:
        """Return the whole slide as H×W×3 uint8 RGB whose longer side is at most ``max_size`` pixels."""
        from PIL import Image

        w0, h0 = self.dimensions
        scale = max(w0, h0) / float(max_size)
        level = self.best_level_for_downsample(scale)
        lw, lh = self.level_dimensions[level]
        pixels = self.read_region((0, 0), level, (lw, lh))
        target = (max(1, round(w0 / max(scale, 1.0))), max(1, round(h0 / max(scale, 1.0))))
        if target == (lw, lh):
            return pixels
        return np.asarray(Image.fromarray(pixels).resize(target, Image.Resampling.LANCZOS))

    def best_level_for_downsample(self, downsample: float) -> int:
        """Return the highest level whose downsample does not exceed ``downsample`` (0 if none)."""
        best = 0
        for level, level_ds in enumerate(self.level_downsamples):
            # Pyramid downsamples are rounded (16.001 for 16): within 0.1 % counts as the level asked for.
            if level_ds <= downsample * (1 + 1e-3):
                best = level
        return best

    def level_mpp(self, level: int) -> float:
        """Return µm per pixel of ``level``."""
        return self.mpp * self.level_downsamples[level]

    def close(self) -> None:
        """Release the underlying reader."""
        impl = getattr(self, "_impl", None)
        if impl is not None:
            impl.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Slide({str(self.path)!r}, backend={self.backend!r}, dimensions={self.dimensions}, "
            f"levels={self.level_count}, mpp={self.mpp:.4g} [{self.mpp_source}])"
        )


def open_slide(
    path: str | Path,
    *,
    mpp: float | None = None,
    mpp_source: str = "override",
    fallback_mpp: float | None = None,
    fallback_source: str = "fallback",
    backend: Backend | None = None,
) -> Slide:
    """Open a whole-slide image.

    Parameters
    ----------
    path
        Slide file (anything OpenSlide opens, or a pyramidal TIFF/OME-TIFF).
    mpp
        µm per level-0 pixel; overrides what the slide records.
    mpp_source
        Label recorded in ``Slide.mpp_source`` when ``mpp`` is given.
    fallback_mpp, fallback_source
        Pixel size used only when neither ``mpp`` nor the slide gives one (e.g. from an alignment).
    backend
        Force one reader; by default OpenSlide, then tifffile, then pyvips.

    Returns
    -------
    Slide
        The open slide; use it as a context manager or call ``close()``.

    Raises
    ------
    MissingInputError
        The file does not exist.
    InputError
        The file cannot be read, or has no pixel size and none was given.
    """
    return Slide(
        path,
        mpp=mpp,
        mpp_source=mpp_source,
        fallback_mpp=fallback_mpp,
        fallback_source=fallback_source,
        backend=backend,
    )
