"""``bitro <verb>``: one verb per workflow rule, each a thin call into the library.

This module only assembles the parser: every verb lives in :mod:`bitro.commands`, one module per verb
family, each with a ``register`` that adds its verbs.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from bitro import __version__
from bitro.commands import (
    accuracy,
    bundle,
    cells,
    cohort,
    demo,
    doctor,
    evaluate,
    features,
    plot,
    sample,
    train,
    transfer,
)
from bitro.errors import BitroError


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
    demo.register(verbs)
    sample.register(verbs)
    cells.register(verbs)
    sample.register_targets(verbs)
    sample.register_prepare(verbs)
    features.register(verbs)
    sample.register_info(verbs)
    cohort.register(verbs)
    train.register(verbs)
    evaluate.register(verbs)
    bundle.register(verbs)
    transfer.register(verbs)
    doctor.register(verbs)
    plot.register(verbs)
    accuracy.register(verbs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bitro`` console script.

    A verb returns nothing (exit status 0) or its own status (``bitro doctor``: 1 when a check fails).
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
        status = args.func(args)
    except BitroError as error:
        if args.verbose:
            import traceback

            traceback.print_exc()
        print(f"bitro {args.verb}: error: {_oneline(str(error))}", file=sys.stderr)
        return 2
    finally:
        logging.captureWarnings(False)
    return int(status or 0)


def _oneline(text: str) -> str:
    """``text`` on one line: libraries' multi-line messages joined with spaces."""
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
