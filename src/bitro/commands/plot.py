"""The ``plot`` verb: a cohort's figures and report tables in ``results/{cohort}/figures/``."""

from __future__ import annotations

import argparse
import functools
import logging
from pathlib import Path

from bitro import options

log = logging.getLogger("bitro")

#: ``--level`` choices: a level of :data:`bitro.options.LEVELS`, or ``auto`` (from the cohort's metrics).
LEVELS = ("auto", *options.LEVELS)


def _slide_of(fmt: str, root: Path, sample: str) -> Path:
    """The slide of ``sample`` in a cohort of layout ``fmt`` at ``root``."""
    from bitro.layout import sample_files

    return sample_files(fmt, root, sample).slide


def _cmd_plot(args: argparse.Namespace) -> None:
    from threadpoolctl import threadpool_limits

    from bitro.plot.cohort import plot_cohort

    slides = None
    if args.format is not None and args.root is not None:
        slides = functools.partial(_slide_of, args.format, args.root)
    with threadpool_limits(limits=args.threads):
        written = plot_cohort(
            args.cohort_dir,
            args.out_dir,
            level=args.level,
            folds=args.folds,
            top_n=args.top_genes,
            dpi=args.dpi,
            cohort=args.cohort,
            slides=slides,
        )
    log.info("%d files -> %s", len(written), args.out_dir or args.cohort_dir / "figures")


def register(verbs: argparse._SubParsersAction) -> None:
    """Add ``plot`` to the ``bitro`` parser."""
    plot = verbs.add_parser(
        "plot",
        help="a cohort's figures (spot and cell maps, per-gene PCC, baselines, training curves) and "
        "report tables: results/{cohort}/figures/",
    )
    plot.add_argument("--cohort-dir", required=True, type=Path, help="results/{cohort}")
    plot.add_argument("--out-dir", type=Path, help="where the files go (default: COHORT_DIR/figures)")
    plot.add_argument(
        "--level", choices=LEVELS, default="auto", help="the cohort's level (auto: from its metrics.tsv)"
    )
    plot.add_argument("--folds", nargs="+", help="fold names (default: those of folds.json)")
    plot.add_argument("--cohort", help="the name in titles and summary.tsv (default: the folder's)")
    plot.add_argument(
        "--format", choices=options.FORMATS, help="the cohort's input layout, to draw spot maps over the H&E"
    )
    plot.add_argument("--root", type=Path, help="the cohort's root directory (with --format)")
    plot.add_argument("--top-genes", type=int, default=4, help="genes per sample in the maps")
    plot.add_argument("--dpi", type=int, default=150)
    plot.add_argument("--threads", type=int, help="BLAS threads (the rule's threads; default: no limit)")
    plot.set_defaults(func=_cmd_plot)
