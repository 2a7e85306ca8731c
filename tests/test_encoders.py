"""The DINOv3 encoder on a tiny randomly initialised model of the same architecture (docs/pitfalls.md)."""

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


def test_packaged_efficientnet_weights_are_the_real_imagenet_ones() -> None:
    """Strictly loaded, offline, it names scikit-image's cat and coffee photos (ImageNet 285, 967)."""
    from skimage import data

    from bitro.features.efficientnet import load_efficientnet_lite0

    model = load_efficientnet_lite0()
    for image, expected in ((data.chelsea(), {281, 282, 285}), (data.coffee(), {967, 968, 504})):
        with torch.inference_mode():
            logits = model(preprocess(image[None], 224))
        assert int(logits.argmax()) in expected


def test_efficientnet_weights_that_do_not_fit_fail(tmp_path: Path) -> None:
    from bitro.features.efficientnet import load_efficientnet_lite0, packaged_weights

    state = torch.load(packaged_weights(), map_location="cpu", weights_only=True)
    state.pop("_fc.bias")
    torch.save(state, tmp_path / "truncated.pth")
    with pytest.raises(InputError, match=r"truncated\.pth.*EfficientNet-Lite0"):
        load_efficientnet_lite0(tmp_path / "truncated.pth")


def test_registry_and_embedding_shapes() -> None:
    from bitro.features.encoders import ENCODERS, load_encoder

    x = crops(4)
    for name in ("efficientnet_lite0", "morphology", "morphology_histomicstk"):
        encoder = load_encoder(name, image_size=64)
        out = encoder.embed(x)
        assert out.shape == (4, encoder.dim) and np.isfinite(out).all()
    assert set(ENCODERS) == {"dinov3_vitl16", "efficientnet_lite0", "morphology", "morphology_histomicstk"}
    with pytest.raises(MissingInputError, match="resources/weights/dinov3_vitl16"):
        load_encoder("dinov3_vitl16")
    with pytest.raises(ValueError, match="unknown encoder"):
        load_encoder("resnet")


def test_morphology_measures_a_drawn_nucleus() -> None:
    from bitro.features.encoders import MORPHOLOGY_FEATURES, MorphologyEncoder

    yy, xx = np.mgrid[:48, :48]
    disk = (xx - 24) ** 2 + (yy - 24) ** 2 <= 8**2
    ellipse = ((xx - 24) / 14) ** 2 + ((yy - 24) / 5) ** 2 <= 1
    images = np.full((2, 48, 48, 3), (235, 200, 225), dtype=np.uint8)
    images[0][disk] = (90, 60, 140)
    images[1][ellipse] = (90, 60, 140)
    features = MorphologyEncoder().embed(images)
    area = features[:, MORPHOLOGY_FEATURES.index("nucleus_area_px")]
    eccentricity = features[:, MORPHOLOGY_FEATURES.index("nucleus_eccentricity")]
    assert area[0] == disk.sum() and area[1] == ellipse.sum()
    assert eccentricity[0] < 0.1 and eccentricity[1] > 0.9
    # Given the outline, it measures the outline, not what it finds in the crop.
    inner = ((xx - 24) / 10) ** 2 + ((yy - 24) / 4) ** 2 <= 1
    assert MorphologyEncoder().embed(images[1:], inner[None])[0, 0] == inner.sum()


@pytest.fixture(scope="module")
def demo_crops(small_demo: tuple[Path, dict], tmp_path_factory: pytest.TempPathFactory) -> Path:
    from bitro.io import open_slide
    from bitro.preprocess.crops import CropParams, write_crops

    root, _ = small_demo
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, 1200, 700), rng.uniform(0, 1200, 700)
    out = tmp_path_factory.mktemp("embed") / "crops.zarr"
    with open_slide(root / "hest" / "wsis" / "DEMO01.tif") as slide:
        return write_crops(slide, x, y, out, params=CropParams(chunk=128), progress=False)


def test_crop_mode_writes_every_cells_embedding_and_its_description(
    demo_crops: Path, tiny_dinov3: Path, tmp_path: Path
) -> None:
    import json

    from bitro.features.embed import embed_crops, read_embeddings
    from bitro.preprocess.crops import read_crops

    encoder = DINOv3Encoder(tiny_dinov3, image_size=64, bf16=False)
    out = embed_crops(demo_crops, encoder, tmp_path / "embeddings.npy", batch_size=50, progress=False)
    values, describe = read_embeddings(out)
    expected = encoder.embed(read_crops(demo_crops)[:])
    assert values.dtype == np.float16 and values.shape == (700, 32)
    assert np.allclose(values, expected, atol=2e-2, rtol=1e-2)
    assert describe["encoder"] == "dinov3_vitl16" and describe["weights_sha256"] == encoder.sha256
    assert describe | {"mode": "crop", "crop_size": 48, "mpp": 0.5, "n_cells": 700} == describe
    assert json.loads(out.with_suffix(".json").read_text()) == describe


def test_an_interrupted_embedding_resumes(
    demo_crops: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bitro.features.embed import embed_crops, read_embeddings
    from bitro.features.encoders import MorphologyEncoder

    encoder = MorphologyEncoder()
    calls = {"n": 0}
    real = MorphologyEncoder.embed

    def failing(self: MorphologyEncoder, crops: np.ndarray) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, crops)

    out = tmp_path / "embeddings.npy"
    monkeypatch.setattr(MorphologyEncoder, "embed", failing)
    with pytest.raises(KeyboardInterrupt):
        embed_crops(demo_crops, encoder, out, batch_size=128, loader_workers=0, progress=False)
    assert not out.exists() and out.with_name("embeddings.npy.partial").exists()
    calls["n"] = -100  # no more failures
    embed_crops(demo_crops, encoder, out, batch_size=128, loader_workers=0, progress=False)
    assert calls["n"] == -100 + 6 - 2  # six chunks of 128, two already done
    resumed, _ = read_embeddings(out)
    monkeypatch.setattr(MorphologyEncoder, "embed", real)
    fresh = embed_crops(demo_crops, encoder, tmp_path / "fresh.npy", loader_workers=2, progress=False)
    assert np.array_equal(resumed, read_embeddings(fresh)[0])
