"""The per-sample verbs on the slide and its expression: ``tissue``, ``units``, ``stain-reference``,
``stain``, ``targets``, ``prepare`` (tissue, units, stain and targets in one process, as the workflow runs
them), and ``info`` (a slide's levels and pixel size)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from bitro.commands._sample import (
    MASK_MPP,
    add_sample_args,
    add_tissue_args,
    read_args_sample,
    sample_and_mask,
)
from bitro.options import DEFAULT_STAIN_METHOD, STAIN_METHODS

if TYPE_CHECKING:
    from bitro.io.sample import Sample
    from bitro.preprocess.tissue import TissueMask

log = logging.getLogger("bitro")


def _cmd_tissue(args: argparse.Namespace) -> None:
    _tissue(read_args_sample(args), args.mask_mpp, args.out, args.geojson)


def _tissue(sample: Sample, mask_mpp: float, out: Path, geojson: Path | None) -> None:
    """Write the sample's tissue mask (and its outline when ``geojson`` is given)."""
    from bitro.preprocess.tissue import tissue_mask, write_tissue

    with sample.open_slide() as slide:
        mask = tissue_mask(slide, mpp=mask_mpp)
    write_tissue(mask, out, geojson)
    log.info("%s: tissue covers %.1f %% of the slide -> %s", sample.sample_id, 100 * mask.mask.mean(), out)


def _cmd_units(args: argparse.Namespace) -> None:
    sample, mask = sample_and_mask(args)
    _units(sample, mask, args.patch_size_um, args.min_tissue_fraction, args.out)


def _units(
    sample: Sample, mask: TissueMask, patch_size_um: float, min_tissue_fraction: float, out: Path
) -> None:
    """Write the sample's units: its spots (ST), else spot-sized patches over its tissue."""
    from bitro.preprocess.units import grid_units, spot_units, write_units

    if sample.kind == "st":
        units = spot_units(sample, mask=mask)
    else:
        with sample.open_slide() as slide:
            units = grid_units(
                slide, size_um=patch_size_um, mask=mask, min_tissue_fraction=min_tissue_fraction
            )
    write_units(units, out)
    log.info("%s: %d units (%d in tissue) -> %s", sample.sample_id, len(units), units["in_tissue"].sum(), out)


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
    sample, mask = sample_and_mask(args)
    _stain(sample, mask, args, args.out)


def _stain(sample: Sample, mask: TissueMask, args: argparse.Namespace, out: Path) -> None:
    """Fit the sample's stain matrix on its tissue and write it with the reference to ``out``; ``args``
    holds the stain options (``--reference --method --fit-mpp --n-tiles --seed``)."""
    from bitro.preprocess.stain import fit_slide_stain, read_reference, write_stain_json

    reference = read_reference(args.reference, args.method)
    with sample.open_slide() as slide:
        model = fit_slide_stain(
            slide, mask, method=args.method, mpp=args.fit_mpp, n_tiles=args.n_tiles, seed=args.seed
        )
    write_stain_json(out, model, reference)
    log.info("%s: %s stains H %s, E %s -> %s", sample.sample_id, args.method, *model.matrix.round(3), out)


def _cmd_targets(args: argparse.Namespace) -> None:
    from bitro.errors import UsageError
    from bitro.options import PREDICTION_FORMATS
    from bitro.preprocess.targets import unlabelled_targets

    if args.format in PREDICTION_FORMATS:
        raise UsageError(f"--format {args.format}", unlabelled_targets(args.sample))
    _targets(read_args_sample(args), args.units, args.out)


def _targets(sample: Sample, units: Path, out: Path) -> None:
    """Write each unit's measured expression (the units as ``bitro units`` wrote them)."""
    from bitro.preprocess.targets import make_targets, write_targets
    from bitro.preprocess.units import read_units

    targets = make_targets(sample, read_units(units))
    write_targets(targets, out)
    log.info("%s: targets %d × %d -> %s", sample.sample_id, targets.n_obs, targets.n_vars, out)


def _cmd_prepare(args: argparse.Namespace) -> None:
    """``tissue``, ``units``, ``stain`` and (with ``--targets-out``) ``targets`` in one process.

    Each step reads what the one before wrote, as the separate verbs do, so the files are the same.
    """
    from bitro.errors import UsageError
    from bitro.options import PREDICTION_FORMATS
    from bitro.preprocess.targets import unlabelled_targets
    from bitro.preprocess.tissue import read_tissue

    if args.targets_out is not None and args.format in PREDICTION_FORMATS:
        raise UsageError(f"--format {args.format}", unlabelled_targets(args.sample))
    sample = read_args_sample(args)
    _tissue(sample, args.mask_mpp, args.tissue_out, args.geojson)
    mask = read_tissue(args.tissue_out)
    _units(sample, mask, args.patch_size_um, args.min_tissue_fraction, args.units_out)
    _stain(sample, mask, args, args.stain_out)
    if args.targets_out is not None:
        _targets(sample, args.units_out, args.targets_out)


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
    _add_mask_args(tissue)
    tissue.add_argument("--out", required=True, type=Path, help="tissue.npz")
    tissue.set_defaults(func=_cmd_tissue)

    units = verbs.add_parser("units", help="write units.parquet: ST spots, or spot-sized patches over tissue")
    add_sample_args(units)
    add_tissue_args(units)
    _add_units_args(units)
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
    _add_stain_args(stain)
    stain.add_argument("--out", required=True, type=Path)
    stain.set_defaults(func=_cmd_stain)


def _add_mask_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mask-mpp", type=float, default=MASK_MPP, help="pixel size of the tissue mask (µm)")
    parser.add_argument("--geojson", type=Path, default=None, help="also write the tissue outline here")


def _add_units_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--patch-size-um", type=float, default=55.0, help="patch side for bulk, Xenium and slides"
    )
    parser.add_argument("--min-tissue-fraction", type=float, default=0.5)


def _add_stain_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", choices=STAIN_METHODS, default=DEFAULT_STAIN_METHOD)
    parser.add_argument(
        "--reference", required=True, type=Path, help="reference JSON (bitro stain-reference)"
    )
    parser.add_argument("--fit-mpp", type=float, default=1.0, help="pixel size the fit samples at (µm)")
    parser.add_argument("--n-tiles", type=int, default=32, help="tissue tiles sampled for the fit")
    parser.add_argument("--seed", type=int, default=0)


def register_prepare(verbs: argparse._SubParsersAction) -> None:
    """Add ``prepare`` (tissue, units, stain and targets of a sample in one process) to the parser."""
    prepare = verbs.add_parser(
        "prepare",
        help="tissue, units, stain and (--targets-out) targets of a sample in one process: the files "
        "the four verbs write",
    )
    add_sample_args(prepare)
    _add_mask_args(prepare)
    _add_units_args(prepare)
    _add_stain_args(prepare)
    prepare.add_argument("--tissue-out", required=True, type=Path, help="tissue.npz")
    prepare.add_argument("--units-out", required=True, type=Path, help="units.parquet")
    prepare.add_argument("--stain-out", required=True, type=Path, help="stain.json")
    prepare.add_argument(
        "--targets-out", type=Path, default=None, help="targets.h5ad (a sample with expression)"
    )
    prepare.set_defaults(func=_cmd_prepare)


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
