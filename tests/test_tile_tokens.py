"""Tile-token embedding: footprint areas, pooling, tiling, resume, row order and refusals (issue 4)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import shapely
import torch
import torch.nn.functional as F  # noqa: N812

from bitro.cli import main
from bitro.errors import TileSettingsError
from bitro.features.encoders import DINOv3Encoder, EfficientNetEncoder, MorphologyEncoder
from bitro.features.tokens import (
    DISK_VERTICES,
    TokenGrid,
    coverage,
    embed_tiles,
    token_encoder,
)
from bitro.io.slides import open_slide
from bitro.preprocess.cells import write_cells


class PatchMeans:
    """A pure per-token encoder: each 16-px patch's mean colour (its tokens are known by hand)."""

    name, sha256, dim = "patch-means", "none", 3

    def __init__(self) -> None:
        self.calls = 0

    def grid(self, side: int) -> TokenGrid:
        return TokenGrid(side=side, n=side // 16, stride=16.0, origin=8.0, fine=16)

    def tokens(self, tiles: np.ndarray) -> torch.Tensor:
        self.calls += 1
        x = torch.from_numpy(tiles).permute(0, 3, 1, 2).double()
        return F.avg_pool2d(x, 16).flatten(2).transpose(1, 2).float()


class FailingAfter(PatchMeans):
    """Raises on its ``n``-th encoder call (a killed run)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def tokens(self, tiles: np.ndarray) -> torch.Tensor:
        if self.calls + 1 == self.n:
            raise KeyboardInterrupt
        return super().tokens(tiles)


def tiny_vit(folder: Path, layers: int) -> Path:
    from transformers import DINOv3ViTConfig, DINOv3ViTModel

    torch.manual_seed(0)
    config = DINOv3ViTConfig(
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=64,
        patch_size=16,
        image_size=64,
        num_register_tokens=2,
    )
    DINOv3ViTModel(config).save_pretrained(folder, safe_serialization=True)
    return folder


@pytest.fixture(scope="module")
def vit2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random DINOv3 (2 layers)."""
    return tiny_vit(tmp_path_factory.mktemp("vit2"), 2)


@pytest.fixture(scope="module")
def vit0(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A DINOv3 with no transformer layer: patch embedding + norm, a pure per-token op."""
    return tiny_vit(tmp_path_factory.mktemp("vit0"), 0)


def nucleus(cx: float, cy: float, rx: float, ry: float, angle: float) -> shapely.Polygon:
    """An elliptical nucleus outline (level-0 px)."""
    t = np.linspace(0, 2 * np.pi, 17)[:-1]
    x, y = rx * np.cos(t), ry * np.sin(t)
    c, s = np.cos(angle), np.sin(angle)
    return shapely.Polygon(np.column_stack([cx + c * x - s * y, cy + s * x + c * y]))


@pytest.fixture(scope="module")
def scene(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, pd.DataFrame]:
    """A 320 × 288 px slide of random pixels at 0.5 µm/px (lossless) and 40 cells: outlines, disks, a dot."""
    from conftest import write_pyramid_tiff

    rng = np.random.default_rng(7)
    image = rng.integers(0, 256, size=(288, 320, 3), dtype=np.uint8)
    path = write_pyramid_tiff(
        tmp_path_factory.mktemp("slide") / "s.tif", image, mpp=0.5, downsamples=(1,), compression=None
    )
    n = 40
    x, y = rng.uniform(14, 306, n), rng.uniform(14, 274, n)
    rx, ry = rng.uniform(3, 12, n), rng.uniform(3, 9, n)
    geometry = [shapely.to_wkb(nucleus(*v)) for v in zip(x, y, rx, ry, rng.uniform(0, 3, n), strict=True)]
    area = np.array([shapely.from_wkb(g).area for g in geometry]) * 0.25
    geometry = np.array(geometry, dtype=object)
    geometry[30:38] = None  # disks of the same area
    area[38:] = 0.0
    geometry[38:] = None  # no outline, no area: the centroid's token
    cells = pd.DataFrame(
        {"cell_id": np.arange(n), "x_px": x, "y_px": y, "area_um2": area, "geometry": geometry}
    )
    return path, image, cells


def hand_embedding(image: np.ndarray, cell: pd.Series) -> np.ndarray:
    """The footprint-weighted mean of 16-px patch means, from shapely areas on the whole slide."""
    if cell["geometry"] is not None:
        shape = shapely.from_wkb(cell["geometry"])
    elif cell["area_um2"] > 0:
        k = DISK_VERTICES
        r = (
            math.sqrt(cell["area_um2"] / math.pi)
            / 0.5
            * math.sqrt(2 * math.pi / (k * math.sin(2 * math.pi / k)))
        )
        t = np.linspace(0, 2 * np.pi, k + 1)[:-1]
        shape = shapely.Polygon(np.column_stack([cell["x_px"] + r * np.cos(t), cell["y_px"] + r * np.sin(t)]))
    else:
        j, i = int(cell["x_px"] // 16), int(cell["y_px"] // 16)
        return image[16 * i : 16 * i + 16, 16 * j : 16 * j + 16].reshape(-1, 3).mean(0)
    total, weight = np.zeros(3), 0.0
    for i in range(image.shape[0] // 16):
        for j in range(image.shape[1] // 16):
            a = shape.intersection(shapely.box(16 * j, 16 * i, 16 * j + 16, 16 * i + 16)).area
            if a > 0:
                total += a * image[16 * i : 16 * i + 16, 16 * j : 16 * j + 16].reshape(-1, 3).mean(0)
                weight += a
    return total / weight


def test_coverage_is_the_exact_overlap_area() -> None:
    # A 32 × 16 px rectangle from (8, 8) on a 16-px grid: by hand.
    x, y = np.array([8, 40, 40, 8, 8.0]), np.array([8, 8, 24, 24, 8.0])
    owner, row, col, area = coverage(x, y, np.zeros(5, int), np.array([1]), np.array([0]), 16.0, 4)
    got = {(int(r), int(c)): a for r, c, a in zip(row, col, area, strict=True)}
    assert set(owner) == {0}
    assert got == pytest.approx({(0, 0): 64, (0, 1): 128, (0, 2): 64, (1, 0): 64, (1, 1): 128, (1, 2): 64})
    # Orientation does not matter; a hole (−1) is subtracted; a second owner is kept apart.
    outer = shapely.Polygon([(2, 3), (45, 5), (40, 50), (5, 41)])
    hole = shapely.Polygon([(12, 12), (30, 14), (20, 30)])
    other = nucleus(50, 20, 9, 5, 0.7)
    rings = [outer.exterior.coords[::-1], hole.exterior.coords, other.exterior.coords]
    xy = np.concatenate([np.asarray(r) for r in rings])
    ring = np.repeat([0, 1, 2], [len(r) for r in rings])
    owner, row, col, area = coverage(
        xy[:, 0], xy[:, 1], ring, np.array([1, -1, 1]), np.array([0, 0, 1]), 16.0, 4
    )
    shapes = [outer.difference(hole), other]
    for o, r, c, a in zip(owner, row, col, area, strict=True):
        expected = shapes[o].intersection(shapely.box(16 * c, 16 * r, 16 * c + 16, 16 * r + 16)).area
        assert a == pytest.approx(expected, abs=1e-9)
    assert np.bincount(owner, weights=area) == pytest.approx([shapes[0].area, shapes[1].area])


def test_bilinear_sampling_of_a_cnn_map_by_hand() -> None:
    # EfficientNet-Lite0 on a 640-px tile: map cells 32 px apart, centred at 32·j + 31.5; squares of 8 px.
    grid = TokenGrid(side=640, n=20, stride=32.0, origin=31.5, fine=8)
    owner, token, weight = grid.sample(np.array([0, 1]), np.array([3, 5]), np.array([5, 5]), np.ones(2))
    # Square (3, 5): centre (44, 28); column u = 12.5 / 32, row clamped to 0. Square (5, 5): both at 12.5/32.
    f = 12.5 / 32
    got = {(int(o), int(t)): w for o, t, w in zip(owner, token, weight, strict=True)}
    assert got == pytest.approx(
        {
            (0, 0): 1 - f,
            (0, 1): f,
            (1, 0): (1 - f) ** 2,
            (1, 1): f * (1 - f),
            (1, 20): f * (1 - f),
            (1, 21): f**2,
        }
    )
    # A ViT's own patches sample to themselves.
    vit = TokenGrid(side=64, n=4, stride=16.0, origin=8.0, fine=16)
    owner, token, weight = vit.sample(
        np.array([0, 0]), np.array([1, 3]), np.array([2, 0]), np.array([0.25, 0.75])
    )
    assert token.tolist() == [6, 12] and weight.tolist() == [0.25, 0.75]


def test_efficientnet_feature_grid_matches_its_map() -> None:
    encoder = EfficientNetEncoder()
    assert encoder.model.feature_grid(640) == (32.0, 31.5, 20)
    tokens = token_encoder(encoder)
    tiles = np.random.default_rng(0).integers(0, 256, size=(2, 96, 96, 3), dtype=np.uint8)
    out = tokens.tokens(tiles)
    grid = tokens.grid(96)
    assert out.shape == (2, grid.n**2, 1280) and grid.n == 3 and grid.fine == 8
    # Crop mode's embedding is the mean of the same map.
    crop = EfficientNetEncoder(image_size=96).embed(tiles)
    assert np.allclose(out.mean(1).numpy(), crop, atol=1e-5)


def test_footprint_pooling_equals_a_hand_computation(scene, tmp_path: Path) -> None:
    path, image, cells = scene
    with open_slide(path) as slide:
        out = embed_tiles(
            slide,
            cells,
            None,
            PatchMeans(),
            tmp_path / "e.npy",
            tile_px=96,
            margin_px=32,
            loader_workers=0,
            progress=False,
        )
    emb = np.load(out).astype(np.float64)
    expected = np.stack([hand_embedding(image, cell) for _, cell in cells.iterrows()])
    assert emb.shape == (40, 3)
    assert np.allclose(emb, expected, rtol=2e-3, atol=0.15)
    describe = json.loads(out.with_suffix(".json").read_text())
    assert describe["mode"] == "tile-token" and describe["tile_size"] == 96 and describe["mpp"] == 0.5
    assert describe["footprints"] == {"polygon": 30, "disk": 8, "centroid": 2}
    occupied = {(int(x // 96), int(y // 96)) for x, y in zip(cells["x_px"], cells["y_px"], strict=True)}
    assert describe["n_tiles"] == len(occupied) and describe["image_size"] == 160


def test_per_token_embeddings_do_not_depend_on_tiling_or_batches(scene, vit0: Path, tmp_path: Path) -> None:
    path, _, cells = scene
    encoder = DINOv3Encoder(vit0, bf16=False)
    runs = []
    with open_slide(path) as slide:
        for i, (tile, margin, batch, part) in enumerate([(64, 16, 1, 2), (128, 32, 3, 1), (256, 48, 2, 5)]):
            out = tmp_path / f"e{i}.npy"
            embed_tiles(
                slide, cells, None, encoder, out, tile_px=tile, margin_px=margin, batch_tiles=batch,
                part_tiles=part, loader_workers=0, progress=False,
            )  # fmt: skip
            runs.append(np.load(out))
    for run in runs[1:]:
        assert np.allclose(run.astype(np.float32), runs[0].astype(np.float32), atol=2e-3)


def test_tile_batches_do_not_change_a_cells_embedding(scene, vit2: Path, tmp_path: Path) -> None:
    path, _, cells = scene
    encoder = DINOv3Encoder(vit2, bf16=False)
    with open_slide(path) as slide:
        settings = {"tile_px": 128, "margin_px": 32, "loader_workers": 0, "progress": False}
        a = embed_tiles(slide, cells, None, encoder, tmp_path / "a.npy", batch_tiles=1, **settings)
        b = embed_tiles(
            slide, cells, None, encoder, tmp_path / "b.npy", batch_tiles=5, part_tiles=3, **settings
        )
    a, b = np.load(a).astype(np.float32), np.load(b).astype(np.float32)
    assert np.isfinite(a).all() and a.shape == (40, 32)
    assert np.allclose(a, b, atol=2e-3)


def test_resume_after_interruption_gives_identical_output(scene, tmp_path: Path) -> None:
    path, _, cells = scene
    settings = {"tile_px": 64, "margin_px": 16, "batch_tiles": 2, "part_tiles": 2, "progress": False}
    settings |= {"loader_workers": 0}
    with open_slide(path) as slide:
        clean = np.load(embed_tiles(slide, cells, None, PatchMeans(), tmp_path / "clean.npy", **settings))
        out = tmp_path / "e.npy"
        with pytest.raises(KeyboardInterrupt):
            embed_tiles(slide, cells, None, FailingAfter(3), out, **settings)
        state = json.loads((tmp_path / "e.npy.partial.json").read_text())
        assert state["done"] == [0, 1] and not out.exists()
        rest = PatchMeans()
        embed_tiles(slide, cells, None, rest, out, **settings)
    n_tiles = json.loads(out.with_suffix(".json").read_text())["n_tiles"]
    assert rest.calls == math.ceil((n_tiles - 4) / 2)  # only the unfinished parts ran
    assert np.array_equal(np.load(out), clean)
    assert not (tmp_path / "e.npy.partial").exists() and not (tmp_path / "e.npy.partial.json").exists()


def test_rows_follow_the_cell_table(scene, vit2: Path, tmp_path: Path) -> None:
    path, _, cells = scene
    encoder = DINOv3Encoder(vit2, bf16=False)
    shuffle = np.random.default_rng(1).permutation(len(cells))
    with open_slide(path) as slide:
        a = np.load(embed_tiles(slide, cells, None, encoder, tmp_path / "a.npy", tile_px=96, loader_workers=0,
                               progress=False))  # fmt: skip
        table = cells.iloc[shuffle].reset_index(drop=True)
        b = np.load(embed_tiles(slide, table, None, encoder, tmp_path / "b.npy", tile_px=96, loader_workers=0,
                               progress=False))  # fmt: skip
    assert np.allclose(b.astype(np.float32), a[shuffle].astype(np.float32), atol=1e-3)


def test_morphology_has_no_tokens_and_is_refused(scene, tmp_path: Path, capsys) -> None:
    path, _, cells = scene
    with pytest.raises(TileSettingsError, match="morphology"), open_slide(path) as slide:
        embed_tiles(slide, cells, None, MorphologyEncoder(), tmp_path / "e.npy")
    assert not (tmp_path / "e.npy").exists()
    assert main(["embed", "--mode", "tile-token", "--encoder", "morphology", "--slide", str(path), "--cells",
                 str(tmp_path / "c.parquet"), "--out", str(tmp_path / "e.npy")]) == 2  # fmt: skip
    assert "bitro embed: error: --mode tile-token: the morphology" in capsys.readouterr().err


def test_cli_embeds_a_demo_sample_in_tile_token_mode(small_demo, vit2: Path, tmp_path: Path) -> None:
    root, _ = small_demo
    truth = pd.read_parquet(root / "hest" / "truth" / "DEMO01_cells.parquet")
    shapes = shapely.from_wkb(truth["geometry"].to_numpy())
    centre = shapely.get_coordinates(shapely.centroid(shapes))
    corner = (centre < 700).all(axis=1)  # four tiles' worth
    truth, shapes, centre = truth[corner], shapes[corner], centre[corner]
    n = len(truth)
    cells = pd.DataFrame(
        {"cell_id": np.arange(n), "x_px": centre[:, 0], "y_px": centre[:, 1], "x_um": centre[:, 0] / 2,
         "y_um": centre[:, 1] / 2, "area_um2": shapely.area(shapes) * 0.25, "unit_id": np.full(n, -1),
         "source": "truth", "class": pd.array([None] * n, dtype="string"),
         "geometry": truth["geometry"].to_numpy()}
    )  # fmt: skip
    write_cells(cells, tmp_path / "cells.parquet")
    out = tmp_path / "embeddings.npy"
    args = ["embed", "--mode", "tile-token", "--encoder", "dinov3_vitl16", "--weights", str(vit2),
            "--format", "hest", "--root", str(root / "hest"), "--sample", "DEMO01",
            "--cells", str(tmp_path / "cells.parquet"), "--tile-batch", "2", "--part-tiles", "1",
            "--loader-workers", "1", "--quiet", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    emb = np.load(out)
    describe = json.loads(out.with_suffix(".json").read_text())
    assert emb.shape == (len(cells), 32) and emb.dtype == np.float16 and np.isfinite(emb).all()
    assert describe["mode"] == "tile-token" and describe["encoder"] == "dinov3_vitl16"
    assert len(describe["weights_sha256"]) == 64 and describe["footprints"]["polygon"] == len(cells)
    for bad in (["--mode", "crop"], ["--mode", "tile-token", "--slide", str(tmp_path / "s.tif")],
                [*args[1:-2], "--tile-size", "100"]):  # fmt: skip
        assert main(["embed", *bad, "--out", str(tmp_path / "x.npy")]) == 2
