"""One model on one fold with one seed: BiTro variants, baselines, floors and the permutation null.

Every run predicts the fold's test units in log1p of the cohort's space (spot counts, slide TPM) and
records its validation MSE (log1p, on the fold's validation samples), which is all that model selection
sees. BiTro and its variants train through :func:`bitro.train.fit.fit`, the loop the workflow uses;
the baselines are :mod:`bitro.evaluate.baselines`. Results are cached per run as ``.npz`` + ``.json``
under the benchmark's folder, so an interrupted benchmark resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import Ridge

from bitro._atomic import atomic_path
from bitro.accuracy.data import BenchFold, patient_folds, sample_data
from bitro.accuracy.stats import pcc_gene_by_sample
from bitro.demo.virtual import VirtualCohort, VirtualConfig, bulk_cohort, st_cohort
from bitro.errors import ConfigError
from bitro.evaluate.baselines import HestProbe, MLPBaseline, OracleComposition, TrainingMean
from bitro.features.phenotype import fit_phenotypes
from bitro.folds.bags import Bag, collate, make_bags, predict_bags
from bitro.folds.samples import SampleData
from bitro.genes.normalise import TargetTransform
from bitro.model.bitro import BiTro, BiTroConfig
from bitro.train.config import TrainConfig, TrainResult
from bitro.train.fit import CountSpace, batch_loss, fit

log = logging.getLogger("bitro")

#: BiTro's ablations (paper Tables 7-8 and the issue's list): overrides of the model and training.
VARIANTS: dict[str, dict[str, dict[str, Any]]] = {
    "bitro": {},
    # The paper's model exactly: eq. 9's one readout shared by every gene, no density input, and the
    # pooled representations read as they come.
    "paper_readout": {"model": {"readout": "shared", "density_input": False, "pooled_norm": False}},
    "no_gat": {"model": {"gat_layers": 0}},
    "no_transformer": {"model": {"transformer_layers": 0}},
    "mean_pool": {"model": {"pooling": "mean"}},
    # Slide-level context (paper §3.3 for bulk): a Transformer over each bag's patch tokens.
    "bitro_context": {"model": {"slide_context": "patch_tokens"}},
    # Without the standardised pooling (the default until the ST and transfer round; docs/accuracy.md).
    "no_pooled_norm": {"model": {"pooled_norm": False}},
    # Three times the ST training budget (the ST round: BiTro's best step sat near its 600-step end).
    "bitro_long": {"training": {"max_steps": 1800, "patience_steps": 600}},
    "no_cluster": {"training": {"lambda_cluster": 0.0}},
    "no_zscore": {"zscore": False},
    "permutation_null": {"permute": True},
}
#: Baselines that take the MLP's tuned settings.
MLP_MODELS = ("mlp", "mlp_count")
#: Models that need no training seed (one run per fold).
DETERMINISTIC = ("training_mean", "hest_probe", "oracle", "cell_count")


@dataclass(frozen=True)
class CohortSpec:
    """How the benchmark draws a cohort and splits it (``config/accuracy.yaml``)."""

    level: str
    n_patients: int
    grid: tuple[int, int]
    n_folds: int
    validation_fraction: float
    sections_per_patient: int = 1
    seed: int = 0
    generator: dict[str, Any] = field(default_factory=dict)
    #: A learning-curve point: each fold trains on ``train_patients × (n_folds − 1) / n_folds`` patients
    #: of its training pool, as a cohort of ``train_patients`` would; test patients never change
    #: (:func:`folds`). None: the whole pool.
    train_patients: int | None = None

    def key(self) -> str:
        """The cohort's identity (what is drawn); ``train_patients`` only changes the folds."""
        return json.dumps(
            [self.level, self.n_patients, self.grid, self.sections_per_patient, self.seed, self.generator],
            sort_keys=True,
        )


@cache
def _cohort(key: str) -> VirtualCohort:
    level, n_patients, grid, sections, seed, generator = json.loads(key)
    config = VirtualConfig(seed=seed, **generator)
    if level == "st":
        return st_cohort(config, n_patients=n_patients, sections_per_patient=sections, grid=tuple(grid))
    return bulk_cohort(config, n_patients=n_patients, grid=tuple(grid))


def cohort(spec: CohortSpec) -> VirtualCohort:
    """The spec's cohort, drawn once per process."""
    return _cohort(spec.key())


@cache
def _fingerprint(key: str) -> str:
    vc = _cohort(key)
    digest = hashlib.sha256(json.dumps([vc.genes, vc.effect_of_gene], sort_keys=True).encode())
    for s in vc.samples:
        digest.update(json.dumps([s.sample_id, s.patient_id, s.level]).encode())
        for array in (
            s.features,
            s.cell_type,
            s.cell_xy_um,
            s.cell_offsets,
            s.unit_xy_um,
            s.segregated,
            s.counts,
            s.expected,
        ):
            array = np.ascontiguousarray(array)
            digest.update(f"{array.dtype.str}{array.shape}".encode())
            digest.update(array.tobytes())
    return digest.hexdigest()


def cohort_fingerprint(spec: CohortSpec) -> str:
    """SHA-256 of what the spec's cohort holds (genes, effects, and every sample's cells, units, counts
    and expectations): a cached run counts only for the very data it was made from, whatever the
    generator's code did in between."""
    return _fingerprint(spec.key())


def folds(spec: CohortSpec, n_patients: int | None = None) -> list[BenchFold]:
    """The spec's patient folds (over the first ``n_patients`` patients when given, for learning curves)."""
    samples = cohort(spec).samples
    patients = [s.patient_id for s in samples]
    if n_patients is not None:
        keep = sorted(set(patients))[:n_patients]
        patients = [p if p in keep else f"~{p}" for p in patients]
    out = patient_folds(
        [p for p in patients if not p.startswith("~")],
        n_folds=spec.n_folds,
        validation_fraction=spec.validation_fraction,
        seed=spec.seed,
    )
    if spec.train_patients is not None:
        out = [subsample_fold(fold, patients, spec, k) for k, fold in enumerate(out)]
    return out


def subsample_fold(fold: BenchFold, patients: Sequence[str], spec: CohortSpec, k: int) -> BenchFold:
    """Fold ``k`` trained on ``round(train_patients × (n_folds − 1) / n_folds)`` patients of its training
    pool (training and validation patients), split again into training and validation with the spec's
    fraction; the test patients stay. Subsets are nested: a smaller curve point keeps a prefix of the
    same seeded order. When the pool is no larger, the fold is returned unchanged.
    """
    assert spec.train_patients is not None
    pool = sorted({patients[i] for i in (*fold.train, *fold.validation)})
    size = round(spec.train_patients * (spec.n_folds - 1) / spec.n_folds)
    if size >= len(pool):
        return fold
    if size < 2:
        raise ConfigError("train_patients", f"{spec.train_patients} patients leave a fold with fewer than 2")
    keep = [str(p) for p in np.random.default_rng([spec.seed, 7, k]).permutation(pool)[:size]]
    n_validation = max(1, round(spec.validation_fraction * size))
    validation, train = set(keep[:n_validation]), set(keep[n_validation:])
    return BenchFold(
        f"{fold.name}_n{spec.train_patients}",
        tuple(i for i in (*fold.train, *fold.validation) if patients[i] in train),
        tuple(i for i in (*fold.train, *fold.validation) if patients[i] in validation),
        fold.test,
    )


@dataclass
class RunResult:
    """Test predictions (units × genes, log1p) and what the run learnt about itself."""

    prediction: np.ndarray
    validation_mse: float
    info: dict[str, Any] = field(default_factory=dict)


def truth(spec: CohortSpec, fold: BenchFold) -> tuple[np.ndarray, np.ndarray]:
    """log1p test targets of ``fold`` (units in sample order) and each unit's sample index."""
    samples = cohort(spec).samples
    rows = [np.log1p(samples[i].counts) for i in fold.test]
    groups = np.concatenate([np.full(len(r), i) for i, r in zip(fold.test, rows, strict=True)])
    return np.concatenate(rows), groups


def _unit_table(spec: CohortSpec, indices: Sequence[int]) -> dict[str, np.ndarray]:
    """Per unit (ST) or slide (bulk): mean embedding, composition, cell count, log1p target, sample."""
    table: dict[str, list[np.ndarray]] = {
        k: [] for k in ("embedding", "composition", "n_cells", "y", "sample")
    }
    for i in indices:
        sample = cohort(spec).samples[i]
        sizes = np.diff(sample.cell_offsets)
        unit = np.repeat(np.arange(sample.n_units), sizes)
        embedding = np.zeros((sample.n_units, sample.features.shape[1]))
        np.add.at(embedding, unit, sample.features)
        embedding /= sizes[:, None]
        composition = sample.composition()
        n_cells = sizes.astype(np.float64)
        if sample.level == "bulk":  # one row per slide: its cells' mean and composition, its total
            embedding = (embedding * sizes[:, None]).sum(0, keepdims=True) / sizes.sum()
            composition = (composition * sizes[:, None]).sum(0, keepdims=True) / sizes.sum()
            n_cells = np.array([sizes.sum()], dtype=np.float64)
        table["embedding"].append(embedding)
        table["composition"].append(composition)
        table["n_cells"].append(n_cells)
        table["y"].append(np.log1p(sample.counts))
        table["sample"].append(np.full(len(n_cells), i))
    return {k: np.concatenate(v) for k, v in table.items()}


def run_baseline(
    spec: CohortSpec, fold: BenchFold, model: str, seed: int, options: dict[str, Any]
) -> RunResult:
    """A baseline fitted on the fold's training units (validation units for the MLP's early stopping).

    ``training_mean``, ``hest_probe`` (PCA 256 + Ridge), ``mlp`` (``options``: lr, dropout, epochs),
    ``mlp_count`` (the same MLP, with the unit's log cell count as one more input, as BiTro's density
    input gives it), ``oracle`` (Ridge on the true composition) and ``cell_count`` (Ridge on the unit's
    number of cells and its logarithm: the density floor).
    """
    train = _unit_table(spec, fold.train)
    validation = _unit_table(spec, fold.validation)
    test = _unit_table(spec, fold.test)
    for table in (train, validation, test):
        table["embedding_count"] = np.column_stack([table["embedding"], np.log(table["n_cells"])])
    if model == "training_mean":
        estimator: Any = TrainingMean()
        x = "embedding"
    elif model == "hest_probe":
        estimator, x = HestProbe(seed=seed), "embedding"
    elif model == "oracle":
        estimator, x = OracleComposition(), "composition"
    elif model in ("mlp", "mlp_count"):
        estimator = MLPBaseline(
            seed=seed,
            lr=float(options.get("lr", 1e-3)),
            dropout=float(options.get("dropout", 0.0)),
            max_epochs=int(options.get("epochs", 100)),
            patience=int(options.get("patience", 10)),
        )
        x = "embedding" if model == "mlp" else "embedding_count"
    elif model == "cell_count":
        features = {
            role: np.column_stack([t["n_cells"], np.log(t["n_cells"])])
            for role, t in (("train", train), ("validation", validation), ("test", test))
        }
        ridge = Ridge(alpha=1e-3).fit(features["train"], train["y"])
        return RunResult(
            ridge.predict(features["test"]),
            float(((ridge.predict(features["validation"]) - validation["y"]) ** 2).mean()),
        )
    else:
        raise ValueError(f"unknown baseline {model!r}")
    if model in ("mlp", "mlp_count"):  # early stopping on the fold's own validation units, as BiTro's
        estimator.fit(train[x], train["y"], validation=(validation[x], validation["y"]))
    else:
        estimator.fit(train[x], train["y"])
    return RunResult(
        np.asarray(estimator.predict(test[x]), dtype=np.float64),
        float(((estimator.predict(validation[x]) - validation["y"]) ** 2).mean()),
        {"best_epoch": getattr(estimator, "best_epoch_", None)},
    )


def _permuted(sample: SampleData, rng: np.random.Generator) -> SampleData:
    """The null: ``sample`` with its target rows permuted among its units (a bulk slide is unchanged)."""
    if len(sample.targets) < 2:
        return sample
    return SampleData(**{**sample.__dict__, "targets": sample.targets[rng.permutation(len(sample.targets))]})


def _attention_entropy(model: BiTro, bags: Sequence[Bag], samples: Sequence[SampleData]) -> float:
    """Mean over genes and bags of the MIL attention's entropy over the bag's cells / log(cells).

    1 is uniform attention (mean pooling); 0 is attention on one cell. Bags of one cell are skipped.
    """
    batch, _, _ = collate(list(bags)[:256], samples)
    with torch.no_grad():
        attention = model(batch).attention.double()
    sizes = batch.bag_sizes
    entropy = torch.zeros(len(sizes), attention.shape[1], dtype=torch.float64)
    entropy.index_add_(0, batch.cell_bag, -(attention * attention.clamp_min(1e-30).log()))
    keep = sizes > 1
    return float((entropy[keep] / sizes[keep].double().log()[:, None]).mean())


def _gradient_norms(
    model: BiTro,
    bags: Sequence[Bag],
    samples: Sequence[SampleData],
    transform: TargetTransform,
    config: TrainConfig,
) -> dict[str, float]:
    """Gradient norm of each block on one training batch of the trained model."""
    model.train()
    counts = CountSpace(transform, "cpu")
    loss, _ = batch_loss(
        model,
        list(bags)[: config.batch_bags],
        samples,
        transform,
        counts,
        config,
        device="cpu",
        rng=np.random.default_rng(0),
    )
    model.zero_grad()
    loss.backward()
    norms: dict[str, float] = {}
    for name, parameter in model.named_parameters():
        if parameter.grad is not None:
            block = ".".join(name.split(".")[:2])
            norms[block] = norms.get(block, 0.0) + float(parameter.grad.pow(2).sum())
    model.zero_grad()
    model.eval()
    return {block: value**0.5 for block, value in sorted(norms.items())}


@dataclass
class Prepared:
    """A fold of a virtual cohort as BiTro trains on it: samples, bags per role, target statistics."""

    samples: list[SampleData]
    bags: dict[str, list[Bag]]
    transform: TargetTransform
    model_config: BiTroConfig
    train_config: TrainConfig
    genes: list[str]


def prepare(
    spec: CohortSpec,
    fold: BenchFold,
    variant: str,
    seed: int,
    settings: dict[str, Any],
    genes: Sequence[str] | None = None,
) -> Prepared:
    """Seed torch with ``seed``, fit the phenotypes on the fold's training samples, cut the bags of every
    role and fit the target statistics on the training bags; ``genes`` (default: the cohort's) selects
    and orders the target columns (a transfer's shared genes)."""
    overrides = VARIANTS[variant]
    vc = cohort(spec)
    genes = list(vc.genes if genes is None else genes)
    model_config, train_config = resolved_configs(spec, variant, seed, settings, n_genes=len(genes))
    columns = [vc.genes.index(g) for g in genes]
    torch.manual_seed(seed)
    train_ids = [vc.samples[i].sample_id for i in fold.train]
    phenotypes = fit_phenotypes(
        {vc.samples[i].sample_id: vc.samples[i].features for i in fold.train},
        train_ids,
        k=int(settings.get("phenotypes_k", 8)),
        seed=seed,
    )
    roles = {"train": fold.train, "validation": fold.validation, "test": fold.test}
    order = [i for role in ("train", "validation", "test") for i in roles[role]]
    position = {i: p for p, i in enumerate(order)}
    samples = [sample_data(vc.samples[i], phenotypes) for i in order]
    if columns != list(range(len(vc.genes))):
        samples = [SampleData(**{**s.__dict__, "targets": s.targets[:, columns]}) for s in samples]
    if overrides.get("permute"):
        rng = np.random.default_rng([seed, 4242])
        samples = [
            _permuted(s, rng) if i not in fold.test else s for s, i in zip(samples, order, strict=True)
        ]
    bags = {
        role: [b for i in roles[role] for b in make_bags(samples[position[i]], position[i])] for role in roles
    }
    train_rows = np.stack([samples[b.sample].targets[b.target_row] for b in bags["train"]])
    zscore = bool(overrides.get("zscore", True))
    transform = TargetTransform.fit(train_rows, genes, zscore=zscore, space=samples[0].space)
    return Prepared(samples, bags, transform, model_config, train_config, genes)


def resolved_configs(
    spec: CohortSpec, variant: str, seed: int, settings: dict[str, Any], *, n_genes: int | None = None
) -> tuple[BiTroConfig, TrainConfig]:
    """The model and training configs a BiTro run of ``variant`` is made with: ``settings`` (``model``
    and ``training``), the variant's overrides and the library's defaults for everything else.
    ``n_genes`` defaults to the cohort's."""
    overrides = VARIANTS[variant]
    vc = cohort(spec)
    model_settings = dict(settings.get("model", {})) | overrides.get("model", {})
    model_settings.setdefault("output", "identity" if overrides.get("zscore", True) else "softplus")
    train_settings = dict(settings.get("training", {})) | overrides.get("training", {}) | {"seed": seed}
    config = BiTroConfig(
        n_genes=len(vc.genes) if n_genes is None else n_genes,
        in_dim=vc.samples[0].features.shape[1],
        **model_settings,
    )
    return config, TrainConfig(**train_settings)


def configs_record(model_config: BiTroConfig, train_config: TrainConfig) -> dict[str, Any]:
    """The two configs as plain JSON values (a run's provenance)."""
    return json.loads(
        json.dumps({"model": asdict(model_config), "training": asdict(train_config)}, default=str)
    )


def describe(
    model: BiTro, prepared: Prepared, result: TrainResult, seconds: float
) -> tuple[np.ndarray, float, dict[str, Any]]:
    """Test predictions (log1p, the prepared genes), validation MSE and the run's diagnostics."""
    samples, bags, transform, train_config = (
        prepared.samples,
        prepared.bags,
        prepared.transform,
        prepared.train_config,
    )
    validation_truth = np.log1p(
        np.stack([samples[b.sample].targets[b.target_row] for b in bags["validation"]])
    )
    validation_pred = transform.to_log1p(predict_bags(model, bags["validation"], samples))
    test_pred = transform.to_log1p(predict_bags(model, bags["test"], samples)) if bags["test"] else None
    history = result.history
    validation_groups = np.array([b.sample for b in bags["validation"]])
    info = {
        "validation_pcc_gene": float(
            np.nanmean(pcc_gene_by_sample(validation_truth, validation_pred, validation_groups))
        ),
        "train": result.to_dict(),
        "seconds": seconds,
        "history": history,
        "cluster_share": float(
            np.mean(
                [
                    train_config.lambda_cluster * h.get("train_cluster", 0.0) / max(h["train_total"], 1e-12)
                    for h in history
                ]
            )
        ),
        "attention_entropy": _attention_entropy(model, bags["validation"], samples),
        "gradient_norms": _gradient_norms(model, bags["train"], samples, transform, train_config),
        "model_config": prepared.model_config.to_dict(),
        "train_config": train_config.to_dict(),
    }
    validation_mse = float(((validation_pred - validation_truth) ** 2).mean())
    return (
        np.zeros((0, len(prepared.genes))) if test_pred is None else test_pred,
        validation_mse,
        info,
    )


def run_bitro(
    spec: CohortSpec,
    fold: BenchFold,
    variant: str,
    seed: int,
    settings: dict[str, Any],
    work_dir: Path,
) -> RunResult:
    """BiTro (or a :data:`VARIANTS` entry) trained on the fold with ``seed``; ``settings`` holds
    ``model`` and ``training`` overrides (the tuned lr and dropout among them) and ``phenotypes_k``."""
    prepared = prepare(spec, fold, variant, seed, settings)
    model = BiTro(prepared.model_config)
    started = time.perf_counter()
    result = fit(
        model,
        prepared.bags["train"],
        prepared.bags["validation"],
        prepared.samples,
        prepared.transform,
        prepared.train_config,
        work_dir,
        progress=False,
        fingerprint=run_fingerprint(spec, fold.name, variant, settings, seed),
    )
    prediction, validation_mse, info = describe(model, prepared, result, time.perf_counter() - started)
    return RunResult(prediction, validation_mse, info)


def run_fingerprint(spec: CohortSpec, fold: str, model: str, settings: dict[str, Any], seed: int) -> dict:
    """What a run's work folder must have been made for to be resumed (an interrupted run resumes only
    as the same run), in the form JSON gives back."""
    return json.loads(
        json.dumps({"spec": spec.key(), "fold": fold, "model": model, "settings": settings, "seed": seed})
    )


def _beside(path: Path, suffix: str) -> Path:
    """``path`` with ``suffix`` appended (run names hold dots, e.g. ``lr0.001``)."""
    return path.with_name(path.name + suffix)


def _plain(settings: dict[str, Any] | None) -> Any:
    return json.loads(json.dumps(settings or {}, sort_keys=True))


def save_run(
    result: RunResult,
    path: Path,
    settings: dict[str, Any] | None = None,
    provenance: dict[str, Any] | None = None,
) -> None:
    """``path``.npy (prediction) and ``path``.json (validation MSE, info, the run's settings and its
    provenance: what it was made from, e.g. the cohort's fingerprint and the resolved configs), each
    written atomically (the JSON last, so a run counts as finished only once both are there)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(_beside(path, ".npy")) as tmp, tmp.open("wb") as handle:
        np.save(handle, result.prediction)
    record = {
        "validation_mse": result.validation_mse,
        "settings": _plain(settings),
        "provenance": _plain(provenance),
        "info": result.info,
    }
    with atomic_path(_beside(path, ".json")) as tmp:
        Path(tmp).write_text(json.dumps(record, default=float))


def load_run(
    path: Path, settings: dict[str, Any] | None = None, provenance: dict[str, Any] | None = None
) -> RunResult | None:
    """A cached run made with ``settings`` from ``provenance``, or None when there is none: not
    finished, made with other settings (e.g. before a cohort was tuned anew), or from other data or
    configs (a cohort the generator now draws differently, a changed library default). A record
    without provenance counts only where none is asked for."""
    array, meta = _beside(path, ".npy"), _beside(path, ".json")
    if not (array.is_file() and meta.is_file()):
        return None
    record = json.loads(meta.read_text())
    if record.get("settings", {}) != _plain(settings):
        return None
    if provenance is not None and record.get("provenance") != _plain(provenance):
        return None
    prediction = np.load(array)
    return RunResult(prediction, float(record["validation_mse"]), record["info"])
