"""Bidirectional transfer (paper §3.5): pretrain on one level, fine-tune on the other, in full or with LoRA.

ST → bulk and bulk → ST work the same way; a pair of cohorts is a *source* and a *target*.

1. **Pretraining** (:func:`pretrain`, once per pair): a model is trained on every sample of the source
   cohort, on the source's genes, with a validation group carved out for early stopping — the validation
   side of one of the source's folds when its ``folds.json`` is given (its test side joins training), a
   seeded fifth of the source's patients otherwise. No pretraining sample may be a test sample of the
   target, nor share a patient with one: the two cohorts are different, but sample sheets can name the same
   patients (a HEST section cut from a TCGA case), and the run refuses when they do
   (:class:`PatientOverlapError`). Phenotypes for the cluster loss are fitted on the pretraining samples.
2. **Gene alignment by name**: the transferred model predicts the genes the source and target
   share (:func:`transfer_genes`, sorted by name, so the order of either gene file never matters); the rows
   of every per-gene tensor of the pretrained model (the gene queries and, with the per-gene readout, each
   gene's output weights and bias) are selected by name (:func:`select_model_genes`).
3. **Fine-tuning** (:func:`transfer_fold`, once per target fold) on the target fold's training samples, with
   its validation samples for early stopping, target statistics fitted on its training bags and
   the fold's phenotypes. ``full``: every weight trains from the pretrained start. ``lora``:
   :func:`bitro.model.lora.apply_lora` (r 8, α 16, dropout 0.05 by default) freezes the base; the adapters,
   gene queries and readout train.
4. **Outputs** in the fold's folder: ``full`` writes ``model.safetensors`` + ``model.json`` that
   :func:`bitro.train.checkpoint.load_model` reads. ``lora`` writes the frozen, gene-aligned base
   (``model.safetensors``), the adapters and fine-tuned head (``adapter.safetensors``) and a ``model.json``
   of format :data:`LORA_FORMAT`, which ``load_model`` refuses (it would silently give the base without its
   adapters); :func:`load_transferred` reads every kind of model folder. ``model.json`` records the source
   cohort, the pretrained checkpoint's sha256, the mode, the LoRA settings and the shared genes.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import anndata as ad
import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from bitro._atomic import atomic_path
from bitro._hashing import file_sha256
from bitro.errors import InputError, PatientOverlapError
from bitro.evaluate.splits import Fold, Folds, read_folds
from bitro.features.phenotype import Phenotypes, fit_phenotypes, read_phenotypes, write_phenotypes
from bitro.genes.normalise import TargetTransform
from bitro.genes.selection import read_gene_list, shared_genes
from bitro.io.validate import require_file
from bitro.model.bitro import BiTro, BiTroConfig
from bitro.model.lora import (
    TRAINABLE_PREFIXES,
    apply_lora,
    load_lora,
    lora_settings,
    read_lora_metadata,
    save_lora,
    trainable_parameter_names,
)
from bitro.train.checkpoint import FORMAT, load_model, save_model
from bitro.train.data import Bag, SampleData
from bitro.train.fit import TrainConfig, TrainResult, fit
from bitro.train.run import FoldInputs, fold_record, load_fold, model_metadata, validation_scores

log = logging.getLogger("bitro")

Mode = Literal["full", "lora"]
MODES: tuple[str, ...] = ("full", "lora")
#: ``model.json`` format of a LoRA fold: the frozen base in ``model.safetensors``, adapters beside it.
LORA_FORMAT = "bitro-model-lora/1"
ADAPTER_FILE = "adapter.safetensors"
#: Marks which pretraining and settings a fine-tuning's resume state belongs to.
ORIGIN_FILE = "origin.json"


@dataclass(frozen=True)
class LoraOptions:
    """LoRA settings of a fine-tuning (paper §3.5).

    Attributes
    ----------
    r, alpha, dropout
        Rank, scaling numerator (scale α / r) and dropout on the adapters' input.
    target_modules
        Exact module names to adapt; ``None``: :func:`bitro.model.lora.lora_target_modules`.
    """

    r: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"LoRA rank must be at least 1, got {self.r}")
        if self.alpha <= 0:
            raise ValueError(f"LoRA alpha must be positive, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> LoraOptions:
        """From the ``transfer.lora`` settings (``r``, ``alpha``, ``dropout``, ``target_modules``)."""
        data = dict(data or {})
        unknown = sorted(set(data) - {"r", "alpha", "dropout", "target_modules"})
        if unknown:
            raise ValueError(f"unknown LoRA settings: {unknown}")
        if data.get("target_modules") is not None:
            data["target_modules"] = tuple(data["target_modules"])
        return cls(**data)


@dataclass
class Finetuned:
    """The result of :func:`finetune`.

    Attributes
    ----------
    model
        The fine-tuned model (LoRA injected in ``lora`` mode), holding its best validation weights.
    base
        The pretrained model with its genes selected for the target, as fine-tuning started from it.
    mode
        ``full`` or ``lora``.
    lora
        The LoRA settings (``lora`` mode) or None.
    result
        What :func:`bitro.train.fit.fit` returned.
    trainable
        Names of the parameters that trained.
    """

    model: BiTro
    base: BiTro
    mode: Mode
    lora: LoraOptions | None
    result: TrainResult
    trainable: list[str]


# --------------------------------------------------------------------------------------------- patients


def sample_patients(
    samples: Iterable[str],
    *,
    sheet: str | Path | None = None,
    samples_dir: str | Path | None = None,
) -> dict[str, str]:
    """The patient of each sample.

    Parameters
    ----------
    samples
        Sample ids.
    sheet
        A sample sheet (TSV with ``sample_id`` and optionally ``patient_id``; an empty patient is the
        sample itself). Every sample must be listed.
    samples_dir
        Without a sheet, ``samples_dir/<sample>/targets.h5ad`` is read for ``uns["bitro"]["patient_id"]``.

    Returns
    -------
    dict[str, str]
        sample → patient; a sample whose patient is unknown is its own patient.
    """
    samples = list(samples)
    if sheet is not None:
        path = require_file(sheet, "sample sheet")
        table = pd.read_csv(path, sep="\t", dtype=str)
        if "sample_id" not in table:
            raise InputError(path, "has no sample_id column")
        patients = (
            table["patient_id"].fillna(table["sample_id"]) if "patient_id" in table else table["sample_id"]
        )
        mapping = dict(zip(table["sample_id"], patients, strict=True))
        missing = [s for s in samples if s not in mapping]
        if missing:
            raise InputError(path, f"lacks samples {missing[:5]}")
        return {s: str(mapping[s]) for s in samples}
    out = {}
    for sample in samples:
        patient = None
        path = Path(samples_dir) / sample / "targets.h5ad" if samples_dir is not None else None
        if path is not None and path.is_file():
            adata = ad.read_h5ad(path, backed="r")
            try:
                patient = dict(adata.uns.get("bitro", {})).get("patient_id")
            finally:
                adata.file.close()
        out[sample] = str(patient) if patient not in (None, "") and not pd.isna(patient) else sample
    return out


def check_no_shared_patients(source: Mapping[str, str], target_test: Mapping[str, str]) -> None:
    """Refuse pretraining samples that are, or share a patient with, target test samples.

    Parameters
    ----------
    source
        Pretraining sample → patient.
    target_test
        Target test sample → patient.

    Raises
    ------
    PatientOverlapError
        Naming the shared samples or patients.
    """
    samples = sorted(set(source) & set(target_test))
    if samples:
        raise PatientOverlapError(
            f"{len(samples)} pretraining samples are test samples of the target: {samples[:5]}"
        )
    patients = sorted(set(source.values()) & set(target_test.values()))
    if patients:
        pairs = [
            (
                p,
                sorted(s for s, q in source.items() if q == p)[:3],
                sorted(s for s, q in target_test.items() if q == p)[:3],
            )
            for p in patients[:3]
        ]
        detail = "; ".join(f"patient {p}: source {a}, target test {b}" for p, a, b in pairs)
        raise PatientOverlapError(
            f"{len(patients)} patients are both in the pretraining cohort and among the target's test "
            f"samples ({detail}); drop them from one of the sample sheets"
        )


# ------------------------------------------------------------------------------------------------ genes


def transfer_genes(source_genes: Sequence[str], target_genes: Sequence[str]) -> list[str]:
    """The genes a transfer predicts: those both cohorts have, by name, sorted.

    Sorting makes the transferred model, bit for bit, independent of the order of either gene file.

    Raises
    ------
    ValueError
        The cohorts share no gene, or a list names a gene twice.
    """
    for name, genes in (("source", source_genes), ("target", target_genes)):
        if len(set(genes)) != len(genes):
            raise ValueError(f"the {name} gene list names genes more than once")
    genes = shared_genes(source_genes, target_genes)
    if not genes:
        raise ValueError("the source and target cohorts share no gene name")
    return genes


def per_gene_tensors(config: BiTroConfig) -> list[str]:
    """Names of the state tensors with one row per gene (found by shape, on the meta device)."""
    with torch.device("meta"):
        a = BiTro(replace(config, n_genes=2)).state_dict()
        b = BiTro(replace(config, n_genes=3)).state_dict()
    names = [name for name in a if a[name].shape != b[name].shape]
    for name in names:
        if a[name].shape[1:] != b[name].shape[1:] or a[name].shape[0] != 2:
            raise RuntimeError(f"{name} depends on the number of genes along another axis than the first")
    return names


def select_model_genes(model: BiTro, model_genes: Sequence[str], genes: Sequence[str]) -> BiTro:
    """A new model predicting ``genes``, each per-gene row taken from ``model`` by gene name.

    Parameters
    ----------
    model
        A plain (no LoRA) model predicting ``model_genes``; left unchanged.
    model_genes
        The model's genes, in its output order.
    genes
        The genes to predict, each one of ``model_genes``, in the order wanted.

    Returns
    -------
    BiTro
        Same configuration but ``n_genes``; all shared weights copied, per-gene rows selected; eval mode.
    """
    if lora_settings(model) is not None:
        raise ValueError("select genes on the base model, before LoRA is applied")
    if len(model_genes) != model.config.n_genes:
        raise ValueError(f"{len(model_genes)} gene names for a model of {model.config.n_genes} genes")
    index = {g: i for i, g in enumerate(model_genes)}
    if len(index) != len(model_genes):
        raise ValueError("the model's gene list names genes more than once")
    missing = [g for g in genes if g not in index]
    if missing:
        raise ValueError(f"{len(missing)} genes are not predicted by the model: {missing[:5]}")
    rows = torch.as_tensor([index[g] for g in genes], dtype=torch.long)
    config = replace(model.config, n_genes=len(genes))
    per_gene = set(per_gene_tensors(config))
    state = {
        name: (t.detach()[rows.to(t.device)] if name in per_gene else t.detach()).clone().cpu()
        for name, t in model.state_dict().items()
    }
    with torch.random.fork_rng(devices=[]):
        aligned = BiTro(config)
    aligned.load_state_dict(state, strict=True)
    return aligned.eval()


# ---------------------------------------------------------------------------------------------- splits


def _merge_ranges(ranges: Iterable[Sequence[float]]) -> list[list[float]]:
    merged: list[list[float]] = []
    for lo, hi in sorted((float(lo), float(hi)) for lo, hi in ranges):
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return merged


def pretraining_fold(
    patients: Mapping[str, str],
    *,
    folds: Folds | None = None,
    fold_name: str | None = None,
    validation_fraction: float = 0.2,
    seed: int = 0,
) -> Fold:
    """Train on every source sample but a validation group (module docstring).

    Parameters
    ----------
    patients
        Every source sample → its patient.
    folds, fold_name
        The source's folds: the validation side of ``fold_name`` (default: the first fold) validates and
        everything else trains (for strips, each slide's training and test strips train).
    validation_fraction, seed
        Without folds, a seeded ``validation_fraction`` of the patients (at least one) validates.
    """
    samples = sorted(patients)
    if folds is not None:
        fold = folds.fold(fold_name) if fold_name else folds.folds[0]
        named = set(fold.train) | set(fold.validation) | set(fold.test)
        if named != set(samples):
            raise ValueError(
                f"{folds.cohort} {fold.name} names other samples than the source cohort: "
                f"only in the folds {sorted(named - set(samples))[:5]}, "
                f"only in the cohort {sorted(set(samples) - named)[:5]}"
            )
        if folds.protocol == "strips":
            strips = {
                sample: {
                    "train": _merge_ranges([*roles["train"], *roles["test"]]),
                    "validation": [list(r) for r in roles["validation"]],
                }
                for sample, roles in fold.strips.items()
            }
            return Fold(
                "pretrain", train=list(fold.train), validation=list(fold.validation), test=[], strips=strips
            )
        # A two-group leave-one-out validates on a strip of its training sample: keep that strip out.
        return Fold(
            "pretrain",
            train=sorted(set(fold.train) | set(fold.test)),
            validation=sorted(fold.validation),
            test=[],
            strips={sample: dict(roles) for sample, roles in fold.strips.items()},
        )
    groups: dict[str, list[str]] = {}
    for sample in samples:
        groups.setdefault(patients[sample], []).append(sample)
    keys = sorted(groups)
    if len(keys) < 2:
        raise ValueError(
            "pretraining needs at least 2 patients to carve a validation group; give the source's folds "
            "(a single Xenium slide validates on a strip)"
        )
    order = [keys[i] for i in np.random.default_rng(seed).permutation(len(keys))]
    n_val = min(max(1, round(validation_fraction * len(keys))), len(keys) - 1)
    validation = sorted(s for key in order[:n_val] for s in groups[key])
    train = sorted(s for key in order[n_val:] for s in groups[key])
    return Fold("pretrain", train=train, validation=validation, test=[])


def _cohort_samples(samples_dir: Path, sheet: str | Path | None, folds: Folds | None) -> list[str]:
    if sheet is not None:
        path = require_file(sheet, "sample sheet")
        return sorted(pd.read_csv(path, sep="\t", dtype=str)["sample_id"].tolist())
    if folds is not None:
        return sorted({s for fold in folds.folds for s in (*fold.train, *fold.validation, *fold.test)})
    found = sorted(p.name for p in samples_dir.iterdir() if (p / "targets.h5ad").is_file())
    if not found:
        raise InputError(samples_dir, "holds no sample folder with a targets.h5ad")
    return found


# ----------------------------------------------------------------------------------------- fine-tuning


def _frozen_changes(model: BiTro, base: BiTro) -> list[str]:
    """Base tensors (outside the trainable head) whose value differs between ``model`` and ``base``."""
    reference = base.state_dict()
    changed = []
    for name, tensor in model.state_dict().items():
        plain = name.replace(".base_layer.", ".")
        if "lora_" in name or plain.startswith(TRAINABLE_PREFIXES):
            continue
        if not torch.equal(tensor.detach().cpu(), reference[plain].cpu()):
            changed.append(plain)
    return changed


def finetune(
    pretrained: BiTro,
    pretrained_genes: Sequence[str],
    genes: Sequence[str],
    train_bags: Sequence[Bag],
    validation_bags: Sequence[Bag],
    samples: Sequence[SampleData],
    transform: TargetTransform,
    config: TrainConfig,
    out_dir: str | Path,
    *,
    mode: Mode = "lora",
    lora: LoraOptions | None = None,
    device: str = "cpu",
    progress: bool = True,
) -> Finetuned:
    """Fine-tune a copy of ``pretrained`` on the target's bags (module docstring, step 3).

    Parameters
    ----------
    pretrained, pretrained_genes
        The pretrained model (left unchanged) and its genes.
    genes
        The genes to predict (:func:`transfer_genes`); the bags' targets and ``transform`` follow them.
    train_bags, validation_bags, samples, transform, config, out_dir, device, progress
        As for :func:`bitro.train.fit.fit`.
    mode
        ``full``: every weight trains; ``lora``: adapters, gene queries and readout train, the rest frozen.
    lora
        LoRA settings (``lora`` mode; default :class:`LoraOptions`).

    Raises
    ------
    RuntimeError
        A frozen base weight changed during LoRA fine-tuning.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if tuple(transform.genes) != tuple(genes):
        raise ValueError("the target statistics are not in the order of the genes")
    base = select_model_genes(pretrained, pretrained_genes, genes)
    model = copy.deepcopy(base)
    options = None
    if mode == "lora":
        options = lora or LoraOptions()
        torch.manual_seed(config.seed)  # the adapters' initialisation
        targets = list(options.target_modules) if options.target_modules is not None else None
        apply_lora(model, options.r, options.alpha, options.dropout, targets)
    else:
        for param in model.parameters():
            param.requires_grad_(True)
    trainable = [p for p in model.parameters() if p.requires_grad]
    names = trainable_parameter_names(model)
    log.info(
        "%s fine-tuning: %d of %d parameters train",
        mode,
        sum(p.numel() for p in trainable),
        sum(p.numel() for p in model.parameters()),
    )
    result = fit(
        model,
        train_bags,
        validation_bags,
        samples,
        transform,
        config,
        out_dir,
        device=device,
        progress=progress,
        parameters=lambda: trainable,
    )
    if mode == "lora":
        changed = _frozen_changes(model, base)
        if changed:
            raise RuntimeError(f"LoRA fine-tuning changed frozen base weights: {changed[:5]}")
    return Finetuned(model=model.eval(), base=base, mode=mode, lora=options, result=result, trainable=names)


def _write_json(record: dict[str, Any], path: Path) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(record, indent=1))


def write_transferred(finetuned: Finetuned, metadata: dict[str, Any], folder: str | Path) -> Path:
    """Write a fine-tuned model (module docstring, step 4); returns ``model.json``.

    ``metadata`` holds ``genes`` and ``transform`` like :func:`bitro.train.checkpoint.save_model`'s, and
    the ``transfer`` record. ``model.json`` is written last, so its presence means the folder is complete.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    genes = list(metadata["genes"])
    if finetuned.mode == "full":
        (folder / ADAPTER_FILE).unlink(missing_ok=True)
        return save_model(finetuned.model.cpu(), metadata, folder)
    base = finetuned.base
    if len(genes) != base.config.n_genes:
        raise ValueError(f"{len(genes)} gene names for a model of {base.config.n_genes} genes")
    (folder / "model.json").unlink(missing_ok=True)
    with atomic_path(folder / "model.safetensors") as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in base.state_dict().items()}, str(tmp))
    base_sha = file_sha256(folder / "model.safetensors")
    save_lora(
        finetuned.model.cpu(),
        folder / ADAPTER_FILE,
        metadata={"genes": json.dumps(genes), "base_sha256": base_sha},
    )
    record = {"format": LORA_FORMAT, "model_config": asdict(base.config), **metadata}
    record["transfer"] = dict(record.get("transfer", {})) | {
        "adapter": ADAPTER_FILE,
        "base_sha256": base_sha,
        "adapter_sha256": file_sha256(folder / ADAPTER_FILE),
    }
    _write_json(record, folder / "model.json")
    return folder / "model.json"


def load_transferred(folder: str | Path, *, device: str = "cpu") -> tuple[BiTro, dict[str, Any]]:
    """Load any model folder: a trained fold, a ``full`` transfer or a ``lora`` transfer (base + adapters).

    Returns
    -------
    tuple[BiTro, dict]
        The model in eval mode (LoRA injected for a ``lora`` folder) and ``model.json``.

    Raises
    ------
    InputError
        A missing file, an adapter made for another base, or tensors that do not fit.
    """
    folder = Path(folder)
    meta_path = require_file(folder / "model.json", "model description")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(meta_path, f"is not JSON ({exc})") from exc
    if meta.get("format") == FORMAT:
        return load_model(folder, device=device)
    if meta.get("format") != LORA_FORMAT:
        raise InputError(meta_path, f"is neither a {FORMAT} nor a {LORA_FORMAT} model description")
    weights = require_file(folder / "model.safetensors", "frozen base weights")
    adapter = require_file(folder / meta.get("transfer", {}).get("adapter", ADAPTER_FILE), "LoRA adapters")
    config = BiTroConfig(**meta["model_config"])
    genes = list(meta.get("genes", []))
    if len(genes) != config.n_genes:
        raise InputError(meta_path, f"names {len(genes)} genes for a model of {config.n_genes}")
    TargetTransform.from_dict(meta["transform"])
    adapter_meta = read_lora_metadata(adapter)
    if adapter_meta.get("base_sha256") != file_sha256(weights):
        raise InputError(adapter, f"was made for another base than {weights.name}")
    if json.loads(adapter_meta.get("genes", "[]")) != genes:
        raise InputError(adapter, f"predicts other genes than {meta_path.name} names")
    with torch.random.fork_rng(devices=[]):
        model = BiTro(config)
    try:
        model.load_state_dict(load_file(str(weights)), strict=True)
        load_lora(model, adapter)
    except (RuntimeError, ValueError) as exc:
        raise InputError(weights, f"does not fit the model described in {meta_path.name} ({exc})") from exc
    return model.to(device).eval(), meta


# ----------------------------------------------------------------------------------------- file level


def _target_rows(inputs: FoldInputs) -> np.ndarray:
    return np.stack([inputs.samples[b.sample].targets[b.target_row] for b in inputs.bags["train"]])


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
) -> TrainResult:
    """Pretrain on the whole source cohort (module docstring, step 1) and write it into ``out_dir``.

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
        any target fold (:class:`PatientOverlapError`). Without target folds, only each fine-tuning checks.
    model_config, train_config, zscore
        As for :func:`bitro.train.run.train_fold`.
    phenotypes_k
        Phenotypes fitted on the pretraining samples (when the cluster loss is on).
    validation_fraction
        Share of the source's patients that validates when no folds are given.
    """
    source_samples_dir, out_dir = Path(source_samples_dir), Path(out_dir)
    train_config = train_config or TrainConfig()
    folds = read_folds(source_folds_path) if source_folds_path else None
    samples = _cohort_samples(source_samples_dir, source_sheet, folds)
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
    transform = TargetTransform.fit(_target_rows(inputs), genes, zscore=zscore, space=inputs.samples[0].space)
    settings = dict(model_config or {})
    settings.setdefault("output", "identity" if zscore else "softplus")
    torch.manual_seed(train_config.seed)
    config = BiTroConfig(n_genes=len(genes), in_dim=inputs.samples[0].features.shape[1], **settings)
    _clear_stale_state(
        out_dir,
        {
            "fold": fold_record(fold),
            "genes": genes,
            "model": config.to_dict(),
            "train": train_config.to_dict(),
            "zscore": zscore,
        },
    )
    model = BiTro(config)
    log.info(
        "pretraining on %s: %d training and %d validation bags, %d genes",
        cohort,
        len(inputs.bags["train"]),
        len(inputs.bags["validation"]),
        len(genes),
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
    )
    scores = validation_scores(model, inputs, transform, device=device)
    levels = sorted({s.level for s in inputs.samples})
    features = {"scope": "sample", "basis": None}
    metadata = model_metadata(genes, transform, phenotypes, features, fold, train_config, result, scores)
    metadata |= {
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
    save_model(model, metadata, out_dir)
    log.info("pretraining on %s: validation %s", cohort, json.dumps(scores))
    return result


def _check_architecture(config: BiTroConfig, model_config: Mapping[str, Any] | None) -> None:
    """Model settings given for a fine-tuning must be the pretrained model's."""
    ours = config.to_dict()
    different = {k: (v, ours.get(k)) for k, v in dict(model_config or {}).items() if ours.get(k) != v}
    if different:
        raise ValueError(
            "the fine-tuned architecture is the pretrained model's; these model settings differ "
            f"(given, pretrained): {different}"
        )


def _clear_stale_state(out_dir: Path, origin: dict[str, Any]) -> None:
    """Drop a resume state left by a run on other inputs or settings; mark the state with ``origin``."""
    origin = json.loads(json.dumps(origin))  # as it reads back (tuples become lists)
    state = out_dir / "checkpoint"
    marker = state / ORIGIN_FILE
    if state.is_dir():
        known = json.loads(marker.read_text()) if marker.is_file() else None
        if known != origin:
            log.warning("%s: resume state of a run on other inputs or settings, starting over", state)
            shutil.rmtree(state)
    state.mkdir(parents=True, exist_ok=True)
    _write_json(origin, marker)


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
) -> TrainResult:
    """Fine-tune the pretrained model on one fold of the target (module docstring, steps 2–4).

    Parameters
    ----------
    target_samples_dir, target_folds_path, fold_name, target_genes_path
        The target cohort's samples, folds, fold and ``genes.txt``.
    pretrain_dir
        The folder :func:`pretrain` wrote.
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
    zscore, device, progress
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
    _check_architecture(pretrained.config, model_config)
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
    phenotypes = read_phenotypes(phenotypes_path) if phenotypes_path else None
    if phenotypes is not None and set(phenotypes.train_samples) != set(fold.train):
        raise ValueError(
            f"{phenotypes_path}: phenotypes were fitted on other samples than {fold_name}'s training set"
        )
    inputs = load_fold(target_samples_dir, fold, genes, phenotypes=phenotypes)
    width = inputs.samples[0].features.shape[1]
    if width != pretrained.config.in_dim:
        raise ValueError(
            f"the target's features have width {width}, "
            f"the pretrained model expects {pretrained.config.in_dim}"
        )
    transform = TargetTransform.fit(_target_rows(inputs), genes, zscore=zscore, space=inputs.samples[0].space)
    pretrain_sha = file_sha256(pretrain_dir / "model.safetensors")
    options = (lora or LoraOptions()) if mode == "lora" else None
    _clear_stale_state(
        out_dir,
        {
            "pretrain_sha256": pretrain_sha,
            "mode": mode,
            "lora": None if options is None else asdict(options),
            "genes": genes,
            "train": train_config.to_dict(),
            "zscore": zscore,
            "phenotypes": None if phenotypes is None else list(phenotypes.train_samples),
        },
    )
    log.info(
        "%s → %s %s (%s): %d training and %d validation bags, %d shared genes",
        record["source_cohort"],
        folds.cohort,
        fold_name,
        mode,
        len(inputs.bags["train"]),
        len(inputs.bags["validation"]),
        len(genes),
    )
    done = finetune(
        pretrained,
        pmeta["genes"],
        genes,
        inputs.bags["train"],
        inputs.bags["validation"],
        inputs.samples,
        transform,
        train_config,
        out_dir,
        mode=mode,
        lora=options,
        device=device,
        progress=progress,
    )
    scores = validation_scores(done.model, inputs, transform, device=device)
    settings = lora_settings(done.model)
    features = {"scope": "sample", "basis": None}
    metadata = model_metadata(genes, transform, phenotypes, features, fold, train_config, done.result, scores)
    metadata |= {
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
            "trainable_parameters": done.trainable,
        },
    }
    write_transferred(done, metadata, out_dir)
    log.info("%s %s (%s transfer): validation %s", folds.cohort, fold_name, mode, json.dumps(scores))
    return done.result


__all__ = [
    "ADAPTER_FILE",
    "LORA_FORMAT",
    "MODES",
    "Finetuned",
    "LoraOptions",
    "PatientOverlapError",
    "check_no_shared_patients",
    "finetune",
    "load_transferred",
    "per_gene_tensors",
    "pretrain",
    "pretraining_fold",
    "sample_patients",
    "select_model_genes",
    "transfer_fold",
    "transfer_genes",
    "write_transferred",
]
