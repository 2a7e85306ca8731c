"""Train one fold of a cohort from scratch, from the pipeline's files to ``model.safetensors`` + ``.json``.

Reads ``folds.json`` and ``genes.txt``, each training and validation sample's ``cells.parquet``,
``graph.npz``, ``units.parquet``, ``targets.h5ad`` and features (``features.npy`` for ``sample`` scope, or
``embeddings.npy`` projected on the fold's ``pca.npz`` for ``cohort`` scope), and the fold's
``phenotypes.npz``. Fits the target statistics on the training bags only and trains through
the one pipeline (:func:`bitro.train.pipeline.train_on_fold`), which writes into ``out_dir``:
``model.safetensors``, ``model.json`` (config, genes, target statistics, phenotype centroids, feature
scope, training settings, validation scores), ``train_log.csv`` and ``checkpoint/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bitro.features.reduce import read_basis
from bitro.folds.inputs import load_fold, read_fold_phenotypes
from bitro.folds.splits import read_folds
from bitro.genes.normalise import TargetTransform
from bitro.genes.selection import read_gene_list
from bitro.train.config import TrainConfig, TrainResult
from bitro.train.pipeline import fresh_config, train_on_fold

__all__ = ["train_fold"]


def train_fold(
    samples_dir: str | Path,
    folds_path: str | Path,
    fold_name: str,
    genes_path: str | Path,
    out_dir: str | Path,
    *,
    model_config: dict[str, Any] | None = None,
    train_config: TrainConfig | None = None,
    scope: str = "sample",
    basis_path: str | Path | None = None,
    phenotypes_path: str | Path | None = None,
    zscore: bool = True,
    device: str = "cpu",
    progress: bool = True,
    stop_after: int | None = None,
) -> TrainResult:
    """Train the model of one fold (module docstring) and write it into ``out_dir``.

    ``stop_after`` ends the run at the first check at or after that many steps, as a kill would (no
    model is written; the next run resumes).
    """
    train_config = train_config or TrainConfig()
    fold = read_folds(folds_path).fold(fold_name)
    genes = read_gene_list(genes_path)
    basis = read_basis(basis_path) if basis_path else None
    phenotypes = read_fold_phenotypes(phenotypes_path, fold) if phenotypes_path else None
    inputs = load_fold(samples_dir, fold, genes, scope=scope, basis=basis, phenotypes=phenotypes)
    space = inputs.samples[0].space
    transform = TargetTransform.fit(inputs.targets("train"), genes, zscore=zscore, space=space)
    config = fresh_config(model_config, len(genes), inputs.samples[0].features.shape[1], zscore=zscore)
    return train_on_fold(
        inputs,
        genes,
        transform,
        Path(out_dir),
        label=fold_name,
        fold=fold,
        train_config=train_config,
        model_config=config,
        phenotypes=phenotypes,
        features={"scope": scope, "basis": str(basis_path) if basis_path else None},
        device=device,
        progress=progress,
        stop_after=stop_after,
    )
