"""Cell encoders: crops in, one embedding per crop out.

``dinov3_vitl16`` is the paper's encoder: ``transformers.DINOv3ViTModel`` loaded from a local directory
(``config.json`` + ``model.safetensors``) and nothing else (no hub, no download). Loading is strict: a
missing, unexpected or wrongly shaped weight is an error naming the file (PITFALLS 14), never a silently
re-initialised layer. Preprocessing is done here, without the transformers image processors (they pull
torchvision, PITFALLS 16): resize to the model's input size with antialiasing, scale to [0, 1], ImageNet
mean and standard deviation. Pooling is the mean of the patch tokens (the paper's global average
pooling; register tokens excluded) or the CLS token.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from bitro.errors import InputError, MissingInputError

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


def weights_sha256(paths: list[Path]) -> str:
    """sha256 over the weight files, in name order (what ``embeddings.json`` records)."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


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
        try:
            model, info = DINOv3ViTModel.from_pretrained(str(folder), output_loading_info=True)
        except (OSError, RuntimeError, ValueError) as exc:
            raise InputError(folder, f"DINOv3 weights do not fit the architecture ({exc})") from exc
        problems = {
            kind: info.get(kind)
            for kind in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")
        }
        problems = {kind: sorted(map(str, keys))[:5] for kind, keys in problems.items() if keys}
        if problems:
            raise InputError(folder, f"DINOv3 weights do not fit the architecture: {problems}")
        self.model = model.eval().to(self.device)
        self.dim = int(model.config.hidden_size)
        self.sha256 = weights_sha256(weights)
        self._registers = int(getattr(model.config, "num_register_tokens", 0))

    @torch.inference_mode()
    def embed(self, crops: np.ndarray) -> np.ndarray:
        """Embeddings (n × dim, float32) of uint8 crops (n, h, w, 3)."""
        x = preprocess(crops, self.image_size).to(self.device)
        use_bf16 = self.bf16 and (self.device != "cpu" or torch.backends.mkldnn.is_available())
        with torch.autocast(device_type=self.device.split(":")[0], dtype=torch.bfloat16, enabled=use_bf16):
            tokens = self.model(pixel_values=x).last_hidden_state
        # Token layout: CLS, register tokens, then the patches.
        pooled = tokens[:, 0] if self.pooling == "cls" else tokens[:, 1 + self._registers :].mean(dim=1)
        return pooled.float().cpu().numpy()
