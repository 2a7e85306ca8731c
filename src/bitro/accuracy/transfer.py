"""Transfer between the benchmark's cohorts (issue 14, item 5): ST → bulk and bulk → ST, full or LoRA.

The runs go through the library's own transfer path, on the benchmark's in-memory cohorts instead of the
workflow's files:

1. **Pretraining** (:func:`pretrain_source`, once per source cohort, variant and seed): every sample of
   the source cohort trains but a seeded fifth of its patients, which validates (early stopping)
   (:func:`bitro.train.transfer.pretraining_fold`), through :func:`bitro.train.pipeline.train_model` from
   fresh weights. No target sample is involved: the ST and bulk cohorts are different virtual patients
   (``P01``–``P06`` sections, ``P001``–``P120`` slides, drawn by separate generators of one expression
   model), and each fine-tuning checks that again (:func:`bitro.train.transfer.check_no_shared_patients`).
2. **Fine-tuning** (:func:`run_transfer`, per target fold): the pretrained model on the fold's training
   bags, early stopping on its validation bags, through :func:`bitro.train.pipeline.train_model` with a
   :class:`~bitro.train.pipeline.Start` at the pretrained weights: ``full`` (every weight trains) or
   ``lora`` (:func:`bitro.model.lora.apply_lora`: adapters, gene queries and readout train). Genes are
   aligned by name (:func:`bitro.train.transfer.transfer_genes`); the prediction comes back in the
   target's gene order, NaN for a target gene the source lacks, and the report scores every model of a
   comparison on the genes both predict. The benchmark's two cohorts share all their genes (one
   expression model), so here the shared genes are all of them.

The target's test units are those of the from-scratch runs on the same fold, so the paired intervals of
the report compare transfer and scratch on identical units and genes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.torch import load_file, save_file

from bitro.accuracy.data import BenchFold
from bitro.accuracy.runs import (
    CohortSpec,
    RunResult,
    cohort,
    describe,
    load_run,
    prepare,
    run_fingerprint,
)
from bitro.model.bitro import BiTro, BiTroConfig
from bitro.train.pipeline import LoraOptions, Start, train_model
from bitro.train.transfer import check_no_shared_patients, pretraining_fold, transfer_genes

#: Transfer models of the benchmark: name → (source level, mode). The target is the cohort that lists it.
TRANSFERS: dict[str, tuple[str, str]] = {
    "from_st_lora": ("st", "lora"),
    "from_st_full": ("st", "full"),
    "from_bulk_lora": ("bulk", "lora"),
    "from_bulk_full": ("bulk", "full"),
}
#: Prefix of a pretraining job's model name (``pretrain_<variant>``).
PRETRAIN = "pretrain_"


def pretrain_name(source: str, variant: str, seed: int) -> str:
    """The folder name of a pretraining run under ``runs/pretrain/``."""
    return f"{source}_{variant}_s{seed}"


def weights_path(path: Path) -> Path:
    """Where the weights of the pretraining run cached at ``path`` lie."""
    return path.with_name(path.name + ".safetensors")


def pretraining_split(spec: CohortSpec, seed: int) -> BenchFold:
    """The whole source cohort: a seeded ``validation_fraction`` of its patients validates, the rest
    trains, nothing is tested (:func:`bitro.train.transfer.pretraining_fold`)."""
    samples = cohort(spec).samples
    patients = {s.sample_id: s.patient_id for s in samples}
    split = pretraining_fold(patients, validation_fraction=spec.validation_fraction, seed=seed)
    index = {s.sample_id: i for i, s in enumerate(samples)}
    return BenchFold(
        "pretrain", tuple(index[s] for s in split.train), tuple(index[s] for s in split.validation), ()
    )


def pretrain_source(
    spec: CohortSpec, variant: str, seed: int, settings: dict[str, Any], work_dir: Path, weights: Path
) -> RunResult:
    """Pretrain ``variant`` on the whole source cohort ``spec``; the weights go to ``weights`` (beside the
    run's record, :func:`weights_path`), the record names the samples and patients."""
    vc = cohort(spec)
    fold = pretraining_split(spec, seed)
    prepared = prepare(spec, fold, variant, seed, settings)
    started = time.perf_counter()
    trained = train_model(
        Start(),
        prepared.genes,
        prepared.bags["train"],
        prepared.bags["validation"],
        prepared.samples,
        prepared.transform,
        prepared.train_config,
        work_dir / "train",
        model_config=prepared.model_config,
        run_fingerprint=run_fingerprint(spec, "pretrain", variant, settings, seed),
        progress=False,
    )
    prediction, validation_mse, info = describe(
        trained.model, prepared, trained.result, time.perf_counter() - started
    )
    weights.parent.mkdir(parents=True, exist_ok=True)
    save_file(trained.model.state_dict(), str(weights))
    info |= {
        "genes": prepared.genes,
        "samples": {
            role: [vc.samples[i].sample_id for i in getattr(fold, role)] for role in ("train", "validation")
        },
        "patients": {
            vc.samples[i].sample_id: vc.samples[i].patient_id for i in (*fold.train, *fold.validation)
        },
    }
    return RunResult(prediction, validation_mse, info)


def load_pretrained(path: Path, settings: dict[str, Any]) -> tuple[BiTro, dict[str, Any]]:
    """The pretrained model saved at ``path`` (a finished pretraining run) and its record."""
    record = load_run(path, settings)
    weights = weights_path(path)
    if record is None or not weights.is_file():
        raise FileNotFoundError(f"no finished pretraining at {path}")
    model = BiTro(BiTroConfig.from_dict(record.info["model_config"]))
    model.load_state_dict(load_file(str(weights)), strict=True)
    return model.eval(), record.info | {"validation_mse": record.validation_mse}


def run_transfer(
    spec: CohortSpec,
    fold: BenchFold,
    name: str,
    seed: int,
    settings: dict[str, Any],
    work_dir: Path,
    pretrain_path: Path,
) -> RunResult:
    """Fine-tune the pretrained model (``pretrain_path``, made with ``settings["pretrain"]``) on ``fold``
    of the target ``spec``, in the mode of ``TRANSFERS[name]`` with the target's training settings
    (``settings["target"]``); predicts the fold's test units in the target's gene order."""
    _, mode = TRANSFERS[name]
    vc = cohort(spec)
    pretrained, record = load_pretrained(pretrain_path, settings["pretrain"])
    check_no_shared_patients(
        record["patients"], {vc.samples[i].sample_id: vc.samples[i].patient_id for i in fold.test}
    )
    genes = transfer_genes(record["genes"], vc.genes)
    prepared = prepare(spec, fold, settings["pretrain"]["variant"], seed, settings["target"], genes=genes)
    lora = LoraOptions.from_dict(settings.get("lora")) if mode == "lora" else None
    started = time.perf_counter()
    trained = train_model(
        Start(model=pretrained, genes=tuple(record["genes"]), lora=lora),
        genes,
        prepared.bags["train"],
        prepared.bags["validation"],
        prepared.samples,
        prepared.transform,
        prepared.train_config,
        work_dir,
        run_fingerprint=run_fingerprint(spec, fold.name, name, settings, seed),
        progress=False,
    )
    shared, validation_mse, info = describe(
        trained.model, prepared, trained.result, time.perf_counter() - started
    )
    prediction = np.full((len(shared), len(vc.genes)), np.nan)
    prediction[:, [vc.genes.index(g) for g in genes]] = shared
    info |= {
        "mode": mode,
        "genes": genes,
        "pretrain": {"samples": sorted(record["patients"]), "validation_mse": record.get("validation_mse")},
        "trainable_parameters": len(trained.trainable),
        "lora_adapters": sum("lora_" in n for n in trained.trainable),
        "training_samples": [vc.samples[i].sample_id for i in fold.train],
        "validation_samples": [vc.samples[i].sample_id for i in fold.validation],
    }
    return RunResult(prediction, validation_mse, info)
