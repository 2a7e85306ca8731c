"""Downsampled H&E images of a slide, with the factor that maps level-0 pixels onto them.

Every map that bitro draws over the H&E (``spots.h5ad`` for scanpy and squidpy, the heat maps, the
cross-validation figures) places level-0 coordinates on a thumbnail by one multiplication:
``thumbnail_px = level0_px × scale``. Visium's ``tissue_hires_scalef`` and ``tissue_lowres_scalef`` are
such factors, for images whose longer side is about 2000 and 600 pixels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bitro.io.slides import Slide, open_slide

#: Longer side (px) of Visium's ``tissue_hires_image.png`` and ``tissue_lowres_image.png``.
HIRES_SIZE = 2000
LOWRES_SIZE = 600


@dataclass(frozen=True)
class SlideImage:
    """A downsampled H&E image and its scale factor.

    Attributes
    ----------
    pixels
        H × W × 3 uint8 RGB.
    scale
        Image pixels per level-0 pixel (≤ 1): level-0 (x, y) × ``scale`` is the position in ``pixels``.
    """

    pixels: np.ndarray
    scale: float

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """(left, right, bottom, top) in level-0 pixels, for ``imshow(pixels, extent=…)`` with y down."""
        height, width = self.pixels.shape[:2]
        return (0.0, width / self.scale, height / self.scale, 0.0)


def _scale(slide: Slide, pixels: np.ndarray) -> float:
    """The factor of a thumbnail: its longer side over the slide's (both sides agree within a pixel)."""
    w0, h0 = slide.dimensions
    height, width = pixels.shape[:2]
    return width / w0 if w0 >= h0 else height / h0


def slide_image(slide: Slide | str | os.PathLike[str], *, max_size: int = HIRES_SIZE) -> SlideImage:
    """Read the whole slide downsampled so that its longer side is at most ``max_size`` pixels.

    Parameters
    ----------
    slide
        An open :class:`~bitro.io.slides.Slide`, or the path of one. A path is opened even when the file
        records no pixel size: a picture of the slide does not need one.
    max_size
        Longer side of the image; a smaller slide is returned at full resolution (scale 1).

    Returns
    -------
    SlideImage
        The RGB pixels and their scale factor.
    """
    if max_size < 1:
        raise ValueError(f"max_size must be a positive number of pixels, got {max_size}")
    if isinstance(slide, Slide):
        pixels = slide.get_thumbnail(max_size)
        return SlideImage(pixels, _scale(slide, pixels))
    with open_slide(Path(slide), fallback_mpp=1.0, fallback_source="not needed for a thumbnail") as opened:
        pixels = opened.get_thumbnail(max_size)
        return SlideImage(pixels, _scale(opened, pixels))


def resized(image: SlideImage, max_size: int) -> SlideImage:
    """``image`` shrunk so that its longer side is at most ``max_size`` (unchanged when it already is)."""
    from PIL import Image

    height, width = image.pixels.shape[:2]
    factor = max_size / max(height, width)
    if factor >= 1.0:
        return image
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    pixels = np.asarray(Image.fromarray(image.pixels).resize(size, Image.Resampling.LANCZOS))
    longer = size[0] if width >= height else size[1]
    return SlideImage(pixels, image.scale * longer / max(width, height))


@dataclass(frozen=True)
class VisiumImages:
    """The two images scanpy and squidpy read from ``uns["spatial"][library]["images"]``, and the slide
    they were read from (``None`` when unknown)."""

    hires: SlideImage
    lowres: SlideImage
    source: str | None = None


def visium_images(
    slide: Slide | str | os.PathLike[str], *, hires_size: int = HIRES_SIZE, lowres_size: int = LOWRES_SIZE
) -> VisiumImages:
    """Read a slide's ``hires`` and ``lowres`` images (longer sides ``hires_size``, ``lowres_size``).

    The slide is read once; the low-resolution image is a reduction of the high-resolution one.
    """
    if lowres_size > hires_size:
        raise ValueError(f"lowres_size ({lowres_size}) exceeds hires_size ({hires_size})")
    hires = slide_image(slide, max_size=hires_size)
    source = str(slide.path if isinstance(slide, Slide) else slide)
    return VisiumImages(hires=hires, lowres=resized(hires, lowres_size), source=source)
