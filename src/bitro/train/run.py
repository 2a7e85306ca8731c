"""Train one fold of a cohort end to end, from the pipeline's files to ``model.safetensors`` + ``.json``.

Reads ``folds.json`` and ``genes.txt``, each training and validation sample's ``cells.parquet``,
``graph.npz``, ``units.parquet``, ``targets.h5ad`` and features (``features.npy`` for ``sample`` scope, or
``embeddings.npy`` projected on the fold's ``pca.npz`` for ``cohort`` scope), and the fold's
``phenotypes.npz``. Fits the target statistics on the training bags only (docs/pitfalls.md), trains
(:func:`bitro.train.fit.fit`), scores the validation bags against the training-mean predictor, and writes
into ``out_dir``: ``model.safetensors``, ``model.json`` (config, genes, target statistics, phenotype
centroids, feature scope, training settings, validation scores), ``train_log.csv`` and ``checkpoint/``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bitro.evaluate.splits import Fold, in_strips, read_folds
from bitro.features.phenotype import Phenotypes, read_phenotypes
from bitro.features.reduce import PCABasis, read_basis
from bitro.genes.normalise import TargetTransform
from bitro.genes.selection import read_gene_list
from bitro.model.batch import CellBatch, iter_chunks
from bitro.model.bitro import BiTro, BiTroConfig
from bitro.model.streaming import predict_streaming
from bitro.preprocess.units import read_units
from bitro.train.checkpoint import save_model
from bitro.train.data import Bag, SampleData, load_sample, make_bags, model_bag, sample_features
from bitro.train.fit import TrainConfig, TrainResult, fit

log = logging.getLogger("bitro")

#: Cells per chunk when a bulk slide is predicted by streaming: 20k keeps a 10⁶-cell slide at 2.9 GiB peak
#: (50k reached 4.1 GiB, mostly one chunk's GAT messages) at the same speed (benchmarks/bench_train.py).
STREAM_CELLS = 20_000


@dataclass
class FoldInputs:
    """The samples of a fold, loaded, and the bags of each role."""

    samples: list[SampleData]
    bags: dict[str, list[Bag]]


def _unit_mask(
    sample_dir: Path, fold: Fold, sample: str, role: str, *, cells: bool = False
) -> np.ndarray | None:
    """Strips (Xenium, two-group ST): which units (by id) lie wholly inside the strips of ``role``."""
    ranges = fold.ranges(sample, role)
    if ranges is None:
        return None
    units = read_units(sample_dir / "units.parquet")
    side = units["diameter_um"].to_numpy(np.float64)
    left = units["x_um"].to_numpy(np.float64) - side / 2
    return in_strips(left, ranges, width_um=float(side.max()))


def load_fold(
    samples_dir: str | Path,
    fold: Fold,
    genes: Sequence[str],
    *,
    roles: Sequence[str] = ("train", "validation"),
    scope: str = "sample",
    basis: PCABasis | None = None,
    phenotypes: Phenotypes | None = None,
) -> FoldInputs:
    """Load the samples of ``roles`` in ``fold`` and cut them into bags (strips respected for Xenium)."""
    samples_dir = Path(samples_dir)
    loaded: dict[str, int] = {}
    samples: list[SampleData] = []
    bags: dict[str, list[Bag]] = {role: [] for role in roles}
    for role in roles:
        for sample in getattr(fold, role):
            folder = samples_dir / sample
            if sample not in loaded:
                features, _ = sample_features(folder, scope=scope, basis=basis)
                loaded[sample] = len(samples)
                samples.append(load_sample(folder, genes=genes, features=features, phenotypes=phenotypes))
            mask = _unit_mask(folder, fold, sample, role)
            bags[role] += make_bags(samples[loaded[sample]], loaded[sample], unit_mask=mask)
    return FoldInputs(samples, bags)


@torch.no_grad()
def predict_bags(
    model: BiTro,
    bags: Sequence[Bag],
    samples: Sequence[SampleData],
    *,
    batch_bags: int = 64,
    device: str = "cpu",
) -> np.ndarray:
    """Model outputs (B × G, target space) for every bag, over all its units; bulk slides are streamed."""
    model.eval().to(device)
    out = np.zeros((len(bags), model.config.n_genes), dtype=np.float64)
    small = [i for i, bag in enumerate(bags) if samples[bag.sample].level != "bulk"]
    for start in range(0, len(small), batch_bags):
        chosen = small[start : start + batch_bags]
        pieces = [model_bag(bags[i], samples)[0] for i in chosen]
        prediction = model(CellBatch.collate(pieces).to(device)).prediction
        out[chosen] = prediction.float().cpu().numpy()
    for i, bag in enumerate(bags):
        if samples[bag.sample].level == "bulk":
            piece, _ = model_bag(bag, samples)
            out[i] = (
                predict_streaming(model, iter_chunks(piece, STREAM_CELLS)).prediction.float().cpu().numpy()
            )
    return out


def _pcc_gene(truth: np.ndarray, prediction: np.ndarray) -> tuple[float, int]:
    """Mean per-gene Pearson over units and the count of undefined (constant) genes; 0 when all are."""
    t = truth - truth.mean(axis=0)
    p = prediction - prediction.mean(axis=0)
    denominator = np.sqrt((t**2).sum(axis=0) * (p**2).sum(axis=0))
    defined = denominator > 0
    r = (t * p).sum(axis=0)[defined] / denominator[defined]
    return (float(r.mean()) if defined.any() else 0.0), int((~defined).sum())


def validation_scores(
    model: BiTro,
    inputs: FoldInputs,
    transform: TargetTransform,
    *,
    device: str = "cpu",
) -> dict[str, Any]:
    """Model and training-mean predictor on the validation bags, in log1p space (units × genes)."""
    bags = inputs.bags["validation"]
    truth = np.log1p(np.stack([inputs.samples[b.sample].targets[b.target_row] for b in bags]))
    predicted = transform.to_log1p(predict_bags(model, bags, inputs.samples, device=device))
    mean = np.broadcast_to(transform.mean, truth.shape)
    pcc, undefined = _pcc_gene(truth, predicted)
    return {
        "space": f"log1p {transform.space}",
        "n_units": len(bags),
        "model": {
            "pcc_gene": pcc,
            "n_undefined_genes": undefined,
            "mse": float(((predicted - truth) ** 2).mean()),
        },
        # A constant prediction has no correlation with anything: its PCC gene is undefined, scored 0.
        "training_mean": {"pcc_gene": 0.0, "mse": float(((mean - truth) ** 2).mean())},
    }


def inputs_fingerprint(
    inputs: FoldInputs,
    transform: TargetTransform,
    config: BiTroConfig,
    train_config: TrainConfig,
    scope: str,
) -> dict[str, Any]:
    """What a saved training state must match to be resumed: data, genes, statistics and settings."""
    digest = hashlib.sha256()
    for sample in inputs.samples:
        digest.update(sample.sample_id.encode())
        for array in (sample.features, sample.targets, sample.phenotype, sample.cell_rows):
            digest.update(np.ascontiguousarray(array).tobytes())
    for role in sorted(inputs.bags):
        digest.update(f"{role}:{[bag.key for bag in inputs.bags[role]]}".encode())
    record = {
        "data_sha256": digest.hexdigest(),
        "transform": transform.to_dict(),
        "model": config.to_dict(),
        # A larger budget or patience may continue a finished run; anything else starts afresh.
        "train": {
            k: v for k, v in train_config.to_dict().items() if k not in ("max_steps", "patience_steps")
        },
        "scope": scope,
    }
    return json.loads(json.dumps(record))


def fold_record(fold: Fold) -> dict[str, Any]:
    """A fold as ``model.json`` records it: its samples per role and, where it has them, its strips."""
    record: dict[str, Any] = {
        "name": fold.name,
        "train": fold.train,
        "validation": fold.validation,
        "test": fold.test,
    }
    if fold.strips:
        record["strips"] = fold.strips
    return record


def model_metadata(
    genes: Sequence[str],
    transform: TargetTransform,
    phenotypes: Phenotypes | None,
    features: dict[str, Any],
    fold: Fold,
    train_config: TrainConfig,
    result: TrainResult,
    scores: dict[str, Any],
) -> dict[str, Any]:
    """What every trained model's ``model.json`` records (docs/formats.md): genes, target statistics,
    phenotype centroids, feature scope, fold, settings, how training ended and the validation scores.
    Pretraining and fine-tuning add their own key beside these."""
    return {
        "genes": list(genes),
        "transform": transform.to_dict(),
        "phenotypes": None
        if phenotypes is None
        else {"centroids": phenotypes.centroids.tolist(), "train_samples": list(phenotypes.train_samples)},
        "features": features,
        "fold": fold_record(fold),
        "train": train_config.to_dict(),
        "result": result.to_dict(),
        "validation": scores,
    }


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
    """Train the model of one fold (module docstring) and write it into ``out_dir``."""
    out_dir = Path(out_dir)
    train_config = train_config or TrainConfig()
    torch.manual_seed(train_config.seed)
    fold = read_folds(folds_path).fold(fold_name)
    genes = read_gene_list(genes_path)
    basis = read_basis(basis_path) if basis_path else None
    phenotypes = read_phenotypes(phenotypes_path) if phenotypes_path else None
    if phenotypes is not None and set(phenotypes.train_samples) != set(fold.train):
        raise ValueError(
            f"{phenotypes_path}: phenotypes were fitted on other samples than {fold_name}'s training set"
        )
    inputs = load_fold(samples_dir, fold, genes, scope=scope, basis=basis, phenotypes=phenotypes)
    train_rows = np.stack([inputs.samples[b.sample].targets[b.target_row] for b in inputs.bags["train"]])
    space = inputs.samples[0].space
    transform = TargetTransform.fit(train_rows, genes, zscore=zscore, space=space)
    settings = dict(model_config or {})
    settings.setdefault("output", "identity" if zscore else "softplus")
    config = BiTroConfig(n_genes=len(genes), in_dim=inputs.samples[0].features.shape[1], **settings)
    model = BiTro(config)
    log.info(
        "%s: %d training and %d validation bags, %d genes, %d parameters",
        fold_name,
        len(inputs.bags["train"]),
        len(inputs.bags["validation"]),
        len(genes),
        sum(p.numel() for p in model.parameters()),
    )
    result = fit(
        model,
        inputs.bags["train"],
        inputs.bags["validation"],
        inputs.samples,
        transform,
        train_config,
        out_dir,
        device=device,
        progress=progress,
        stop_after=stop_after,
        fingerprint=inputs_fingerprint(inputs, transform, config, train_config, scope),
    )
    if not result.completed:
        return result  # as if killed: no model is written until the run ends
    scores = validation_scores(model, inputs, transform, device=device)
    features = {"scope": scope, "basis": str(basis_path) if basis_path else None}
    metadata = model_metadata(genes, transform, phenotypes, features, fold, train_config, result, scores)
    save_model(model, metadata, out_dir)
    log.info("%s: validation %s", fold_name, json.dumps(scores))
    return result
