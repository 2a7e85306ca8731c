"""The demo verbs: ``demo`` writes the embedded cohorts, ``virtual-slide`` one large slide for benchmarks."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bitro._atomic import atomic_path
from bitro.options import DEMO_PRESETS


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


def register(verbs: argparse._SubParsersAction) -> None:
    """Add ``demo`` and ``virtual-slide`` to the ``bitro`` parser."""
    demo = verbs.add_parser(
        "demo", help="write the embedded demo cohorts (HEST-1k, TCGA, Xenium layouts) and an unlabelled slide"
    )
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
