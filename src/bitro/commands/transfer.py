"""The transfer verbs (paper §3.5): ``transfer-pretrain`` once per pair, ``transfer`` once per fold.

``bitro transfer-pretrain`` trains on the whole source cohort into
``results/transfer/<source>_to_<target>/pretrain``; ``bitro transfer --pretrain-dir <that folder>`` fine-tunes
it on one fold of the target into ``results/transfer/<source>_to_<target>/<fold>``; ``bitro transfer-summary``
writes the run's ``metrics.tsv``, with the target's own models scored on the same genes. Settings come from
the workflow's ``model:``/``training:`` sections and an optional ``transfer:`` section::

    transfer:
      mode: lora                 # or full (--mode overrides)
      lora: {r: 8, alpha: 16, dropout: 0.05}
      pretrain: {}               # TrainConfig overrides for pretraining
      finetune: {lr: 0.001}      # TrainConfig overrides for fine-tuning
      validation_fraction: 0.2   # of the source's patients, when no source folds are given
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from bitro.commands._settings import read_settings
from bitro.commands.train import add_run_options, set_threads
from bitro.errors import ConfigError, PatientOverlapError, UsageError

log = logging.getLogger("bitro")

PARAMS_HELP = "YAML with `model:`, `training:` and `transfer:` sections"


def _train_config(settings: dict[str, Any], stage: str, max_steps: int | None) -> Any:
    from bitro.train.config import train_config_from_settings

    training = dict(settings.get("training") or {})
    if training.get("feature_scope", "sample") != "sample":
        raise ConfigError(
            "training.feature_scope",
            "transfer needs per-sample features (training.feature_scope: sample); a cohort "
            "PCA basis of the source does not describe the target's cells",
        )
    return train_config_from_settings(settings, stage=stage, max_steps=max_steps)


def _cmd_pretrain(args: argparse.Namespace) -> None:
    from bitro.train.pretrain import pretrain

    set_threads(args.threads)
    settings = read_settings(args.params, args.params_json)
    transfer = dict(settings.get("transfer", {}))
    try:
        result = pretrain(
            args.source_samples_dir,
            args.source_genes,
            args.out_dir,
            source_sheet=args.source_sheet,
            source_folds_path=args.source_folds,
            source_fold=args.source_fold,
            source_cohort=args.source_cohort,
            target_folds_path=args.target_folds,
            target_sheet=args.target_sheet,
            target_samples_dir=args.target_samples_dir,
            model_config=dict(settings.get("model", {})),
            train_config=_train_config(settings, "pretrain", args.max_steps),
            zscore=not args.no_zscore,
            phenotypes_k=int(settings.get("training", {}).get("phenotypes_k", 8)),
            validation_fraction=float(transfer.get("validation_fraction", 0.2)),
            device=args.device,
            progress=not args.quiet,
        )
    except PatientOverlapError as error:
        raise ConfigError(args.target_sheet or args.source_sheet, f"refused: {error.problem}") from error
    log.info("pretrained: best step %d of %d -> %s", result.best_step, result.steps_run, args.out_dir)


def _cmd_transfer(args: argparse.Namespace) -> None:
    from bitro.train.finetune import transfer_fold
    from bitro.train.pipeline import LoraOptions

    set_threads(args.threads)
    settings = read_settings(args.params, args.params_json)
    transfer = dict(settings.get("transfer", {}))
    mode = args.mode or transfer.get("mode", "lora")
    if mode == "none":
        raise UsageError("--mode none", "plain training, not a transfer: use `bitro train`")
    lora = dict(transfer.get("lora", {}))
    for key in ("r", "alpha", "dropout"):
        value = getattr(args, f"lora_{key}")
        if value is not None:
            lora[key] = value
    try:
        result = transfer_fold(
            args.target_samples_dir,
            args.target_folds,
            args.fold,
            args.target_genes,
            args.pretrain_dir,
            args.out_dir,
            mode=mode,
            lora=LoraOptions.from_dict(lora),
            train_config=_train_config(settings, "finetune", args.max_steps),
            model_config=dict(settings.get("model", {})),
            phenotypes_path=args.phenotypes,
            target_sheet=args.target_sheet,
            zscore=not args.no_zscore,
            device=args.device,
            progress=not args.quiet,
        )
    except PatientOverlapError as error:
        raise ConfigError(args.target_sheet or args.target_folds, f"refused: {error.problem}") from error
    log.info(
        "%s (%s transfer): best step %d of %d -> %s",
        args.fold,
        mode,
        result.best_step,
        result.steps_run,
        args.out_dir,
    )


def _cmd_summary(args: argparse.Namespace) -> None:
    from bitro.evaluate.summary import summarise_transfer

    table = summarise_transfer(
        args.metrics,
        args.out,
        predictions=args.predictions,
        references=args.reference,
        pooled=args.out_of_fold,
    )
    means = table[table["fold"] == "mean"]
    columns = ["model", "run", "genes", "level", "space", "pcc_gene", "pcc_overall"]
    log.info("%s:\n%s", args.out, means[[c for c in columns if c in means]].to_string(index=False))


def register(verbs: argparse._SubParsersAction) -> None:
    """Add ``transfer-pretrain``, ``transfer`` and ``transfer-summary`` to the ``bitro`` parser."""
    pre = verbs.add_parser(
        "transfer-pretrain",
        help="pretrain on a whole source cohort for transfer (once per source → target pair)",
    )
    pre.add_argument("--source-samples-dir", required=True, help="results/<source>/samples")
    pre.add_argument("--source-genes", required=True, help="the source's genes.txt")
    pre.add_argument("--source-sheet", help="the source's sample sheet (samples and patient_id)")
    pre.add_argument(
        "--source-folds", help="the source's folds.json: its fold's validation side validates pretraining"
    )
    pre.add_argument("--source-fold", help="which source fold gives the validation group (default: first)")
    pre.add_argument("--source-cohort", help="the source's name (default: from its folds or folder)")
    pre.add_argument(
        "--target-folds", help="the target's folds.json: no source patient may be a target test patient"
    )
    pre.add_argument("--target-sheet", help="the target's sample sheet (patient_id of its test samples)")
    pre.add_argument("--target-samples-dir", help="results/<target>/samples (patients, without a sheet)")
    add_run_options(pre, PARAMS_HELP)
    pre.add_argument("--out-dir", required=True, help="results/transfer/<source>_to_<target>/pretrain")
    pre.set_defaults(func=_cmd_pretrain)

    fine = verbs.add_parser("transfer", help="fine-tune a pretrained model on one target fold (full or LoRA)")
    fine.add_argument("--pretrain-dir", required=True, help="the folder `bitro transfer-pretrain` wrote")
    fine.add_argument("--target-samples-dir", required=True, help="results/<target>/samples")
    fine.add_argument("--target-folds", required=True, help="the target's folds.json")
    fine.add_argument("--fold", required=True)
    fine.add_argument("--target-genes", required=True, help="the target's genes.txt")
    fine.add_argument("--target-sheet", help="the target's sample sheet (patients of the test samples)")
    fine.add_argument("--phenotypes", help="the target fold's phenotypes.npz (omit: no cluster loss labels)")
    fine.add_argument("--mode", choices=("full", "lora", "none"), help="default: transfer.mode, else lora")
    fine.add_argument("--lora-r", type=int, help="LoRA rank (default 8)")
    fine.add_argument("--lora-alpha", type=int, help="LoRA alpha (default 16)")
    fine.add_argument("--lora-dropout", type=float, help="LoRA dropout (default 0.05)")
    add_run_options(fine, PARAMS_HELP)
    fine.add_argument("--out-dir", required=True, help="results/transfer/<source>_to_<target>/<fold>")
    fine.set_defaults(func=_cmd_transfer)

    summary = verbs.add_parser(
        "transfer-summary",
        help="a transfer's metrics.tsv: its folds, mean and std, and the target's own models on its genes",
    )
    summary.add_argument("--metrics", nargs="+", required=True, help="each transfer fold's metrics.tsv")
    summary.add_argument(
        "--predictions", nargs="+", required=True, help="each transfer fold's predictions.h5ad (its genes)"
    )
    summary.add_argument(
        "--reference",
        nargs="*",
        default=[],
        help="the target cohort's folds' predictions.h5ad and baselines.h5ad, re-scored on the shared genes",
    )
    summary.add_argument(
        "--out-of-fold", action="store_true", help="K-fold bulk target: add the pooled out_of_fold rows"
    )
    summary.add_argument("--out", required=True, help="results/transfer/<source>_to_<target>/metrics.tsv")
    summary.set_defaults(func=_cmd_summary)
