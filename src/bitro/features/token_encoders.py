"""Encoders as tile-token mode uses them: the tokens of whole tiles, and where they sit on the tile.

- ViT (DINOv3): the patch tokens (CLS and register tokens dropped), one per 16-px patch, row by row; the
  footprint squares are the patches themselves.
- CNN (EfficientNet-Lite0): the cells of the last feature map, one per 32 px, sampled bilinearly at the
  centres of 8-px footprint squares (:data:`CNN_FINE_FRACTION`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from bitro.errors import TileSettingsError
from bitro.features.encoders import (
    DINOv3Encoder,
    EfficientNetEncoder,
    Encoder,
    HistomicsTKMorphologyEncoder,
    MorphologyEncoder,
)
from bitro.features.tiling import TokenGrid
from bitro.options import NO_TOKENS

#: Side of the footprint squares for a CNN map, as a fraction of its stride (8 px for a 32-px stride).
CNN_FINE_FRACTION = 4


@runtime_checkable
class TokenEncoder(Protocol):
    """An encoder as tile-token mode uses it: tokens of whole tiles and where they sit."""

    @property
    def name(self) -> str: ...

    @property
    def sha256(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def grid(self, side: int) -> TokenGrid:
        """Where the tokens of a ``side``-px square input sit."""
        ...

    def tokens(self, tiles: np.ndarray) -> torch.Tensor:
        """Tokens (n, grid.n², dim) float32, row-major, of uint8 tiles (n, side, side, 3), on the device."""
        ...


class _EncoderTokens:
    """The wrapped encoder's name, weights digest and width, which a token view reports as its own."""

    encoder: DINOv3Encoder | EfficientNetEncoder

    @property
    def name(self) -> str:
        return self.encoder.name

    @property
    def sha256(self) -> str:
        return self.encoder.sha256

    @property
    def dim(self) -> int:
        return self.encoder.dim


@dataclass
class ViTTokens(_EncoderTokens):
    """The patch tokens of a DINOv3 ViT at the tile's own size (RoPE positions, no resizing)."""

    encoder: DINOv3Encoder

    def grid(self, side: int) -> TokenGrid:
        patch = self.encoder.patch_size
        return TokenGrid(side=side, n=side // patch, stride=float(patch), origin=patch / 2, fine=patch)

    def tokens(self, tiles: np.ndarray) -> torch.Tensor:
        out = self.encoder.tokens(tiles, size=tiles.shape[1])
        # Layout: CLS, register tokens, then the patches row by row.
        return out[:, 1 + self.encoder.n_registers :].float()


@dataclass
class CNNTokens(_EncoderTokens):
    """The cells of EfficientNet-Lite0's last feature map, sampled bilinearly under each footprint."""

    encoder: EfficientNetEncoder

    def grid(self, side: int) -> TokenGrid:
        stride, origin, n = self.encoder.model.feature_grid(side)
        return TokenGrid(side=side, n=n, stride=stride, origin=origin, fine=int(stride) // CNN_FINE_FRACTION)

    def tokens(self, tiles: np.ndarray) -> torch.Tensor:
        fmap = self.encoder.feature_map(tiles, size=tiles.shape[1])
        return fmap.flatten(2).transpose(1, 2).float()


def token_encoder(encoder: Encoder | TokenEncoder) -> TokenEncoder:
    """The tile-token view of an encoder.

    Raises
    ------
    TileSettingsError
        ``morphology``: it has no tokens (use crop mode).
    """
    if isinstance(encoder, (MorphologyEncoder, HistomicsTKMorphologyEncoder)):
        raise TileSettingsError("--mode tile-token", NO_TOKENS)
    if isinstance(encoder, DINOv3Encoder):
        return ViTTokens(encoder)
    if isinstance(encoder, EfficientNetEncoder):
        return CNNTokens(encoder)
    if isinstance(encoder, TokenEncoder):
        return encoder
    raise TypeError(f"{type(encoder).__name__} has no tokens for tile-token mode")
