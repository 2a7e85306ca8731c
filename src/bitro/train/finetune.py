"""Fine-tuning for transfer (paper §3.5): the pretrained model on one fold of the target, full or LoRA.

Checks the pretrained model against the target (no shared patient with the fold's test samples, the
same architecture and feature width), aligns the genes by name (:func:`bitro.train.transfer.transfer_genes`),
fits the target statistics on the fold's training bags and trains through the one pipeline
(:func:`bitro.train.pipeline.train_on_fold`) from the pretrained weights: ``full``, every weight trains;
``lora``, :func:`bitro.model.lora.apply_lora` (r 8, α 16, dropout 0.05 by default) freezes the base and the
adapters, gene queries and readout train. Writes into the fold's folder ``model.safetensors``,
``model.json`` (with a ``transfer`` record: source cohort, the pretrained checkpoint's sha256, the mode,
the LoRA settings, the shared genes), ``adapter.safetensors`` (``lora``), ``train_log.csv`` and
``checkpoint/``; :func:`bitro.train.saved.load_trained` reads every kind.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

from bitro._hashing import file_sha256
from bitro.errors import InputError
from bitro.folds.inputs import load_fold, read_fold_phenotypes
from bitro.folds.splits import read_folds
from bitro.genes.normalise import TargetTransform
from bitro.genes.selection import read_gene_list
from bitro.model.lora import lora_settings
from bitro.train.config import TrainConfig, TrainResult
from bitro.train.pipeline import LoraOptions, Start, Trained, train_on_fold
from bitro.train.saved import load_model
from bitro.train.transfer import check_architecture, check_no_shared_patients, sample_patients, transfer_genes

log = logging.getLogger("bitro")

Mode = Literal["full", "lora"]
MODES: tuple[str, ...] = ("full", "lora")


def transfer_fold(
    target_samples_dir: str | Path,
    target_folds_path: str | Path,
    fold_name: str,
    target_genes_path: str | Path,
    pretrain_dir: str | Path,
    out_dir: str | Path,
    *,
    mode: Mode = "lora",
    lora: LoraOptions | None = None,
    train_config: TrainConfig | None = None,
    model_config: dict[str, Any] | None = None,
    phenotypes_path: str | Path | None = None,
    target_sheet: str | Path | None = None,
    zscore: bool = True,
    device: str = "cpu",
    progress: bool = True,
    stop_after: int | None = None,
) -> TrainResult:
    """Fine-tune the pretrained model on one fold of the target (module docstring).

    Parameters
    ----------
    target_samples_dir, target_folds_path, fold_name, target_genes_path
        The target cohort's samples, folds, fold and ``genes.txt``.
    pretrain_dir
        The folder :func:`bitro.train.pretrain.pretrain` wrote.
    out_dir
        ``results/transfer/<source>_to_<target>/<fold>``.
    mode, lora
        ``full`` or ``lora`` and the LoRA settings.
    train_config
        Fine-tuning settings.
    model_config
        The workflow's model settings; they must agree with the pretrained model's.
    phenotypes_path
        The target fold's ``phenotypes.npz`` (fitted on its training samples).
    target_sheet
        The target's sample sheet, for the patients of its test samples (else their ``targets.h5ad``).
    zscore, device, progress, stop_after
        As for :func:`bitro.train.run.train_fold`.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    out_dir, pretrain_dir = Path(out_dir), Path(pretrain_dir)
    train_config = train_config or TrainConfig()
    folds = read_folds(target_folds_path)
    fold = folds.fold(fold_name)
    pretrained, pmeta = load_model(pretrain_dir)
    record = pmeta.get("pretrain")
    if record is None:
        raise InputError(pretrain_dir / "model.json", "is not a pretrained model (no pretrain record)")
    check_no_shared_patients(
        record["patients"], sample_patients(fold.test, sheet=target_sheet, samples_dir=target_samples_dir)
    )
    if pmeta.get("features", {}).get("scope", "sample") != "sample":
        raise ValueError("transfer needs per-sample features (feature_scope: sample)")
    check_architecture(pretrained.config, model_config)
    if pretrained.config.output == "softplus" and zscore:
        raise ValueError("the pretrained model has a Softplus output, which cannot fit z-scored targets")
    target_genes = read_gene_list(target_genes_path)
    genes = transfer_genes(pmeta["genes"], target_genes)
    dropped = sorted(set(target_genes) - set(genes))
    if dropped:
        log.warning(
            "%d of the target's %d genes are not in the source: %s",
            len(dropped),
            len(target_genes),
            dropped[:10],
        )
    phenotypes = read_fold_phenotypes(phenotypes_path, fold) if phenotypes_path else None
    inputs = load_fold(target_samples_dir, fold, genes, phenotypes=phenotypes)
    width = inputs.samples[0].features.shape[1]
    if width != pretrained.config.in_dim:
        raise ValueError(
            f"the target's features have width {width}, "
            f"the pretrained model expects {pretrained.config.in_dim}"
        )
    transform = TargetTransform.fit(
        inputs.targets("train"), genes, zscore=zscore, space=inputs.samples[0].space
    )
    pretrain_sha = file_sha256(pretrain_dir / "model.safetensors")
    options = (lora or LoraOptions()) if mode == "lora" else None

    def transfer_record(trained: Trained) -> dict[str, Any]:
        settings = lora_settings(trained.model)
        return {
            "transfer": {
                "mode": mode,
                "source_cohort": record["source_cohort"],
                "source_level": record.get("source_level"),
                "target_cohort": folds.cohort,
                "pretrain_dir": str(pretrain_dir),
                "pretrain_sha256": pretrain_sha,
                "source_genes": len(pmeta["genes"]),
                "target_genes": len(target_genes),
                "shared_genes": genes,
                "dropped_target_genes": dropped,
                "lora": None if settings is None else asdict(settings),
                "trainable_parameters": trained.trainable,
            },
        }

    return train_on_fold(
        inputs,
        genes,
        transform,
        out_dir,
        label=f"{record['source_cohort']} → {folds.cohort} {fold_name} ({mode} transfer)",
        fold=fold,
        train_config=train_config,
        start=Start(model=pretrained, genes=tuple(pmeta["genes"]), lora=options),
        origin={
            "pretrain_sha256": pretrain_sha,
            "mode": mode,
            "lora": None if options is None else asdict(options),
        },
        phenotypes=phenotypes,
        record=transfer_record,
        device=device,
        progress=progress,
        stop_after=stop_after,
    )
