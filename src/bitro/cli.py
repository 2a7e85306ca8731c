"""``bitro <verb>``: one verb per workflow rule, each a thin call into the library."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from bitro import __version__
from bitro._atomic import atomic_path
from bitro.errors import InputError

log = logging.getLogger("bitro")

FORMATS = ("hest", "tcga", "xenium")
# Kept here rather than imported so that `bitro --help` does not load the demo's dependencies.
DEMO_PRESETS = ("default", "small")


def _add_sample_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--format", required=True, choices=FORMATS, help="input layout of the cohort")
    parser.add_argument("--root", required=True, type=Path, help="the cohort's root directory")
    parser.add_argument("--sample", required=True, help="sample id (HEST id, TCGA slide barcode, section)")
    parser.add_argument("--mpp", type=float, default=None, help="override the slide's µm per pixel")


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


def _cmd_units(args: argparse.Namespace) -> None:
    from bitro.io import read_sample
    from bitro.preprocess.units import make_units, write_units

    sample = read_sample(args.format, args.root, args.sample, mpp=args.mpp)
    units = make_units(
        sample,
        patch_size_um=args.patch_size_um,
        min_tissue_fraction=args.min_tissue_fraction,
        mask_mpp=args.mask_mpp,
    )
    write_units(units, args.out)
    log.info("%s: %d units (%d in tissue) -> %s", args.sample, len(units), units["in_tissue"].sum(), args.out)


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

    units = verbs.add_parser("units", help="write units.parquet: ST spots, or spot-sized patches over tissue")
    _add_sample_args(units)
    units.add_argument("--patch-size-um", type=float, default=55.0, help="patch side for bulk and Xenium")
    units.add_argument("--min-tissue-fraction", type=float, default=0.5)
    units.add_argument("--mask-mpp", type=float, default=8.0, help="pixel size of the tissue mask (µm)")
    units.add_argument("--out", required=True, type=Path)
    units.set_defaults(func=_cmd_units)

    targets = verbs.add_parser("targets", help="write targets.h5ad: each unit's measured expression")
    _add_sample_args(targets)
    targets.add_argument("--units", required=True, type=Path, help="the sample's units.parquet")
    targets.add_argument("--out", required=True, type=Path)
    targets.set_defaults(func=_cmd_targets)

    info = verbs.add_parser("info", help="print a slide's levels, pixel size and reader backend")
    info.add_argument("slide", type=Path)
    info.add_argument("--mpp", type=float, default=None)
    info.set_defaults(func=_cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bitro`` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        args.func(args)
    except InputError as error:
        print(f"bitro {args.verb}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
