"""Pretraining for transfer (paper §3.5, step 1): one model on the whole source cohort, once per pair.

Validates on a group carved out of the source (:func:`bitro.train.transfer.pretraining_fold`), refuses a
source that shares a patient with a test sample of the target
(:func:`bitro.train.transfer.check_no_shared_patients`), fits the phenotypes of the cluster loss on the
pretraining samples, and trains through the one pipeline (:func:`bitro.train.pipeline.train_on_fold`).
Writes into its folder ``phenotypes.npz`` (with the cluster loss), ``model.safetensors``, ``model.json``
(with a ``pretrain`` record: source cohort and level, samples and patients, validation group, target
cohort), ``train_log.csv`` and ``checkpoint/``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from bitro.features.phenotype import Phenotypes, fit_phenotypes, write_phenotypes
from bitro.folds.inputs import load_fold
from bitro.folds.splits import read_folds
from bitro.genes.normalise import TargetTransform
from bitro.genes.selection import read_gene_list
from bitro.io.validate import require_file
from bitro.train.config import TrainConfig, TrainResult
from bitro.train.pipeline import fresh_config, train_on_fold
from bitro.train.transfer import check_no_shared_patients, cohort_samples, pretraining_fold, sample_patients

log = logging.getLogger("bitro")


def pretrain(
    source_samples_dir: str | Path,
    source_genes_path: str | Path,
    out_dir: str | Path,
    *,
    source_sheet: str | Path | None = None,
    source_folds_path: str | Path | None = None,
    source_fold: str | None = None,
    source_cohort: str | None = None,
    target_folds_path: str | Path | None = None,
    target_sheet: str | Path | None = None,
    target_samples_dir: str | Path | None = None,
    model_config: dict[str, Any] | None = None,
    train_config: TrainConfig | None = None,
    zscore: bool = True,
    phenotypes_k: int = 8,
    validation_fraction: float = 0.2,
    device: str = "cpu",
    progress: bool = True,
    stop_after: int | None = None,
) -> TrainResult:
    """Pretrain on the whole source cohort (module docstring) and write it into ``out_dir``.

    Parameters
    ----------
    source_samples_dir, source_genes_path
        ``results/<source>/samples`` and the source's ``genes.txt``.
    out_dir
        ``results/transfer/<source>_to_<target>/pretrain``: ``model.safetensors``, ``model.json`` (with a
        ``pretrain`` record: source cohort, samples and patients), ``phenotypes.npz``, ``train_log.csv``.
    source_sheet, source_folds_path, source_fold, source_cohort
        The source's sample sheet (its samples and patients), its folds (which validation group), the fold
        whose validation side validates (default: the first), and its name (default: from the folds, else
        the parent of the samples folder).
    target_folds_path, target_sheet, target_samples_dir
        The target's folds and patients: no pretraining sample may share a patient with a test sample of
        any target fold (:class:`~bitro.train.transfer.PatientOverlapError`). Without target folds, only
        each fine-tuning checks.
    model_config, train_config, zscore
        As for :func:`bitro.train.run.train_fold`.
    phenotypes_k
        Phenotypes fitted on the pretraining samples (when the cluster loss is on).
    validation_fraction
        Share of the source's patients that validates when no folds are given.
    device, progress, stop_after
        As for :func:`bitro.train.run.train_fold`.
    """
    source_samples_dir, out_dir = Path(source_samples_dir), Path(out_dir)
    train_config = train_config or TrainConfig()
    folds = read_folds(source_folds_path) if source_folds_path else None
    samples = cohort_samples(source_samples_dir, source_sheet, folds)
    patients = sample_patients(samples, sheet=source_sheet, samples_dir=source_samples_dir)
    cohort = source_cohort or (folds.cohort if folds is not None else source_samples_dir.parent.name)
    target_cohort = None
    if target_folds_path:
        target = read_folds(target_folds_path)
        target_cohort = target.cohort
        tests = sorted({s for fold in target.folds for s in fold.test})
        check_no_shared_patients(
            patients, sample_patients(tests, sheet=target_sheet, samples_dir=target_samples_dir)
        )
    else:
        log.warning("no target folds given: patient overlap is checked by each fine-tuning only")
    fold = pretraining_fold(
        patients,
        folds=folds,
        fold_name=source_fold,
        validation_fraction=validation_fraction,
        seed=train_config.seed,
    )
    genes = read_gene_list(source_genes_path)
    phenotypes: Phenotypes | None = None
    if train_config.lambda_cluster > 0:
        features = {
            s: np.load(require_file(source_samples_dir / s / "features.npy", "cell features"))
            for s in fold.train
        }
        phenotypes = fit_phenotypes(features, fold.train, k=phenotypes_k, seed=train_config.seed)
        out_dir.mkdir(parents=True, exist_ok=True)
        write_phenotypes(phenotypes, out_dir / "phenotypes.npz")
    inputs = load_fold(source_samples_dir, fold, genes, phenotypes=phenotypes)
    transform = TargetTransform.fit(
        inputs.targets("train"), genes, zscore=zscore, space=inputs.samples[0].space
    )
    config = fresh_config(model_config, len(genes), inputs.samples[0].features.shape[1], zscore=zscore)
    levels = sorted({s.level for s in inputs.samples})
    record = {
        "pretrain": {
            "source_cohort": cohort,
            "source_level": levels[0] if len(levels) == 1 else levels,
            "patients": patients,
            "validation_from": f"{folds.cohort} {source_fold or folds.folds[0].name}"
            if folds
            else "patients",
            "target_cohort": target_cohort,
        },
    }
    return train_on_fold(
        inputs,
        genes,
        transform,
        out_dir,
        label=f"pretraining on {cohort}",
        fold=fold,
        train_config=train_config,
        model_config=config,
        phenotypes=phenotypes,
        record=lambda _: record,
        device=device,
        progress=progress,
        stop_after=stop_after,
    )
