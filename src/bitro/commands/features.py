"""The per-sample feature verbs: ``embed`` (crop or tile-token mode), ``reduce`` (PCA) and ``graph``
(kNN graph within each unit)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from bitro._atomic import atomic_path
from bitro.commands._sample import add_slide_file_arg, slide_file
from bitro.errors import InputError, UsageError
from bitro.options import DINOV3_POOLINGS, EMBED_MODES, ENCODERS, FORMATS, NUCLEAR_FEATURE_ENCODERS

if TYPE_CHECKING:
    from bitro.features.encoders import Encoder

log = logging.getLogger("bitro")


def _cmd_embed(args: argparse.Namespace) -> None:
    from bitro.features.embed import embed_crops
    from bitro.features.encoders import load_encoder
    from bitro.options import resolve_embed_mode

    mode = resolve_embed_mode(args.mode, args.encoder)
    if mode == "crop" and args.crops is None:
        raise UsageError("--crops", "crop mode needs the sample's crops.zarr")
    if mode == "tile-token" and (args.cells is None or (args.slide is None and args.sample is None)):
        raise UsageError(
            "--mode tile-token", "needs --cells and the slide (--slide, or --format --root --sample)"
        )
    encoder = load_encoder(
        args.encoder,
        weights=args.weights,
        image_size=args.image_size,
        pooling=args.pooling,
        device=args.device,
    )
    if mode == "tile-token":
        _embed_tile_tokens(args, encoder)
        return
    extra = {
        "image_size": args.image_size,
        "pooling": args.pooling if args.encoder.startswith("dinov3") else None,
    }
    outlines = None
    if args.encoder in NUCLEAR_FEATURE_ENCODERS and args.cells is not None:
        from bitro.features.morphology import CellOutlines
        from bitro.preprocess.crops import read_crops

        crops = read_crops(args.crops)
        size, mpp = int(crops.attrs["size"]), float(crops.attrs["mpp"])
        outlines = CellOutlines.read(args.cells, size=size, mpp=mpp, n_crops=crops.shape[0])
    embed_crops(
        args.crops,
        encoder,
        args.out,
        batch_size=args.batch_size,
        loader_workers=args.loader_workers,
        progress=not args.quiet,
        extra=extra,
        outlines=outlines,
    )
    log.info("%s -> %s (%s, %d-d)", args.crops, args.out, encoder.name, encoder.dim)


def _embed_tile_tokens(args: argparse.Namespace, encoder: Encoder) -> None:
    """``bitro embed --mode tile-token``: open the slide and the stain model, embed tile by tile."""
    from bitro.features.tokens import embed_tiles
    from bitro.io import open_slide, read_sample
    from bitro.preprocess.stain import read_normalizer

    if args.slide is not None:
        slide = open_slide(args.slide, mpp=args.mpp)
    else:
        if args.format is None or args.root is None:
            raise UsageError("--sample", "needs --format and --root")
        sample = read_sample(args.format, args.root, args.sample, mpp=args.mpp, file=slide_file(args))
        slide = sample.open_slide()
    normalizer = None if args.stain is None else read_normalizer(args.stain)
    with slide:
        embed_tiles(
            slide,
            args.cells,
            normalizer,
            encoder,
            args.out,
            mpp=args.crop_mpp,
            tile_px=args.tile_size,
            margin_px=args.tile_margin,
            batch_tiles=args.tile_batch,
            part_tiles=args.part_tiles,
            loader_workers=args.loader_workers,
            progress=not args.quiet,
        )
    log.info("%s -> %s (%s tile tokens, %d-d)", slide.path.name, args.out, args.encoder, encoder.dim)


def _cmd_reduce(args: argparse.Namespace) -> None:
    import numpy as np

    from bitro.features.embeddings import read_embeddings
    from bitro.features.reduce import fit_pca

    embeddings, _ = read_embeddings(args.embeddings)
    if embeddings.ndim != 2 or len(embeddings) == 0:
        raise InputError(args.embeddings, f"holds no cells (shape {embeddings.shape}): nothing to reduce")
    basis = fit_pca(embeddings, n_components=args.n_components, seed=args.seed)
    with atomic_path(args.out) as tmp, tmp.open("wb") as handle:
        np.save(handle, basis.transform(embeddings))
    kept = float(basis.explained_variance_ratio.sum())
    log.info(
        "%s: PCA to %d (%.1f %% of variance) -> %s", args.embeddings, args.n_components, 100 * kept, args.out
    )


def _cmd_graph(args: argparse.Namespace) -> None:
    from bitro.features.graph import knn_graphs, write_graph
    from bitro.preprocess.cells import read_cells

    cells = read_cells(args.cells, geometry=False)
    graphs = knn_graphs(cells["x_um"], cells["y_um"], cells["unit_id"], k=args.k)
    write_graph(graphs, args.out)
    log.info(
        "%s: %d units, %d edges -> %s", args.cells, len(graphs.unit_ids), graphs.edges.shape[1], args.out
    )


def register(verbs: argparse._SubParsersAction) -> None:
    """Add ``embed``, ``reduce`` and ``graph`` to the ``bitro`` parser."""
    embed = verbs.add_parser(
        "embed",
        help="embed every cell: embeddings.npy and .json (crop mode: from crops.zarr; tile-token mode: from "
        "the slide, one encoder pass per tile, tokens pooled under each nucleus)",
    )
    embed.add_argument(
        "--mode",
        choices=EMBED_MODES,
        default="crop",
        help="crop: one forward per cell crop; tile-token: one per tile; auto: tile-token for DINOv3, "
        "else crop",
    )
    embed.add_argument("--crops", type=Path, default=None, help="crop mode: the sample's crops.zarr")
    embed.add_argument("--encoder", choices=ENCODERS, default="efficientnet_lite0")
    embed.add_argument("--weights", type=Path, default=None, help="local weights (DINOv3: its directory)")
    embed.add_argument("--image-size", type=int, default=224, help="crop mode: side crops are resized to")
    embed.add_argument("--pooling", choices=DINOV3_POOLINGS, default="mean", help="crop mode: DINOv3 pooling")
    embed.add_argument("--batch-size", type=int, default=256, help="crop mode: crops per encoder call")
    embed.add_argument("--loader-workers", type=int, default=1, help="processes reading crops or tiles ahead")
    embed.add_argument("--device", default="cpu", help="cpu or cuda")
    tiles = embed.add_argument_group("tile-token mode")
    tiles.add_argument("--slide", type=Path, default=None, help="the slide file (or name the sample below)")
    tiles.add_argument("--format", choices=FORMATS, default=None, help="input layout of the sample's cohort")
    tiles.add_argument("--root", type=Path, default=None, help="the cohort's root directory")
    tiles.add_argument("--sample", default=None, help="sample id in the layout")
    tiles.add_argument("--mpp", type=float, default=None, help="override the slide's µm per pixel")
    add_slide_file_arg(tiles)
    tiles.add_argument(
        "--cells", type=Path, default=None, help="the sample's cells.parquet (crop mode: morphology's nuclei)"
    )
    tiles.add_argument("--stain", type=Path, default=None, help="stain.json; omit to keep slide colours")
    tiles.add_argument("--crop-mpp", type=float, default=0.5, help="pixel size the encoder sees (µm)")
    tiles.add_argument("--tile-size", type=int, default=512, help="tile core (px), a multiple of 32")
    tiles.add_argument("--tile-margin", type=int, default=64, help="context around each core (px)")
    tiles.add_argument("--tile-batch", type=int, default=4, help="tiles per encoder call")
    tiles.add_argument("--part-tiles", type=int, default=32, help="tiles per resumable part")
    embed.add_argument("--quiet", action="store_true", help="no progress bar")
    embed.add_argument("--out", required=True, type=Path, help="embeddings.npy")
    embed.set_defaults(func=_cmd_embed)

    reduce = verbs.add_parser("reduce", help="per-sample PCA of the embeddings: features.npy")
    reduce.add_argument("--embeddings", required=True, type=Path)
    reduce.add_argument("--n-components", type=int, default=128)
    reduce.add_argument("--seed", type=int, default=0)
    reduce.add_argument("--out", required=True, type=Path, help="features.npy")
    reduce.set_defaults(func=_cmd_reduce)

    graph = verbs.add_parser("graph", help="kNN graph of the cells within each unit: graph.npz")
    graph.add_argument("--cells", required=True, type=Path, help="the sample's cells.parquet")
    graph.add_argument("--k", type=int, default=8)
    graph.add_argument("--out", required=True, type=Path, help="graph.npz")
    graph.set_defaults(func=_cmd_graph)
