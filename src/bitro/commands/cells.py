"""The per-sample cell verbs: ``cells`` (segment or read, assign to units), ``cellvit-script`` and
``crops``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from bitro._atomic import atomic_path
from bitro.commands._sample import add_sample_args, add_tissue_args, read_args_sample, sample_and_mask
from bitro.errors import InputError
from bitro.options import SEGMENTATION_BACKENDS

if TYPE_CHECKING:
    from bitro.preprocess.segment import ClassicalParams

log = logging.getLogger("bitro")


def _cmd_cells(args: argparse.Namespace) -> None:
    from bitro.preprocess.cells import cells_table, export_cells_geojson, write_cells
    from bitro.preprocess.segment import segmented_cells
    from bitro.preprocess.units import read_units

    sample, mask = sample_and_mask(args)
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

    from bitro.preprocess.cellvit import cellvit_command, cellvit_output_path

    sample = read_args_sample(args)
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


def _cmd_crops(args: argparse.Namespace) -> None:
    from bitro.preprocess.cells import read_cells
    from bitro.preprocess.crops import CropParams, write_crops
    from bitro.preprocess.stain import read_normalizer

    sample = read_args_sample(args)
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


def register(verbs: argparse._SubParsersAction) -> None:
    """Add ``cells``, ``cellvit-script`` and ``crops`` to the ``bitro`` parser."""
    cells = verbs.add_parser("cells", help="segment or read cells, assign them to units: cells.parquet")
    add_sample_args(cells)
    add_tissue_args(cells)
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
    add_sample_args(cellvit)
    cellvit.add_argument("--model", required=True, type=Path, help="local CellViT++ checkpoint")
    cellvit.add_argument("--outdir", required=True, type=Path, help="CellViT++ output folder")
    cellvit.add_argument("--taxonomy", default="pannuke")
    cellvit.add_argument("--batch-size", type=int, default=8)
    cellvit.add_argument("--gpu", type=int, default=0)
    cellvit.add_argument("--ray-workers", type=int, default=None, help="set on nodes with < 8 CPUs")
    cellvit.add_argument("--out", required=True, type=Path, help="the script (run.sh)")
    cellvit.set_defaults(func=_cmd_cellvit_script)

    crops = verbs.add_parser("crops", help="cut stain-normalised cell crops into crops.zarr")
    add_sample_args(crops)
    crops.add_argument("--cells", required=True, type=Path, help="the sample's cells.parquet")
    crops.add_argument("--stain", type=Path, default=None, help="stain.json; omit to keep slide colours")
    crops.add_argument("--size", type=int, default=48, help="crop side (px)")
    crops.add_argument("--crop-mpp", type=float, default=0.5, help="crop pixel size (µm)")
    crops.add_argument("--workers", type=int, default=1)
    crops.add_argument("--quiet", action="store_true", help="no progress bar")
    crops.add_argument("--out", required=True, type=Path, help="crops.zarr")
    crops.set_defaults(func=_cmd_crops)
