"""What the per-sample verbs share: the options that name a sample, and its tissue mask."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from bitro.options import FORMATS, PREDICTION_FORMATS

if TYPE_CHECKING:
    from bitro.io.sample import Sample
    from bitro.preprocess.tissue import TissueMask


def add_sample_args(parser: argparse.ArgumentParser) -> None:
    """``--format --root --sample [--mpp] [--slide-file]``: one sample of a cohort in one of the input
    layouts."""
    parser.add_argument("--format", required=True, choices=FORMATS, help="input layout of the cohort")
    parser.add_argument("--root", required=True, type=Path, help="the cohort's root directory")
    parser.add_argument(
        "--sample", required=True, help="sample id (HEST id, TCGA slide barcode, section, slide)"
    )
    parser.add_argument("--mpp", type=float, default=None, help="override the slide's µm per pixel")
    add_slide_file_arg(parser)


def add_slide_file_arg(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--slide-file``: a ``slides`` sample's slide relative to ``--root`` (the sheet's ``file`` column)."""
    parser.add_argument(
        "--slide-file",
        default=None,
        help="--format slides: the slide relative to --root, the sheet's file column "
        "(default: {root}/{sample}.{svs,tif,...})",
    )


#: Pixel size (µm) a tissue mask is computed at unless ``--mask-mpp`` says otherwise.
MASK_MPP = 8.0


def add_tissue_args(parser: argparse.ArgumentParser) -> None:
    """``--tissue`` (a mask file) or ``--mask-mpp`` (compute one at this pixel size)."""
    parser.add_argument("--tissue", type=Path, default=None, help="tissue.npz (bitro tissue); else computed")
    parser.add_argument("--mask-mpp", type=float, default=MASK_MPP, help="pixel size of a computed mask (µm)")


def read_args_sample(args: argparse.Namespace) -> Sample:
    """The sample that ``--format --root --sample [--mpp] [--slide-file]`` name.

    Raises
    ------
    bitro.errors.UsageError
        ``--slide-file`` with a layout other than ``slides``.
    """
    from bitro.io import read_sample

    return read_sample(args.format, args.root, args.sample, mpp=args.mpp, file=slide_file(args))


def slide_file(args: argparse.Namespace) -> str | None:
    """``--slide-file`` when the layout is ``slides``.

    Raises
    ------
    bitro.errors.UsageError
        ``--slide-file`` with another layout.
    """
    from bitro.errors import UsageError

    file = getattr(args, "slide_file", None)
    if file is not None and args.format not in PREDICTION_FORMATS:
        raise UsageError("--slide-file", f"is for --format slides; the {args.format} layout names its slide")
    return file


def sample_and_mask(args: argparse.Namespace) -> tuple[Sample, TissueMask]:
    """The sample named on the command line and its tissue mask (read from --tissue, or computed)."""
    from bitro.preprocess.tissue import read_tissue, tissue_mask

    sample = read_args_sample(args)
    if getattr(args, "tissue", None) is not None:
        return sample, read_tissue(args.tissue)
    with sample.open_slide() as slide:
        return sample, tissue_mask(slide, mpp=args.mask_mpp)
