"""Transfer policy (paper §3.5): which samples may pretrain, which genes transfer, and how.

ST → bulk and bulk → ST work the same way; a pair of cohorts is a *source* and a *target*. The runs
themselves are :func:`bitro.train.pretrain.pretrain` and :func:`bitro.train.finetune.transfer_fold`, both
through the one training pipeline (:mod:`bitro.train.pipeline`); this module holds what is particular to a
transfer:

- **Patients** (:func:`sample_patients`, :func:`check_no_shared_patients`): no pretraining sample may be a
  test sample of the target, nor share a patient with one: the two cohorts are different, but sample sheets
  can name the same patients (a HEST section cut from a TCGA case), and the run refuses when they do
  (:class:`PatientOverlapError`).
- **Genes, aligned by name**: the transferred model predicts the genes the source and target
  share (:func:`transfer_genes`, sorted by name, so the order of either gene file never matters); the rows
  of every per-gene tensor of the pretrained model (the gene queries and, with the per-gene readout, each
  gene's output weights and bias) are selected by name (:func:`select_model_genes`).
- **The pretraining split** (:func:`pretraining_fold`): every source sample trains but a validation group
  for early stopping — the validation side of one of the source's folds when its ``folds.json`` is given
  (its test side joins training), a seeded fifth of the source's patients otherwise.
- **The architecture** is the pretrained model's (:func:`check_architecture`).

Nothing is written here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import torch

from bitro.errors import InputError, PatientOverlapError
from bitro.folds.splits import Fold, Folds
from bitro.genes.selection import shared_genes
from bitro.io.validate import require_file
from bitro.model.bitro import BiTro, BiTroConfig
from bitro.model.lora import lora_settings

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


def cohort_samples(samples_dir: Path, sheet: str | Path | None, folds: Folds | None) -> list[str]:
    """The samples of a source cohort: its sheet's, else its folds', else every sample folder's."""
    if sheet is not None:
        path = require_file(sheet, "sample sheet")
        return sorted(pd.read_csv(path, sep="\t", dtype=str)["sample_id"].tolist())
    if folds is not None:
        return sorted({s for fold in folds.folds for s in (*fold.train, *fold.validation, *fold.test)})
    found = sorted(p.name for p in samples_dir.iterdir() if (p / "targets.h5ad").is_file())
    if not found:
        raise InputError(samples_dir, "holds no sample folder with a targets.h5ad")
    return found


def check_architecture(config: BiTroConfig, model_config: Mapping[str, Any] | None) -> None:
    """Model settings given for a fine-tuning must be the pretrained model's."""
    ours = config.to_dict()
    different = {k: (v, ours.get(k)) for k, v in dict(model_config or {}).items() if ours.get(k) != v}
    if different:
        raise ValueError(
            "the fine-tuned architecture is the pretrained model's; these model settings differ "
            f"(given, pretrained): {different}"
        )


__all__ = [
    "PatientOverlapError",
    "check_architecture",
    "check_no_shared_patients",
    "cohort_samples",
    "per_gene_tensors",
    "pretraining_fold",
    "sample_patients",
    "select_model_genes",
    "transfer_genes",
]
