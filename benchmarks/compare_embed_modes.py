"""Crop mode against tile-token mode on the demo's ST cohort: agreement, cell types, spot expression, speed.

Reads what the demo workflow already made under ``results/demo_st/samples/DEMO0*/`` (``cells.parquet``,
``stain.json``, ``units.parquet``, ``targets.h5ad``) and the slides and truth under
``results/demo_data/hest/`` (``wsis/``, ``truth/{id}_cells.h5ad``: every true cell's type and centroid).
The encoder (``--encoder``, EfficientNet-Lite0 by default: ImageNet weights, the demo's encoder; or
``dinov3_vitl16 --weights DIR`` on a GPU node, ``--device cuda``) embeds every cell both ways:

- crop mode: 48 × 48 crops at 0.5 µm/px, cut and stain-normalised here (``write_crops``), fed at
  ``--crop-size`` (48 for EfficientNet, the demo's setting; 224 for DINOv3, the paper's);
- tile-token mode: 512-px tiles with 64 px of context, tokens pooled under each nucleus.

Figures, each with leave-one-sample-out over the 6 slides (train on 5, test on the held-out one):

- agreement: linear CKA between the two modes' embeddings of the same cells, per slide, and how alike
  neighbouring cells look (median cosine of standardised embeddings of nearest neighbours);
- cell-type probe: segmented cells matched to a true nucleus (nearest true centroid within 4 µm) get its
  type; StandardScaler → PCA 64 → logistic regression (C = 0.1) on ≤ 6,000 training cells; accuracy and
  balanced accuracy;
- spot-expression probe (HEST-Benchmark's): unit-mean embeddings → StandardScaler → PCA (≤ 256) → Ridge
  (``alpha = 100 / (components × genes)``) on log1p counts; Pearson per gene across the held-out slide's
  spots, averaged over genes (genes constant in truth or prediction counted as 0 and reported), then over
  folds. The oracle beside it knows each spot's true cell-type composition;
- speed on the first slide, the modes interleaved, best of ``--repeats``: crop mode with and without
  cutting its crops (tile-token mode reads the slide itself).

With ``--vit``, DINOv3 ViT-L/16 with random weights (its published configuration: accuracy is meaningless,
speed is not) is also timed on one 512-px tile of the first slide: tile-token mode on the tile's cells
against crop mode (224 px) on ``--vit-crops`` of the same cells.

Usage: ``.venv/bin/python benchmarks/compare_embed_modes.py [--samples DEMO01,...] [--cache DIR] [--vit]``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import torch
from scipy.spatial import cKDTree
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import balanced_accuracy_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

ROOT = Path(__file__).resolve().parents[1]
OUT = Path(__file__).resolve().parent / "out"
MATCH_UM = 4.0


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA (Kornblith et al. 2019) between two representations of the same rows."""
    x = x - x.mean(0)
    y = y - y.mean(0)
    cross = np.linalg.norm(y.T @ x) ** 2
    return float(cross / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)))


def neighbour_cosine(embeddings: np.ndarray, cells: pd.DataFrame) -> float:
    """Median cosine between each cell's standardised embedding and its nearest neighbour's.

    Near 1: neighbours look alike to the encoder (it sees their shared context more than each nucleus).
    """
    xy = cells[["x_px", "y_px"]].to_numpy()
    nearest = cKDTree(xy).query(xy, k=2)[1][:, 1]
    z = (embeddings - embeddings.mean(0)) / (embeddings.std(0) + 1e-6)
    z /= np.linalg.norm(z, axis=1, keepdims=True) + 1e-12
    return float(np.median((z * z[nearest]).sum(1)))


def true_types(cells: pd.DataFrame, truth: pd.DataFrame, mpp: float) -> np.ndarray:
    """Each segmented cell's true type (nearest true centroid within ``MATCH_UM``), else None."""
    tree = cKDTree(truth[["x_px", "y_px"]].to_numpy())
    dist, idx = tree.query(cells[["x_px", "y_px"]].to_numpy(), distance_upper_bound=MATCH_UM / mpp)
    types = np.full(len(cells), None, dtype=object)
    found = np.isfinite(dist)
    types[found] = truth["cell_type"].astype(str).to_numpy()[idx[found]]
    return types


def per_gene_pcc(y: np.ndarray, p: np.ndarray) -> tuple[float, int]:
    """Mean Pearson per gene across units (constant genes count as 0) and how many were constant."""
    yc, pc = y - y.mean(0), p - p.mean(0)
    denominator = np.sqrt((yc**2).sum(0) * (pc**2).sum(0))
    constant = denominator < 1e-12
    r = np.where(constant, 0.0, (yc * pc).sum(0) / np.where(constant, 1.0, denominator))
    return float(r.mean()), int(constant.sum())


def spot_table(sample: Path, embeddings: np.ndarray, cells: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Unit-mean embeddings and log1p counts of the in-tissue units that hold cells."""
    targets = ad.read_h5ad(sample / "targets.h5ad")
    unit_id = cells["unit_id"].to_numpy()
    inside = unit_id >= 0
    units, inverse = np.unique(unit_id[inside], return_inverse=True)
    sums = np.zeros((len(units), embeddings.shape[1]))
    np.add.at(sums, inverse, embeddings[inside].astype(np.float64))
    means = sums / np.bincount(inverse)[:, None]
    row = pd.Series(np.arange(targets.n_obs), index=targets.obs["unit_id"].to_numpy())
    in_tissue = targets.obs["in_tissue"].to_numpy().astype(bool)
    keep = np.array([u in row.index and in_tissue[row[u]] for u in units])
    x = targets.X[row[units[keep]].to_numpy()]
    counts = x.toarray() if hasattr(x, "toarray") else np.asarray(x)
    return means[keep], np.log1p(counts.astype(np.float64))


def composition(sample_id: str, truth: pd.DataFrame, sample: Path, types: list[str]) -> np.ndarray:
    """The oracle's features: true cell-type fractions of each spot, in :func:`spot_table`'s unit order."""
    targets = ad.read_h5ad(sample / "targets.h5ad")
    cells = pd.read_parquet(sample / "cells.parquet", columns=["unit_id"])
    units = np.unique(cells["unit_id"].to_numpy()[cells["unit_id"].to_numpy() >= 0])
    obs = targets.obs.set_index("unit_id")
    units = units[[u in obs.index and bool(obs.loc[u, "in_tissue"]) for u in units]]
    barcodes = obs.loc[units, "barcode"].astype(str).to_numpy()
    table = (
        pd.crosstab(truth["spot"].astype(str), truth["cell_type"].astype(str))
        .reindex(columns=types)
        .fillna(0)
    )
    table = table.reindex(barcodes).fillna(0).to_numpy(np.float64)
    return table / np.maximum(table.sum(1, keepdims=True), 1)


def ridge_probe(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, seed: int = 0) -> np.ndarray:
    """HEST-Benchmark's probe: StandardScaler → PCA (≤ 256) → Ridge with alpha = 100 / (k · genes)."""
    k = int(min(256, x_train.shape[0], x_train.shape[1]))
    model = make_pipeline(
        StandardScaler(),
        PCA(n_components=k, random_state=seed),
        Ridge(alpha=100.0 / (k * y_train.shape[1]), solver="lsqr", max_iter=1000, random_state=seed),
    )
    return model.fit(x_train, y_train).predict(x_test)


def encoders(args: argparse.Namespace) -> tuple[object, object]:
    """The encoder for crop mode (crops resized to ``--crop-size``) and for tile-token mode."""
    from bitro.features.encoders import load_encoder

    crop = load_encoder(args.encoder, weights=args.weights, image_size=args.crop_size, device=args.device)
    tile = load_encoder(args.encoder, weights=args.weights, device=args.device)
    return crop, tile


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def embed_both(args: argparse.Namespace, samples: list[Path], work: Path) -> dict[str, dict]:
    """Both modes' embeddings of every sample (reused from ``--cache`` when there)."""
    from bitro.features.embed import embed_crops
    from bitro.features.tokens import embed_tiles
    from bitro.io import read_sample
    from bitro.preprocess.cells import read_cells
    from bitro.preprocess.crops import CropParams, write_crops
    from bitro.preprocess.stain import read_normalizer

    store = args.cache or work
    store.mkdir(parents=True, exist_ok=True)
    crop_encoder, tile_encoder = encoders(args)
    out = {}
    for sample in samples:
        sid = sample.name
        cells = read_cells(sample / "cells.parquet")
        crop_out, tile_out = (store / f"{sid}_{args.encoder}_{mode}.npy" for mode in ("crop", "tile"))
        if not (crop_out.exists() and tile_out.exists()):
            normalizer = read_normalizer(sample / "stain.json")
            with read_sample("hest", args.demo / "hest", sid).open_slide() as slide:
                crops = write_crops(
                    slide, cells["x_px"].to_numpy(), cells["y_px"].to_numpy(), work / f"{sid}_crops.zarr",
                    params=CropParams(size=48, mpp=0.5), normalizer=normalizer, progress=False,
                )  # fmt: skip
                embed_crops(crops, crop_encoder, crop_out, loader_workers=0, progress=False)
                embed_tiles(
                    slide, cells, normalizer, tile_encoder, tile_out, batch_tiles=args.tile_batch,
                    loader_workers=0, progress=False,
                )  # fmt: skip
        out[sid] = {
            "crop": np.load(crop_out).astype(np.float32),
            "tile": np.load(tile_out).astype(np.float32),
            "cells": cells,
        }
        print(f"{sid}: {len(cells)} cells embedded both ways", flush=True)
    return out


def speed(args: argparse.Namespace, sample: Path, work: Path) -> dict[str, float]:
    """Cells/s of both modes on one slide, interleaved, the best of ``--repeats`` runs each.

    Crop mode: cutting the stain-normalised crops (``write_crops``) and embedding them; tile-token mode:
    ``embed_tiles`` from the slide. Interleaving keeps a shared machine's load the same for both.
    """
    from bitro.features.embed import embed_crops
    from bitro.features.tokens import embed_tiles
    from bitro.io import read_sample
    from bitro.preprocess.cells import read_cells
    from bitro.preprocess.crops import CropParams, write_crops
    from bitro.preprocess.stain import read_normalizer

    crop_encoder, tile_encoder = encoders(args)
    cells = read_cells(sample / "cells.parquet")
    normalizer = read_normalizer(sample / "stain.json")
    best = {"crops": np.inf, "crop_embed": np.inf, "tile": np.inf}
    with read_sample("hest", args.demo / "hest", sample.name).open_slide() as slide:
        for run in range(args.repeats):
            start = time.perf_counter()
            crops = write_crops(
                slide, cells["x_px"].to_numpy(), cells["y_px"].to_numpy(), work / f"speed{run}.zarr",
                params=CropParams(size=48, mpp=0.5), normalizer=normalizer, progress=False,
            )  # fmt: skip
            synchronize(args.device)
            best["crops"] = min(best["crops"], time.perf_counter() - start)
            start = time.perf_counter()
            embed_crops(crops, crop_encoder, work / f"speed_crop{run}.npy", loader_workers=0, progress=False)
            synchronize(args.device)
            best["crop_embed"] = min(best["crop_embed"], time.perf_counter() - start)
            start = time.perf_counter()
            embed_tiles(
                slide, cells, normalizer, tile_encoder, work / f"speed_tile{run}.npy",
                batch_tiles=args.tile_batch, loader_workers=0, progress=False,
            )  # fmt: skip
            synchronize(args.device)
            best["tile"] = min(best["tile"], time.perf_counter() - start)
    n = len(cells)
    return {
        "sample": sample.name,
        "cells": n,
        "crop_embed_cells_per_s": n / best["crop_embed"],
        "crop_with_crops_cells_per_s": n / (best["crops"] + best["crop_embed"]),
        "tile_cells_per_s": n / best["tile"],
    }


def vit_speed(args: argparse.Namespace, sample: Path, work: Path) -> dict[str, float]:
    """DINOv3 ViT-L/16 (random weights) on one tile of ``sample``: tile-token against 224-px crops."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_encoders import build

    from bitro.features.tokens import embed_tiles
    from bitro.io import read_sample
    from bitro.preprocess.cells import read_cells
    from bitro.preprocess.crops import read_crops
    from bitro.preprocess.stain import read_normalizer

    device = args.device
    encoder = build("dinov3_vitl16", device, None, 224)
    cells = read_cells(sample / "cells.parquet")
    # The cells of one tile core (512 px from the slide's corner at 0.5 µm/px), away from the edge.
    x, y = cells["x_px"].to_numpy(), cells["y_px"].to_numpy()
    window = np.flatnonzero((x >= 512) & (x < 1024) & (y >= 512) & (y < 1024))
    subset = cells.iloc[window].reset_index(drop=True)
    crops = np.asarray(read_crops(sample / "crops.zarr")[np.sort(window)[: args.vit_crops]])
    encoder.embed(crops[:8])  # warm-up
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    start = time.perf_counter()
    for i in range(0, len(crops), 8):
        encoder.embed(crops[i : i + 8])
    sync()
    crop_rate = len(crops) / (time.perf_counter() - start)
    with read_sample("hest", args.demo / "hest", sample.name).open_slide() as slide:
        normalizer = read_normalizer(sample / "stain.json")
        embed_tiles(
            slide,
            subset.iloc[:8],
            normalizer,
            encoder,
            work / "vit_warm.npy",
            loader_workers=0,
            progress=False,
        )
        start = time.perf_counter()
        embed_tiles(
            slide, subset, normalizer, encoder, work / "vit_tile.npy", loader_workers=0, progress=False
        )
        sync()
        tile_rate = len(subset) / (time.perf_counter() - start)
    return {"cells_in_tile": len(subset), "crop_cells_per_s": crop_rate, "tile_cells_per_s": tile_rate}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=ROOT / "results" / "demo_st" / "samples")
    parser.add_argument("--demo", type=Path, default=ROOT / "results" / "demo_data")
    parser.add_argument("--samples", default=None, help="comma-separated ids (default: every DEMO* folder)")
    parser.add_argument(
        "--encoder", default="efficientnet_lite0", choices=("efficientnet_lite0", "dinov3_vitl16")
    )
    parser.add_argument("--weights", type=Path, default=None, help="local weights (DINOv3: its directory)")
    parser.add_argument("--crop-size", type=int, default=None, help="crop mode input side (48; DINOv3 224)")
    parser.add_argument("--tile-batch", type=int, default=1, help="tiles per encoder call")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per mode; the best counts")
    parser.add_argument("--cache", type=Path, default=None, help="keep (and reuse) the embeddings here")
    parser.add_argument("--probe-cells", type=int, default=6000, help="training cells of the type probe")
    parser.add_argument("--vit", action="store_true", help="also time a random DINOv3 ViT-L/16 both ways")
    parser.add_argument("--vit-crops", type=int, default=32, help="crops timed for the ViT in crop mode")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    args.crop_size = args.crop_size or (224 if args.encoder == "dinov3_vitl16" else 48)
    ids = args.samples.split(",") if args.samples else sorted(p.name for p in args.results.glob("DEMO*"))
    samples = [args.results / i for i in ids]
    work = Path(tempfile.mkdtemp(prefix="compare_modes_"))
    try:
        data = embed_both(args, samples, work)
        report = evaluate(args, data, samples)
        report["speed"] = speed(args, samples[0], work)
        report["command"] = " ".join(["benchmarks/compare_embed_modes.py", *sys.argv[1:]])
        report["encoder"], report["crop_size"] = args.encoder, args.crop_size
        report["device"] = (
            torch.cuda.get_device_name(0)
            if args.device.startswith("cuda")
            else f"CPU, {torch.get_num_threads()} threads"
        )
        if args.vit:
            report["vit"] = vit_speed(args, samples[0], work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_report(report)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "compare_embed_modes.json").write_text(json.dumps(report, indent=2))


def evaluate(args: argparse.Namespace, data: dict[str, dict], samples: list[Path]) -> dict:
    ids = list(data)
    truths = {sid: ad.read_h5ad(args.demo / "hest" / "truth" / f"{sid}_cells.h5ad").obs for sid in ids}
    labels = {sid: true_types(data[sid]["cells"], truths[sid], 0.5) for sid in ids}
    known = {sid: pd.notna(labels[sid]) for sid in ids}
    types = sorted({t for sid in ids for t in labels[sid] if t is not None})
    report: dict = {
        "samples": ids,
        "cells": int(sum(len(data[s]["cells"]) for s in ids)),
        "matched": float(np.mean(np.concatenate([known[s] for s in ids]))),
        "cka": {sid: linear_cka(data[sid]["crop"], data[sid]["tile"]) for sid in ids},
        "neighbour_cosine": {
            mode: float(np.mean([neighbour_cosine(data[s][mode], data[s]["cells"]) for s in ids]))
            for mode in ("crop", "tile")
        },
        "modes": {},
    }
    spots = {}
    for mode in ("crop", "tile"):
        accuracy, balanced, majority = [], [], []
        for held in ids:
            train = [s for s in ids if s != held]
            xs = np.concatenate([data[s][mode][known[s]] for s in train])
            ys = np.concatenate([labels[s][known[s]] for s in train])
            pick = np.random.default_rng(0).permutation(len(ys))[: args.probe_cells]
            xs, ys = xs[pick], ys[pick]
            xt, yt = data[held][mode][known[held]], labels[held][known[held]]
            probe = LogisticRegression(C=0.1, max_iter=1000)
            model = make_pipeline(StandardScaler(), PCA(n_components=64, random_state=0), probe)
            predicted = model.fit(xs, ys.astype(str)).predict(xt)
            accuracy.append(float(np.mean(predicted == yt.astype(str))))
            balanced.append(float(balanced_accuracy_score(yt.astype(str), predicted)))
            values, counts = np.unique(ys.astype(str), return_counts=True)
            majority.append(float(np.mean(yt.astype(str) == values[counts.argmax()])))
        spots[mode] = {s: spot_table(samples[ids.index(s)], data[s][mode], data[s]["cells"]) for s in ids}
        pcc, constant = [], 0
        for held in ids:
            train = [s for s in ids if s != held]
            x = np.concatenate([spots[mode][s][0] for s in train])
            y = np.concatenate([spots[mode][s][1] for s in train])
            r, c = per_gene_pcc(spots[mode][held][1], ridge_probe(x, y, spots[mode][held][0]))
            pcc.append(r)
            constant += c
        report["modes"][mode] = {
            "cell_type_accuracy": float(np.mean(accuracy)),
            "cell_type_balanced_accuracy": float(np.mean(balanced)),
            "majority_class_accuracy": float(np.mean(majority)),
            "spot_pcc_gene": float(np.mean(pcc)),
            "spot_pcc_gene_per_fold": pcc,
            "constant_genes": constant,
        }
    oracle_x = {
        s: composition(s, truths[s], samples[ids.index(s)], types) for s in ids
    }  # same units as spot_table
    pcc = []
    for held in ids:
        train = [s for s in ids if s != held]
        x = np.concatenate([oracle_x[s] for s in train])
        y = np.concatenate([spots["crop"][s][1] for s in train])
        pcc.append(per_gene_pcc(spots["crop"][held][1], ridge_probe(x, y, oracle_x[held]))[0])
    report["oracle_spot_pcc_gene"] = float(np.mean(pcc))
    report["n_spots"] = int(sum(len(spots["crop"][s][1]) for s in ids))
    report["types"] = types
    return report


def print_report(report: dict) -> None:
    modes = report["modes"]
    v = report["speed"]
    print(
        f"\n{len(report['samples'])} slides, {report['cells']} cells "
        f"({100 * report['matched']:.1f} % matched to a true nucleus), {report['n_spots']} spots; "
        f"{report['encoder']} (crops at {report['crop_size']} px); speed on {v['sample']} "
        f"({v['cells']} cells), {report['device']}"
    )
    print(f"{'figure':<58}{'crop':>14}{'tile-token':>12}")
    rows = [
        ("cells/s, embedding only", v["crop_embed_cells_per_s"], v["tile_cells_per_s"], "{:,.0f}"),
        ("cells/s, crops stage included", v["crop_with_crops_cells_per_s"], v["tile_cells_per_s"], "{:,.0f}"),
        ("cell-type probe accuracy (LOSO)", modes["crop"]["cell_type_accuracy"],
         modes["tile"]["cell_type_accuracy"], "{:.3f}"),
        ("cell-type probe balanced accuracy", modes["crop"]["cell_type_balanced_accuracy"],
         modes["tile"]["cell_type_balanced_accuracy"], "{:.3f}"),
        ("spot probe PCC gene (LOSO, log1p counts)", modes["crop"]["spot_pcc_gene"],
         modes["tile"]["spot_pcc_gene"], "{:.3f}"),
    ]  # fmt: skip
    for name, a, b, fmt in rows:
        print(f"{name:<58}{fmt.format(a):>14}{fmt.format(b):>12}")
    cos = report["neighbour_cosine"]
    print(
        f"{'nearest-neighbour cosine (standardised embeddings)':<58}{cos['crop']:>14.3f}{cos['tile']:>12.3f}"
    )
    cka = report["cka"]
    print(
        f"linear CKA crop vs tile-token, per slide: {min(cka.values()):.3f}–{max(cka.values()):.3f} "
        f"(mean {np.mean(list(cka.values())):.3f})"
    )
    print(
        f"majority-class accuracy: {modes['crop']['majority_class_accuracy']:.3f}; oracle spot PCC gene "
        f"(true type composition): {report['oracle_spot_pcc_gene']:.3f}; constant genes: crop "
        f"{modes['crop']['constant_genes']}, tile {modes['tile']['constant_genes']}"
    )
    if "vit" in report:
        v = report["vit"]
        print(
            f"DINOv3 ViT-L/16 (random weights), one tile of {v['cells_in_tile']} cells: crop (224 px) "
            f"{v['crop_cells_per_s']:.1f} cells/s, tile-token {v['tile_cells_per_s']:.1f} cells/s, "
            f"{v['tile_cells_per_s'] / v['crop_cells_per_s']:.1f}x"
        )


if __name__ == "__main__":
    main()
