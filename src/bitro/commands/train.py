"""The ``train`` verb: one fold of one cohort."""

from __future__ import annotations

import argparse
import logging

log = logging.getLogger("bitro")


def set_threads(threads: int | None) -> None:
    """Pin torch to the threads the scheduler granted: more threads than cores slow it down many times."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def _cmd_train(args: argparse.Namespace) -> None:
    from bitro.commands._settings import read_settings
    from bitro.train.config import train_config_from_settings
    from bitro.train.run import train_fold

    set_threads(args.threads)
    settings = read_settings(args.params, args.params_json)
    model_config = dict(settings.get("model", {}))
    config = train_config_from_settings(settings, max_steps=args.max_steps)
    result = train_fold(
        args.samples_dir,
        args.folds,
        args.fold,
        args.genes,
        args.out_dir,
        model_config=model_config,
        train_config=config,
        scope=args.scope,
        basis_path=args.basis,
        phenotypes_path=args.phenotypes,
        zscore=not args.no_zscore,
        device=args.device,
        progress=not args.quiet,
    )
    log.info("%s: best step %d of %d -> %s", args.fold, result.best_step, result.steps_run, args.out_dir)


def add_run_options(parser: argparse.ArgumentParser, params_help: str) -> None:
    """The options every training verb takes: settings, step budget, target scaling, device, threads."""
    parser.add_argument("--params", help=params_help)
    parser.add_argument("--params-json", help="the same as --params, inline as JSON")
    parser.add_argument("--max-steps", type=int, help="override the step budget")
    parser.add_argument(
        "--no-zscore", action="store_true", help="the 'w/o Norm.' ablation: log1p targets only"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (the rule's threads)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def register(verbs: argparse._SubParsersAction) -> None:
    """Add ``train`` to the ``bitro`` parser."""
    train = verbs.add_parser("train", help="train BiTro on one fold: model.safetensors + model.json")
    train.add_argument("--samples-dir", required=True, help="results/<cohort>/samples")
    train.add_argument("--folds", required=True, help="folds.json")
    train.add_argument("--fold", required=True)
    train.add_argument("--genes", required=True, help="genes.txt")
    train.add_argument("--phenotypes", help="the fold's phenotypes.npz (omit to train without cluster loss)")
    train.add_argument(
        "--scope", choices=("sample", "cohort"), default="sample", help="PCA scope of the features"
    )
    train.add_argument("--basis", help="the fold's pca.npz (cohort scope)")
    add_run_options(train, "YAML with `model:` and `training:` sections (the workflow's config)")
    train.add_argument("--out-dir", required=True, help="the fold's folder")
    train.set_defaults(func=_cmd_train)
