"""The DINOv3 encoder on a tiny randomly initialised model of the same architecture (PITFALLS 14, 23)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from bitro.errors import InputError, MissingInputError
from bitro.features.encoders import DINOv3Encoder, preprocess


@pytest.fixture(scope="module")
def tiny_dinov3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    torch.manual_seed(0)
    config = DINOv3ViTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        patch_size=16,
        image_size=64,
        num_register_tokens=2,
    )
    folder = tmp_path_factory.mktemp("dinov3_tiny")
    DINOv3ViTModel(config).save_pretrained(folder, safe_serialization=True)
    return folder


def crops(n: int = 5, size: int = 48, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def test_embeddings_are_mean_pooled_patch_tokens(tiny_dinov3: Path) -> None:
    encoder = DINOv3Encoder(tiny_dinov3, image_size=64, bf16=False)
    x = crops()
    out = encoder.embed(x)
    assert out.shape == (5, 32) and out.dtype == np.float32 and np.isfinite(out).all()
    with torch.inference_mode():
        tokens = encoder.model(pixel_values=preprocess(x, 64)).last_hidden_state
    # Token layout: CLS, 2 registers, 16 patches (64 / 16 squared).
    assert tokens.shape[1] == 1 + 2 + 16
    assert np.allclose(out, tokens[:, 3:].mean(dim=1).numpy(), atol=1e-5)
    cls = DINOv3Encoder(tiny_dinov3, image_size=64, pooling="cls", bf16=False).embed(x)
    assert np.allclose(cls, tokens[:, 0].numpy(), atol=1e-5)
    assert np.array_equal(encoder.embed(x), out)  # deterministic
    assert len(encoder.sha256) == 64


def test_bf16_autocast_stays_close_to_float32(tiny_dinov3: Path) -> None:
    x = crops(seed=1)
    full = DINOv3Encoder(tiny_dinov3, image_size=64, bf16=False).embed(x)
    half = DINOv3Encoder(tiny_dinov3, image_size=64, bf16=True).embed(x)
    cos = (full * half).sum(1) / np.linalg.norm(full, axis=1) / np.linalg.norm(half, axis=1)
    assert cos.min() > 0.99


def test_preprocessing_resizes_and_normalises() -> None:
    grey = np.full((2, 48, 48, 3), 128, dtype=np.uint8)
    x = preprocess(grey, 224)
    assert x.shape == (2, 3, 224, 224)
    expected = (128 / 255 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    assert np.allclose(x[0, :, 100, 100].numpy(), expected, atol=1e-5)


def checkpoint_variant(source: Path, target: Path, edit: str) -> Path:
    target.mkdir()
    (target / "config.json").write_text((source / "config.json").read_text())
    state = load_file(str(source / "model.safetensors"))
    name = next(k for k in state if k.endswith("weight") and state[k].ndim == 2)
    if edit == "missing":
        del state[name]
    elif edit == "unexpected":
        state["head.extra.weight"] = torch.zeros(3, 3)
    else:
        state[name] = torch.zeros(state[name].shape[0] + 1, state[name].shape[1])
    save_file(state, str(target / "model.safetensors"))
    return target


@pytest.mark.parametrize("edit", ["missing", "unexpected", "wrong_shape"])
def test_a_checkpoint_that_does_not_fit_fails_loudly(tiny_dinov3: Path, tmp_path: Path, edit: str) -> None:
    broken = checkpoint_variant(tiny_dinov3, tmp_path / f"broken_{edit}", edit)
    with pytest.raises(InputError, match=f"broken_{edit}.*do not fit"):
        DINOv3Encoder(broken, image_size=64)


def test_missing_weights_say_where_to_put_them(tmp_path: Path) -> None:
    with pytest.raises(MissingInputError, match="dinov3-vitl16"):
        DINOv3Encoder(tmp_path / "nowhere")
