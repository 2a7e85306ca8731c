"""Weights files checked without loading them: the safetensors header, and tensor shapes against a model.

A truncated download of a ``.safetensors`` file fails deep inside the library that reads it; its header
(8 bytes of length, then JSON naming every tensor's dtype, shape and byte range) says at once whether
the file is whole and whether its tensors fit the architecture.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from pathlib import Path

from bitro.errors import WeightsError

#: Bytes per element of the safetensors dtypes.
DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}
#: A header longer than this is not a safetensors header (the format caps it at 100 MB).
MAX_HEADER = 100_000_000


def safetensors_header(path: str | Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """Tensor name → (dtype, shape) of a ``.safetensors`` file, after checking that the file is whole.

    Raises
    ------
    WeightsError
        The file is not safetensors, its header is cut or malformed, a tensor's byte range disagrees
        with its dtype and shape, or the data stops before the last tensor ends (a truncated download).
    """
    path = Path(path)
    size = path.stat().st_size
    redownload = "a truncated or corrupt download: fetch the file again"
    with path.open("rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise WeightsError(path, f"{size} bytes, too short for a safetensors header: {redownload}")
        (length,) = struct.unpack("<Q", head)
        if length > MAX_HEADER or 8 + length > size:
            raise WeightsError(path, f"its safetensors header is cut off ({size} bytes): {redownload}")
        try:
            header = json.loads(handle.read(length).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise WeightsError(
                path, f"its safetensors header is not valid JSON ({exc}): {redownload}"
            ) from exc
    if not isinstance(header, dict):
        raise WeightsError(path, f"its safetensors header is not a JSON object: {redownload}")
    tensors: dict[str, tuple[str, tuple[int, ...]]] = {}
    end = 0
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape = str(info["dtype"]), tuple(int(n) for n in info["shape"])
            begin, stop = (int(n) for n in info["data_offsets"])
        except (KeyError, TypeError, ValueError) as exc:
            raise WeightsError(path, f"tensor {name!r} has a malformed header entry ({exc})") from exc
        width = DTYPE_BYTES.get(dtype)
        if width is not None and stop - begin != width * math.prod(shape):
            raise WeightsError(
                path, f"tensor {name!r}: {stop - begin} bytes for {dtype} {list(shape)}: {redownload}"
            )
        tensors[name] = (dtype, shape)
        end = max(end, stop)
    if 8 + length + end > size:
        raise WeightsError(
            path,
            f"{size} bytes, but its tensors need {8 + length + end} (the data stops early): {redownload}",
        )
    return tensors


def check_shapes(
    path: str | Path, found: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]], what: str
) -> None:
    """Raise ``WeightsError`` when the tensors ``found`` in ``path`` do not fit the ``expected`` shapes.

    Every expected tensor must be there with its shape; extra tensors are refused too (other weights).
    """
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    wrong = sorted(k for k in set(found) & set(expected) if tuple(found[k]) != tuple(expected[k]))
    problems = []
    if wrong:
        k = wrong[0]
        problems.append(
            f"{len(wrong)} tensor(s) of another shape (e.g. {k}: {list(found[k])}, expected "
            f"{list(expected[k])})"
        )
    if missing:
        problems.append(f"{len(missing)} tensor(s) missing (e.g. {missing[0]})")
    if extra:
        problems.append(f"{len(extra)} unexpected tensor(s) (e.g. {extra[0]})")
    if problems:
        raise WeightsError(path, f"does not fit the {what} architecture: " + "; ".join(problems))


def dinov3_expected_shapes(folder: str | Path) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of the DINOv3 ViT that ``folder/config.json`` describes (built on the meta device)."""
    import torch
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    folder = Path(folder)
    try:
        config = DINOv3ViTConfig.from_pretrained(str(folder))
    except (OSError, ValueError) as exc:
        raise WeightsError(folder / "config.json", f"is not a DINOv3 ViT config ({exc})") from exc
    with torch.device("meta"):
        model = DINOv3ViTModel(config)
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def check_dinov3_folder(folder: str | Path) -> list[Path]:
    """Check every ``*.safetensors`` of a DINOv3 folder: whole, and together fitting its ``config.json``.

    Returns the weight files checked.
    """
    folder = Path(folder)
    shards = sorted(folder.glob("*.safetensors"))
    found: dict[str, tuple[int, ...]] = {}
    for shard in shards:
        found |= {name: shape for name, (_, shape) in safetensors_header(shard).items()}
    expected = {_strip_prefix(name): shape for name, shape in dinov3_expected_shapes(folder).items()}
    found = {_strip_prefix(name): shape for name, shape in found.items()}
    where = shards[0] if len(shards) == 1 else folder
    check_shapes(where, found, expected, "DINOv3 ViT (config.json)")
    return shards


def _strip_prefix(name: str) -> str:
    """``name`` without a leading base-model prefix (``model.``, ``dinov3.``), as checkpoints differ in it."""
    for prefix in ("model.", "dinov3."):
        if name.startswith(prefix):
            return name[len(prefix) :]
    return name


def check_efficientnet_file(path: str | Path) -> None:
    """Check an EfficientNet-Lite0 ``.pth``: loadable as plain tensors and fitting the architecture."""
    import torch

    from bitro.features.efficientnet import EfficientNetLite0

    path = Path(path)
    try:
        state = torch.load(path, map_location="meta", weights_only=True)
    except Exception as exc:
        raise WeightsError(
            path, f"is not a readable PyTorch weights file ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(state, Mapping):
        raise WeightsError(path, f"holds a {type(state).__name__}, not a state dict of tensors")
    expected = {name: tuple(t.shape) for name, t in EfficientNetLite0().state_dict().items()}
    found = {str(name): tuple(getattr(t, "shape", ())) for name, t in state.items()}
    check_shapes(path, found, expected, "EfficientNet-Lite0")
