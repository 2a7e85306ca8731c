"""The ``accuracy`` verb: the accuracy benchmark on virtual cohorts (``make accuracy``)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger("bitro")


def _cmd_accuracy(args: argparse.Namespace) -> None:
    import yaml

    from bitro.accuracy.bench import restrict, run_benchmark

    config = yaml.safe_load(Path(args.config).read_text())
    if args.quick:  # a small cohort and short training: checks the wiring, separates nothing
        config = quick_config(config)
    if args.cohorts:
        config = restrict(config, args.cohorts)
    tables = run_benchmark(config, args.out, workers=args.workers, report_only=args.report_only)
    log.info("wrote %s/report.md (%d summary rows)", args.out, len(tables["summary"]))
    print((Path(args.out) / "report.md").read_text())


def quick_config(config: dict) -> dict:
    """``config`` shrunk to minutes: tiny cohorts, one seed, a few steps, a small grid."""
    quick = dict(config)
    quick["seeds"] = config["seeds"][:1]
    quick["bootstrap"] = 50
    quick["cohorts"] = {
        "st": dict(config["cohorts"]["st"], n_patients=4, sections_per_patient=1, grid=[6, 6], n_folds=2),
        "bulk": dict(config["cohorts"]["bulk"], n_patients=12, grid=[4, 4], n_folds=2),
    }
    quick["training"] = {
        level: dict(settings, max_steps=20, patience_steps=20, eval_every_steps=10)
        for level, settings in config["training"].items()
    }
    quick["tuning"] = dict(
        config["tuning"], lr=config["tuning"]["lr"][:1], dropout=config["tuning"]["dropout"][:1], grid_of={}
    )
    quick["mlp"] = dict(config.get("mlp", {}), epochs=3)
    if "learning_curve" in config:
        quick["learning_curve"] = dict(config["learning_curve"], patients=[6, 12])
    return quick


def register(verbs: argparse._SubParsersAction) -> None:
    """Add ``accuracy`` to the ``bitro`` parser."""
    accuracy = verbs.add_parser(
        "accuracy", help="the accuracy benchmark: every model on identical folds of virtual cohorts"
    )
    accuracy.add_argument("--config", default="config/accuracy.yaml", help="the benchmark's config")
    accuracy.add_argument("--out", default="results/accuracy", help="output folder (runs are cached there)")
    accuracy.add_argument("--workers", type=int, default=2, help="worker processes (0: in this process)")
    accuracy.add_argument("--quick", action="store_true", help="tiny cohorts and budgets: a wiring check")
    accuracy.add_argument(
        "--cohorts",
        nargs="+",
        metavar="LEVEL",
        help="run and report only these cohorts of the config (e.g. bulk)",
    )
    accuracy.add_argument(
        "--report-only", action="store_true", help="report the runs finished so far; run nothing"
    )
    accuracy.set_defaults(func=_cmd_accuracy)
