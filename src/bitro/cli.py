"""``bitro <verb>``: one verb per workflow rule, each a thin call into the library."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from bitro import __version__
from bitro._atomic import atomic_path
from bitro.commands import accuracy as accuracy_commands
from bitro.commands import cohort as cohort_commands
from bitro.commands import doctor as doctor_commands
from bitro.commands import evaluate as evaluate_commands
from bitro.commands import plot as plot_commands
from bitro.commands import train as train_commands
from bitro.commands import transfer as transfer_commands
from bitro.errors import BitroError, InputError
from bitro.options import (
    DEFAULT_STAIN_METHOD,
    ENCODERS,
    NUCLEAR_FEATURE_ENCODERS,
    SEGMENTATION_BACKENDS,
    STAIN_METHODS,
)

if TYPE_CHECKING:
    from bitro.features.encoders import Encoder
    from bitro.io.sample import Sample
    from bitro.preprocess.segment import ClassicalParams
    from bitro.preprocess.tissue import TissueMask

log = logging.getLogger("bitro")

FORMATS = ("hest", "tcga", "xenium")
# Kept here rather than imported so that `bitro --help` does not load the demo's dependencies.
DEMO_PRESETS = ("default", "small")


def _add_sample_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", required=True, choices=FORMATS, help="input layout of the cohort")
    parser.add_argument("--root", required=True, type=Path, help="the cohort's root directory")
    parser.add_argument("--sample", required=True, help="sample id (HEST id, TCGA slide barcode, section)")
    parser.add_argument("--mpp", type=float, default=None, help="override the slide's µm per pixel")


def _add_tissue_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tissue", type=Path, default=None, help="tissue.npz (bitro tissue); else computed")
    parser.add_argument("--mask-mpp", type=float, default=8.0, help="pixel size of a computed mask (µm)")


def _cmd_demo(args: argparse.Namespace) -> None:
    from bitro.demo import generate_demo, preset

    summary = generate_demo(args.out, config=preset(args.preset, seed=args.seed), progress=not args.quiet)
    text = json.dumps(summary, indent=2, default=str)
    if args.manifest is not None:
        with atomic_path(args.manifest) as tmp:
            tmp.write_text(text + "\n")
    print(text)


def _cmd_virtual_slide(args: argparse.Namespace) -> None:
    from bitro.demo import write_virtual_slide

    stats = write_virtual_slide(args.out, n_cells=args.cells, seed=args.seed, progress=not args.quiet)
    print(json.dumps(stats, indent=2, default=str))


def _sample_and_mask(args: argparse.Namespace) -> tuple[Sample, TissueMask]:
    """The sample named on the command line and its tissue mask (read from --tissue, or computed)."""
    from bitro.io import read_sample
    from bitro.preprocess.tissue import read_tissue, tissue_mask

    sample = read_sample(args.format, args.root, args.sample, mpp=args.mpp)
    if getattr(args, "tissue", None) is not None:
        return sample, read_tissue(args.tissue)
    with sample.open_slide() as slide:
        return sample, tissue_mask(slide, mpp=args.mask_mpp)


def _cmd_tissue(args: argparse.Namespace) -> None:
    from bitro.io import read_sample
    from bitro.preprocess.tissue import tissue_mask, write_tissue

    sample = read_sample(args.format, args.root, args.sample, mpp=args.mpp)
    with sample.open_slide() as slide:
        mask = tissue_mask(slide, mpp=args.mask_mpp)
    write_tissue(mask, args.out, args.geojson)
    log.info("%s: tissue covers %.1f %% of the slide -> %s", args.sample, 100 * mask.mask.mean(), args.out)


def _cmd_units(args: argparse.Namespace) -> None:
    from bitro.preprocess.units import grid_units, spot_units, write_units

    sample, mask = _sample_and_mask(args)
    if sample.kind == "st":
        units = spot_units(sample, mask=mask)
    else:
        with sample.open_slide() as slide:
            units = grid_units(
                slide, size_um=args.patch_size_um, mask=mask, min_tissue_fraction=args.min_tissue_fraction
            )
    write_units(units, args.out)
    log.info("%s: %d units (%d in tissue) -> %s", args.sample, len(units), units["in_tissue"].sum(), args.out)


def _cmd_stain_reference(args: argparse.Namespace) -> None:
    import hashlib

    import numpy as np
    from PIL import Image

    from bitro.io.validate import require_file
    from bitro.preprocess.stain import reference_from_image, reference_from_slide, write_reference

    image = require_file(args.image, "stain target image")
    if image.suffix.lower() in {".png", ".jpg", ".jpeg"}:
        with Image.open(image) as img:
            models = reference_from_image(np.asarray(img.convert("RGB")), seed=args.seed)
    else:
        models = reference_from_slide(image, mpp=args.mpp, seed=args.seed)
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    write_reference(
        args.out, models, source={"image": image.name, "sha256": digest, "made_by": "bitro stain-reference"}
    )
    for name, model in models.items():
        log.info("%s reference: H %s, E %s", name, model.matrix[0].round(3), model.matrix[1].round(3))


def _cmd_stain(args: argparse.Namespace) -> None:
    from bitro.preprocess.stain import fit_slide_stain, read_reference, write_stain_json

    sample, mask = _sample_and_mask(args)
    reference = read_reference(args.reference, args.method)
    with sample.open_slide() as slide:
        model = fit_slide_stain(
            slide, mask, method=args.method, mpp=args.fit_mpp, n_tiles=args.n_tiles, seed=args.seed
        )
    write_stain_json(args.out, model, reference)
    log.info("%s: %s stains H %s, E %s -> %s", args.sample, args.method, *model.matrix.round(3), args.out)


def _cmd_cells(args: argparse.Namespace) -> None:
    from bitro.preprocess.cells import cells_table, export_cells_geojson, write_cells
    from bitro.preprocess.segment import segmented_cells
    from bitro.preprocess.units import read_units

    sample, mask = _sample_and_mask(args)
    units = read_units(args.units)
    with sample.open_slide() as slide:
        cells, source, origin = segmented_cells(
            sample,
            slide,
            backend=args.backend,
            mask=mask,
            stain=args.stain,
            segmentation=args.segmentation,
            params=_classical_params(args),
            workers=args.workers,
            checkpoint=args.out.with_name(args.out.name + ".segment-parts"),
        )
        table = cells_table(
            cells, mpp=slide.mpp, units=units, source=source, slide_dimensions=slide.dimensions, path=origin
        )
    if table.empty:
        raise InputError(origin, f"no cells from {source}: an empty sample cannot be trained on or scored")
    if args.geojson is not None:
        export_cells_geojson(table, args.geojson)
    write_cells(table, args.out)
    inside = int((table["unit_id"] >= 0).sum())
    log.info("%s: %d cells (%d in a unit) from %s -> %s", args.sample, len(table), inside, source, args.out)


def _classical_params(args: argparse.Namespace) -> ClassicalParams:
    from bitro.preprocess.segment import ClassicalParams

    return ClassicalParams(
        mpp=args.segment_mpp,
        min_area_um2=args.min_area_um2,
        max_area_um2=args.max_area_um2,
        min_distance_um=args.min_distance_um,
        threshold_factor=args.threshold_factor,
        core_factor=args.core_factor,
        polygons=not args.no_polygons,
    )


def _cmd_cellvit_script(args: argparse.Namespace) -> None:
    import shlex

    from bitro.io import read_sample
    from bitro.preprocess.cellvit import cellvit_command, cellvit_output_path

    sample = read_sample(args.format, args.root, args.sample, mpp=args.mpp)
    argv = cellvit_command(
        slide=sample.slide_path.absolute(),
        outdir=args.outdir.absolute(),
        model=args.model,
        mpp=sample.mpp,
        taxonomy=args.taxonomy,
        batch_size=args.batch_size,
        gpu=args.gpu,
        ray_workers=args.ray_workers,
    )
    script = "\n".join(
        [
            "#!/usr/bin/env bash",
            f"# CellViT++ on {sample.sample_id}: cells land in",
            f"# {cellvit_output_path(args.outdir, sample.slide_path)}",
            "set -euo pipefail",
            shlex.join(argv),
            "",
        ]
    )
    with atomic_path(args.out) as tmp:
        tmp.write_text(script)
        tmp.chmod(0o755)
    log.info("%s: CellViT++ command -> %s", args.sample, args.out)


def _cmd_embed(args: argparse.Namespace) -> None:
    from bitro.features.embed import embed_crops
    from bitro.features.encoders import load_encoder
    from bitro.features.tokens import resolve_mode

    try:
        mode = resolve_mode(args.mode, args.encoder)
    except ValueError as error:
        _usage_error("embed", str(error))
    if mode == "crop" and args.crops is None:
        _usage_error("embed", "crop mode needs --crops")
    if mode == "tile-token" and (args.cells is None or (args.slide is None and args.sample is None)):
        _usage_error(
            "embed", "tile-token mode needs --cells and the slide (--slide, or --format --root --sample)"
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
    from bitro.features.tokens import TileSettingsError, embed_tiles
    from bitro.io import open_slide, read_sample
    from bitro.preprocess.stain import read_normalizer

    if args.slide is not None:
        slide = open_slide(args.slide, mpp=args.mpp)
    else:
        if args.format is None or args.root is None:
            _usage_error("embed", "--sample needs --format and --root")
        slide = read_sample(args.format, args.root, args.sample, mpp=args.mpp).open_slide()
    normalizer = None if args.stain is None else read_normalizer(args.stain)
    with slide:
        try:
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
        except TileSettingsError as error:
            _usage_error("embed", str(error))
    log.info("%s -> %s (%s tile tokens, %d-d)", slide.path.name, args.out, args.encoder, encoder.dim)


def _usage_error(verb: str, message: str) -> NoReturn:
    """Print ``bitro <verb>: error: message`` and exit with status 2, as argparse does."""
    print(f"bitro {verb}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


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


def _cmd_crops(args: argparse.Namespace) -> None:
    from bitro.io import read_sample
    from bitro.preprocess.cells import read_cells
    from bitro.preprocess.crops import CropParams, write_crops
    from bitro.preprocess.stain import read_normalizer

    sample = read_sample(args.format, args.root, args.sample, mpp=args.mpp)
    cells = read_cells(args.cells, geometry=False)
    normalizer = None if args.stain is None else read_normalizer(args.stain)
    params = CropParams(size=args.size, mpp=args.crop_mpp)
    with sample.open_slide() as slide:
        write_crops(
            slide,
            cells["x_px"].to_numpy(),
            cells["y_px"].to_numpy(),
            args.out,
            params=params,
            normalizer=normalizer,
            workers=args.workers,
            progress=not args.quiet,
        )
    log.info(
        "%s: %d crops, %d px at %g µm/px -> %s", args.sample, len(cells), args.size, args.crop_mpp, args.out
    )


def _cmd_targets(args: argparse.Namespace) -> None:
    from bitro.io import read_sample
    from bitro.preprocess.targets import make_targets, write_targets
    from bitro.preprocess.units import read_units

    sample = read_sample(args.format, args.root, args.sample, mpp=args.mpp)
    targets = make_targets(sample, read_units(args.units))
    write_targets(targets, args.out)
    log.info("%s: targets %d × %d -> %s", args.sample, targets.n_obs, targets.n_vars, args.out)


def _cmd_info(args: argparse.Namespace) -> None:
    from bitro.io import open_slide

    with open_slide(args.slide, mpp=args.mpp) as slide:
        slide.verify()
        info = {
            "path": str(slide.path),
            "backend": slide.backend,
            "dimensions": list(slide.dimensions),
            "level_dimensions": [list(d) for d in slide.level_dimensions],
            "level_downsamples": list(slide.level_downsamples),
            "mpp": slide.mpp,
            "mpp_source": slide.mpp_source,
        }
    print(json.dumps(info, indent=2))


def build_parser() -> argparse.ArgumentParser:
    """The ``bitro`` argument parser with one sub-command per verb."""
    parser = argparse.ArgumentParser(
        prog="bitro",
        description="Predict bulk and spatial gene expression from H&E whole-slide images (BiTro). "
        "One verb per workflow rule.",
    )
    parser.add_argument("--version", action="version", version=f"bitro {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    verbs = parser.add_subparsers(dest="verb", required=True)

    demo = verbs.add_parser("demo", help="write the embedded demo cohorts (HEST-1k, TCGA, Xenium layouts)")
    demo.add_argument("--out", required=True, type=Path, help="directory to write the cohorts to")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--preset", default="default", choices=DEMO_PRESETS, help="cohort sizes")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.add_argument("--manifest", type=Path, default=None, help="also write the summary JSON here")
    demo.set_defaults(func=_cmd_demo)

    virtual = verbs.add_parser(
        "virtual-slide", help="write one large virtual H&E slide in bounded memory (for benchmarks)"
    )
    virtual.add_argument("--out", required=True, type=Path, help="output .tif")
    virtual.add_argument("--cells", type=int, default=1_000_000, help="approximate number of cells")
    virtual.add_argument("--seed", type=int, default=0)
    virtual.add_argument("--quiet", action="store_true", help="no progress bars")
    virtual.set_defaults(func=_cmd_virtual_slide)

    tissue = verbs.add_parser("tissue", help="write the tissue mask (.npz) and its QuPath GeoJSON outline")
    _add_sample_args(tissue)
    tissue.add_argument("--mask-mpp", type=float, default=8.0, help="pixel size of the tissue mask (µm)")
    tissue.add_argument("--geojson", type=Path, default=None, help="also write the outline here")
    tissue.add_argument("--out", required=True, type=Path, help="tissue.npz")
    tissue.set_defaults(func=_cmd_tissue)

    units = verbs.add_parser("units", help="write units.parquet: ST spots, or spot-sized patches over tissue")
    _add_sample_args(units)
    _add_tissue_args(units)
    units.add_argument("--patch-size-um", type=float, default=55.0, help="patch side for bulk and Xenium")
    units.add_argument("--min-tissue-fraction", type=float, default=0.5)
    units.add_argument("--out", required=True, type=Path)
    units.set_defaults(func=_cmd_units)

    reference = verbs.add_parser(
        "stain-reference", help="fit a reference stain model per method on a target image or slide"
    )
    reference.add_argument("--image", required=True, type=Path, help="PNG/JPEG image or a slide file")
    reference.add_argument("--mpp", type=float, default=None, help="the slide's µm per pixel, if unrecorded")
    reference.add_argument("--seed", type=int, default=0)
    reference.add_argument("--out", required=True, type=Path)
    reference.set_defaults(func=_cmd_stain_reference)

    stain = verbs.add_parser("stain", help="fit the slide's stain matrix and write stain.json")
    _add_sample_args(stain)
    _add_tissue_args(stain)
    stain.add_argument("--method", choices=STAIN_METHODS, default=DEFAULT_STAIN_METHOD)
    stain.add_argument("--reference", required=True, type=Path, help="reference JSON (bitro stain-reference)")
    stain.add_argument("--fit-mpp", type=float, default=1.0, help="pixel size the fit samples at (µm)")
    stain.add_argument("--n-tiles", type=int, default=32, help="tissue tiles sampled for the fit")
    stain.add_argument("--seed", type=int, default=0)
    stain.add_argument("--out", required=True, type=Path)
    stain.set_defaults(func=_cmd_stain)

    cells = verbs.add_parser("cells", help="segment or read cells, assign them to units: cells.parquet")
    _add_sample_args(cells)
    _add_tissue_args(cells)
    cells.add_argument("--backend", choices=SEGMENTATION_BACKENDS, default="classical")
    cells.add_argument("--units", required=True, type=Path, help="the sample's units.parquet")
    cells.add_argument("--stain", type=Path, default=None, help="stain.json (classical backend)")
    cells.add_argument(
        "--segmentation",
        type=Path,
        default=None,
        help="precomputed: segmentation file (default: the layout's own); cellvit: its output folder",
    )
    cells.add_argument("--segment-mpp", type=float, default=0.5, help="classical: µm per pixel to segment at")
    cells.add_argument("--min-area-um2", type=float, default=8.0)
    cells.add_argument("--max-area-um2", type=float, default=400.0)
    cells.add_argument("--min-distance-um", type=float, default=2.0, help="closest two nucleus centres")
    cells.add_argument(
        "--threshold-factor", type=float, default=1.0, help="classical: haematoxylin threshold ÷ Otsu's"
    )
    cells.add_argument(
        "--core-factor", type=float, default=1.3, help="classical: nucleus-core threshold ÷ threshold"
    )
    cells.add_argument("--no-polygons", action="store_true", help="classical: skip tracing outlines")
    cells.add_argument("--workers", type=int, default=1)
    cells.add_argument("--geojson", type=Path, default=None, help="also write a QuPath GeoJSON here")
    cells.add_argument("--out", required=True, type=Path)
    cells.set_defaults(func=_cmd_cells)

    cellvit = verbs.add_parser("cellvit-script", help="write the script that runs CellViT++ on a sample")
    _add_sample_args(cellvit)
    cellvit.add_argument("--model", required=True, type=Path, help="local CellViT++ checkpoint")
    cellvit.add_argument("--outdir", required=True, type=Path, help="CellViT++ output folder")
    cellvit.add_argument("--taxonomy", default="pannuke")
    cellvit.add_argument("--batch-size", type=int, default=8)
    cellvit.add_argument("--gpu", type=int, default=0)
    cellvit.add_argument("--ray-workers", type=int, default=None, help="set on nodes with < 8 CPUs")
    cellvit.add_argument("--out", required=True, type=Path, help="the script (run.sh)")
    cellvit.set_defaults(func=_cmd_cellvit_script)

    crops = verbs.add_parser("crops", help="cut stain-normalised cell crops into crops.zarr")
    _add_sample_args(crops)
    crops.add_argument("--cells", required=True, type=Path, help="the sample's cells.parquet")
    crops.add_argument("--stain", type=Path, default=None, help="stain.json; omit to keep slide colours")
    crops.add_argument("--size", type=int, default=48, help="crop side (px)")
    crops.add_argument("--crop-mpp", type=float, default=0.5, help="crop pixel size (µm)")
    crops.add_argument("--workers", type=int, default=1)
    crops.add_argument("--quiet", action="store_true", help="no progress bar")
    crops.add_argument("--out", required=True, type=Path, help="crops.zarr")
    crops.set_defaults(func=_cmd_crops)

    targets = verbs.add_parser("targets", help="write targets.h5ad: each unit's measured expression")
    _add_sample_args(targets)
    targets.add_argument("--units", required=True, type=Path, help="the sample's units.parquet")
    targets.add_argument("--out", required=True, type=Path)
    targets.set_defaults(func=_cmd_targets)

    embed = verbs.add_parser(
        "embed",
        help="embed every cell: embeddings.npy and .json (crop mode: from crops.zarr; tile-token mode: from "
        "the slide, one encoder pass per tile, tokens pooled under each nucleus)",
    )
    embed.add_argument(
        "--mode",
        choices=("auto", "crop", "tile-token"),
        default="crop",
        help="crop: one forward per cell crop; tile-token: one per tile; auto: tile-token for DINOv3, "
        "else crop",
    )
    embed.add_argument("--crops", type=Path, default=None, help="crop mode: the sample's crops.zarr")
    embed.add_argument("--encoder", choices=ENCODERS, default="efficientnet_lite0")
    embed.add_argument("--weights", type=Path, default=None, help="local weights (DINOv3: its directory)")
    embed.add_argument("--image-size", type=int, default=224, help="crop mode: side crops are resized to")
    embed.add_argument("--pooling", choices=("mean", "cls"), default="mean", help="crop mode: DINOv3 pooling")
    embed.add_argument("--batch-size", type=int, default=256, help="crop mode: crops per encoder call")
    embed.add_argument("--loader-workers", type=int, default=1, help="processes reading crops or tiles ahead")
    embed.add_argument("--device", default="cpu", help="cpu or cuda")
    tiles = embed.add_argument_group("tile-token mode")
    tiles.add_argument("--slide", type=Path, default=None, help="the slide file (or name the sample below)")
    tiles.add_argument("--format", choices=FORMATS, default=None, help="input layout of the sample's cohort")
    tiles.add_argument("--root", type=Path, default=None, help="the cohort's root directory")
    tiles.add_argument("--sample", default=None, help="sample id in the layout")
    tiles.add_argument("--mpp", type=float, default=None, help="override the slide's µm per pixel")
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

    info = verbs.add_parser("info", help="print a slide's levels, pixel size and reader backend")
    info.add_argument("slide", type=Path)
    info.add_argument("--mpp", type=float, default=None)
    info.set_defaults(func=_cmd_info)

    cohort_commands.register(verbs)
    train_commands.register(verbs)
    evaluate_commands.register(verbs)
    transfer_commands.register(verbs)
    doctor_commands.register(verbs)
    plot_commands.register(verbs)
    accuracy_commands.register(verbs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bitro`` console script.

    A :class:`~bitro.errors.BitroError` (bad input, config, weights or command line) is printed as one
    line, ``bitro <verb>: error: <file>: <problem>``, with exit status 2; ``-v`` adds its traceback.
    Any other exception is a bug and keeps its traceback.
    """
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    logging.captureWarnings(True)
    try:
        args.func(args)
    except BitroError as error:
        if args.verbose:
            import traceback

            traceback.print_exc()
        print(f"bitro {args.verb}: error: {_oneline(str(error))}", file=sys.stderr)
        return 2
    finally:
        logging.captureWarnings(False)
    return 0


def _oneline(text: str) -> str:
    """``text`` on one line: libraries' multi-line messages joined with spaces."""
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
