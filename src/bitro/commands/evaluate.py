"""Evaluation verbs: ``predict`` (a fold's test samples), ``baselines`` (the same fold) and ``summarise``."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger("bitro")


def _cmd_predict(args: argparse.Namespace) -> None:
    from bitro.commands.train import set_threads
    from bitro.evaluate.predict import predict_fold

    set_threads(args.threads)
    from bitro.folds.splits import read_folds
    from bitro.io import read_sample

    truth = None
    if args.xenium_root:
        fold = read_folds(args.folds).fold(args.fold)
        truth = {s: read_sample("xenium", args.xenium_root, s).expression for s in fold.test}
    table = predict_fold(
        args.samples_dir,
        args.model_dir,
        args.folds,
        args.fold,
        args.out_dir,
        cell_truth=truth,
        model_name=args.model_name,
        device=args.device,
    )
    log.info(
        "%s:\n%s", args.fold, table[["level", "space", "pcc_overall", "pcc_gene"]].to_string(index=False)
    )


def _cmd_baselines(args: argparse.Namespace) -> None:
    from bitro.evaluate.fold_baselines import baseline_fold
    from bitro.folds.splits import read_folds

    truth = None
    if args.truth_pattern:
        fold = read_folds(args.folds).fold(args.fold)
        samples = dict.fromkeys(fold.train + fold.validation + fold.test)
        truth = {s: Path(args.truth_pattern.format(sample=s)) for s in samples}
        missing = [p for p in truth.values() if not p.is_file()]
        if missing:
            from bitro.errors import MissingInputError

            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise MissingInputError(missing[0], f"demo truth file{more}")
    table = baseline_fold(
        args.samples_dir,
        args.folds,
        args.fold,
        args.genes,
        args.out,
        truth=truth,
        mlp_epochs=args.mlp_epochs,
        seed=args.seed,
        predictions_out=args.predictions_out,
    )
    log.info(
        "%s:\n%s", args.fold, table[["model", "space", "pcc_overall", "pcc_gene"]].to_string(index=False)
    )


def _cmd_summarise(args: argparse.Namespace) -> None:
    from bitro.evaluate.summary import summarise_cohort

    summarise_cohort(
        args.metrics,
        args.out,
        baselines=args.baselines,
        baselines_out=args.baselines_out,
        predictions=args.predictions,
        baseline_predictions=args.baseline_predictions,
    )


def register(verbs: argparse._SubParsersAction) -> None:
    """Add the evaluation verbs to the ``bitro`` parser."""
    predict = verbs.add_parser(
        "predict", help="predict a fold's test samples: predictions.h5ad, cells_pred.h5ad"
    )
    predict.add_argument("--samples-dir", required=True)
    predict.add_argument("--model-dir", required=True, help="the fold's folder with model.safetensors/.json")
    predict.add_argument("--folds", required=True)
    predict.add_argument("--fold", required=True)
    predict.add_argument(
        "--xenium-root", help="Xenium cohort root: score pseudo-cells against measured cells"
    )
    predict.add_argument("--model-name", default="bitro", help="the model column of metrics.tsv")
    predict.add_argument("--device", default="cpu")
    predict.add_argument("--threads", type=int, help="CPU threads for torch (the rule's threads)")
    predict.add_argument("--out-dir", required=True)
    predict.set_defaults(func=_cmd_predict)

    baselines = verbs.add_parser("baselines", help="fit and score the baselines on a fold: baselines.tsv")
    baselines.add_argument("--samples-dir", required=True)
    baselines.add_argument("--folds", required=True)
    baselines.add_argument("--fold", required=True)
    baselines.add_argument("--genes", required=True)
    baselines.add_argument(
        "--truth-pattern", help="demo truth h5ad per sample, with {sample} (enables the oracle)"
    )
    baselines.add_argument("--mlp-epochs", type=int, default=30)
    baselines.add_argument("--seed", type=int, default=0)
    baselines.add_argument("--out", required=True)
    baselines.add_argument("--predictions-out", help="baselines.h5ad: the test units' predictions")
    baselines.set_defaults(func=_cmd_baselines)

    summary = verbs.add_parser("summarise", help="a cohort's metrics.tsv: every fold, then mean and std")
    summary.add_argument("--metrics", nargs="+", required=True, help="each fold's metrics.tsv")
    summary.add_argument("--baselines", nargs="*", default=[], help="each fold's baselines.tsv")
    summary.add_argument("--out", required=True)
    summary.add_argument("--baselines-out")
    summary.add_argument(
        "--predictions", nargs="*", default=[], help="K-fold bulk: each fold's predictions.h5ad (out_of_fold)"
    )
    summary.add_argument("--baseline-predictions", nargs="*", default=[], help="each fold's baselines.h5ad")
    summary.set_defaults(func=_cmd_summarise)
    register_summary(verbs)


def _cmd_demo_summary(args: argparse.Namespace) -> None:
    from bitro.evaluate.summary import demo_summary

    cohorts: dict[str, tuple[str, list[Path]]] = {}
    for spec in args.cohort:
        name, protocol, *paths = spec.split(",")
        cohorts[name] = (protocol, [Path(p) for p in paths])
    table = demo_summary(cohorts, args.out)
    columns = ["cohort", "model", "level", "space", "pcc_gene", "pcc_overall", "rmse"]
    print(table[[c for c in columns if c in table]].to_string(index=False))


def _cmd_ablation_table(args: argparse.Namespace) -> None:
    from bitro.evaluate.summary import ablation_table

    cohorts = {}
    for spec in args.cohort:
        name, *paths = spec.split(",")
        cohorts[name] = [Path(p) for p in paths]
    print(ablation_table(cohorts, args.out).to_string(index=False))


def register_summary(verbs: argparse._SubParsersAction) -> None:
    """Add ``demo-summary`` to the ``bitro`` parser."""
    summary = verbs.add_parser("demo-summary", help="the demo's BiTro-vs-baselines table: demo_summary.tsv")
    summary.add_argument(
        "--cohort",
        action="append",
        required=True,
        help="NAME,PROTOCOL,TABLE[,TABLE...]: a cohort, its protocol label and its summary tables",
    )
    summary.add_argument("--out", required=True)
    summary.set_defaults(func=_cmd_demo_summary)
    table = verbs.add_parser("ablation-table", help="paper Tables 7-8 in their shape: rows configurations")
    table.add_argument(
        "--cohort", action="append", required=True, help="NAME,TABLE[,TABLE...]: a cohort and its tables"
    )
    table.add_argument("--out", required=True)
    table.set_defaults(func=_cmd_ablation_table)
