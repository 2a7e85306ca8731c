"""The per-sample verbs on the slide and its expression: ``tissue``, ``units``, ``stain-reference``,
``stain``, ``targets``, and ``info`` (a slide's levels and pixel size)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from bitro.commands._sample import add_sample_args, add_tissue_args, read_args_sample, sample_and_mask
from bitro.options import DEFAULT_STAIN_METHOD, STAIN_METHODS

log = logging.getLogger("bitro")


def _cmd_tissue(args: argparse.Namespace) -> None:
    from bitro.preprocess.tissue import tissue_mask, write_tissue

    sample = read_args_sample(args)
    with sample.open_slide() as slide:
        mask = tissue_mask(slide, mpp=args.mask_mpp)
    write_tissue(mask, args.out, args.geojson)
    log.info("%s: tissue covers %.1f %% of the slide -> %s", args.sample, 100 * mask.mask.mean(), args.out)


def _cmd_units(args: argparse.Namespace) -> None:
    from bitro.preprocess.units import grid_units, spot_units, write_units

    sample, mask = sample_and_mask(args)
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

    sample, mask = sample_and_mask(args)
    reference = read_reference(args.reference, args.method)
    with sample.open_slide() as slide:
        model = fit_slide_stain(
            slide, mask, method=args.method, mpp=args.fit_mpp, n_tiles=args.n_tiles, seed=args.seed
        )
    write_stain_json(args.out, model, reference)
    log.info("%s: %s stains H %s, E %s -> %s", args.sample, args.method, *model.matrix.round(3), args.out)


def _cmd_targets(args: argparse.Namespace) -> None:
    from bitro.errors import UsageError
    from bitro.options import PREDICTION_FORMATS
    from bitro.preprocess.targets import make_targets, unlabelled_targets, write_targets
    from bitro.preprocess.units import read_units

    if args.format in PREDICTION_FORMATS:
        raise UsageError(f"--format {args.format}", unlabelled_targets(args.sample))
    sample = read_args_sample(args)
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


def register(verbs: argparse._SubParsersAction) -> None:
    """Add ``tissue``, ``units``, ``stain-reference`` and ``stain`` to the ``bitro`` parser."""
    tissue = verbs.add_parser("tissue", help="write the tissue mask (.npz) and its QuPath GeoJSON outline")
    add_sample_args(tissue)
    tissue.add_argument("--mask-mpp", type=float, default=8.0, help="pixel size of the tissue mask (µm)")
    tissue.add_argument("--geojson", type=Path, default=None, help="also write the outline here")
    tissue.add_argument("--out", required=True, type=Path, help="tissue.npz")
    tissue.set_defaults(func=_cmd_tissue)

    units = verbs.add_parser("units", help="write units.parquet: ST spots, or spot-sized patches over tissue")
    add_sample_args(units)
    add_tissue_args(units)
    units.add_argument(
        "--patch-size-um", type=float, default=55.0, help="patch side for bulk, Xenium and slides"
    )
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
    add_sample_args(stain)
    add_tissue_args(stain)
    stain.add_argument("--method", choices=STAIN_METHODS, default=DEFAULT_STAIN_METHOD)
    stain.add_argument("--reference", required=True, type=Path, help="reference JSON (bitro stain-reference)")
    stain.add_argument("--fit-mpp", type=float, default=1.0, help="pixel size the fit samples at (µm)")
    stain.add_argument("--n-tiles", type=int, default=32, help="tissue tiles sampled for the fit")
    stain.add_argument("--seed", type=int, default=0)
    stain.add_argument("--out", required=True, type=Path)
    stain.set_defaults(func=_cmd_stain)


def register_targets(verbs: argparse._SubParsersAction) -> None:
    """Add ``targets`` to the ``bitro`` parser."""
    targets = verbs.add_parser("targets", help="write targets.h5ad: each unit's measured expression")
    add_sample_args(targets)
    targets.add_argument("--units", required=True, type=Path, help="the sample's units.parquet")
    targets.add_argument("--out", required=True, type=Path)
    targets.set_defaults(func=_cmd_targets)


def register_info(verbs: argparse._SubParsersAction) -> None:
    """Add ``info`` to the ``bitro`` parser."""
    info = verbs.add_parser("info", help="print a slide's levels, pixel size and reader backend")
    info.add_argument("slide", type=Path)
    info.add_argument("--mpp", type=float, default=None)
    info.set_defaults(func=_cmd_info)
