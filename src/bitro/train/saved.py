"""A trained model on disk, without pickle: tensors in safetensors, everything else in ``model.json``.

Two kinds of model folder, told apart by ``model.json``'s ``format``:

- :data:`FORMAT` (a model trained from scratch, a pretrained model, a ``full`` fine-tuning):
  ``model.safetensors`` (every weight) and ``model.json`` (model config, gene names, target statistics,
  phenotype centroids, feature scope, fold, training settings, how training ended, validation scores).
- :data:`LORA_FORMAT` (a ``lora`` fine-tuning): ``model.safetensors`` holds the frozen, gene-aligned base,
  :data:`ADAPTER_FILE` the adapters and the fine-tuned head (with the base's sha256 and the genes in its
  metadata), and ``model.json`` the same record plus the adapter's and base's sha256.

:func:`save_trained` writes either kind (``model.json`` last, so its presence means the folder is
complete); :func:`load_trained` reads either; :func:`load_model` reads :data:`FORMAT` only and checks the
pair strictly: it refuses a LoRA folder, whose ``model.safetensors`` alone is the base
without its adapters.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from bitro._atomic import atomic_path
from bitro._hashing import file_sha256
from bitro.errors import InputError
from bitro.features.phenotype import Phenotypes
from bitro.folds.splits import Fold
from bitro.genes.normalise import TargetTransform
from bitro.io.validate import require_file
from bitro.model.bitro import BiTro, BiTroConfig
from bitro.model.lora import load_lora, lora_settings, read_lora_metadata, save_lora
from bitro.train.config import TrainConfig, TrainResult

FORMAT = "bitro-model/1"
#: ``model.json`` format of a LoRA fold: the frozen base in ``model.safetensors``, adapters beside it.
LORA_FORMAT = "bitro-model-lora/1"
ADAPTER_FILE = "adapter.safetensors"


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: t.detach().cpu().contiguous() for name, t in state.items()}


def _write_json(record: dict[str, Any], path: Path) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(record, indent=1))


def _check_genes(genes: list[str], config: BiTroConfig) -> None:
    if len(genes) != config.n_genes:
        raise ValueError(f"{len(genes)} gene names for a model of {config.n_genes} genes")


def save_model(model: BiTro, metadata: dict[str, Any], folder: str | Path) -> Path:
    """Write ``model.safetensors`` and ``model.json`` (:data:`FORMAT`) into ``folder``; returns the JSON path.

    ``metadata`` must hold ``genes`` and ``transform`` (a :class:`TargetTransform` dict) and may hold
    anything JSON can store (phenotypes, feature scope, training settings, fold).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _check_genes(list(metadata["genes"]), model.config)
    with atomic_path(folder / "model.safetensors") as tmp:
        save_file(_contiguous(model.state_dict()), str(tmp))
    _write_json({"format": FORMAT, "model_config": asdict(model.config), **metadata}, folder / "model.json")
    return folder / "model.json"


def save_trained(
    model: BiTro, metadata: dict[str, Any], folder: str | Path, *, base: BiTro | None = None
) -> Path:
    """Write a trained model into ``folder`` as the kind it is (module docstring); returns ``model.json``.

    A plain model is written by :func:`save_model` (a stale :data:`ADAPTER_FILE` is removed); a model with
    LoRA adapters needs ``base``, the model its training started from, and writes ``model.safetensors``
    (the base), :data:`ADAPTER_FILE` and a :data:`LORA_FORMAT` ``model.json`` whose ``transfer`` record
    gains the adapter file's name and both files' sha256.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if lora_settings(model) is None:
        (folder / ADAPTER_FILE).unlink(missing_ok=True)
        return save_model(model, metadata, folder)
    if base is None:
        raise ValueError("a model with LoRA adapters is saved with the base it was trained from")
    genes = list(metadata["genes"])
    _check_genes(genes, base.config)
    (folder / "model.json").unlink(missing_ok=True)
    with atomic_path(folder / "model.safetensors") as tmp:
        save_file(_contiguous(base.state_dict()), str(tmp))
    base_sha = file_sha256(folder / "model.safetensors")
    adapter_metadata = {"genes": json.dumps(genes), "base_sha256": base_sha}
    save_lora(model.cpu(), folder / ADAPTER_FILE, metadata=adapter_metadata)
    record = {"format": LORA_FORMAT, "model_config": asdict(base.config), **metadata}
    record["transfer"] = dict(record.get("transfer", {})) | {
        "adapter": ADAPTER_FILE,
        "base_sha256": base_sha,
        "adapter_sha256": file_sha256(folder / ADAPTER_FILE),
    }
    _write_json(record, folder / "model.json")
    return folder / "model.json"


def _read_description(folder: Path) -> tuple[Path, dict[str, Any], BiTroConfig]:
    """``model.json``, its record and model config, checked against its gene names and statistics."""
    meta_path = require_file(folder / "model.json", "model description")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(meta_path, f"is not JSON ({exc})") from exc
    if meta.get("format") not in (FORMAT, LORA_FORMAT):
        raise InputError(meta_path, f"is neither a {FORMAT} nor a {LORA_FORMAT} model description")
    config = BiTroConfig(**meta["model_config"])
    genes = meta.get("genes", [])
    if len(genes) != config.n_genes:
        raise InputError(meta_path, f"names {len(genes)} genes for a model of {config.n_genes}")
    TargetTransform.from_dict(meta["transform"])
    return meta_path, meta, config


def load_model(folder: str | Path, *, device: str = "cpu") -> tuple[BiTro, dict[str, Any]]:
    """Load a :data:`FORMAT` model folder; returns the model (eval mode) and its metadata."""
    folder = Path(folder)
    meta_path = require_file(folder / "model.json", "model description")
    weights_path = require_file(folder / "model.safetensors", "model weights")
    try:
        format_ = json.loads(meta_path.read_text()).get("format")
    except json.JSONDecodeError as exc:
        raise InputError(meta_path, f"is not JSON ({exc})") from exc
    if format_ != FORMAT:
        raise InputError(meta_path, f"is not a {FORMAT} model description")
    meta_path, meta, config = _read_description(folder)
    model = BiTro(config)
    try:
        model.load_state_dict(load_file(str(weights_path)), strict=True)
    except RuntimeError as exc:
        raise InputError(
            weights_path, f"does not fit the model described in {meta_path.name} ({exc})"
        ) from exc
    return model.to(device).eval(), meta


def load_trained(folder: str | Path, *, device: str = "cpu") -> tuple[BiTro, dict[str, Any]]:
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
    meta_path, meta, config = _read_description(folder)
    if meta["format"] == FORMAT:
        return load_model(folder, device=device)
    weights = require_file(folder / "model.safetensors", "frozen base weights")
    adapter = require_file(folder / meta.get("transfer", {}).get("adapter", ADAPTER_FILE), "LoRA adapters")
    adapter_meta = read_lora_metadata(adapter)
    if adapter_meta.get("base_sha256") != file_sha256(weights):
        raise InputError(adapter, f"was made for another base than {weights.name}")
    if json.loads(adapter_meta.get("genes", "[]")) != list(meta["genes"]):
        raise InputError(adapter, f"predicts other genes than {meta_path.name} names")
    with torch.random.fork_rng(devices=[]):
        model = BiTro(config)
    try:
        model.load_state_dict(load_file(str(weights)), strict=True)
        load_lora(model, adapter)
    except (RuntimeError, ValueError) as exc:
        raise InputError(weights, f"does not fit the model described in {meta_path.name} ({exc})") from exc
    return model.to(device).eval(), meta


def saved_phenotypes(meta: dict[str, Any]) -> Phenotypes | None:
    """The phenotype centroids a ``model.json`` records (None when it was trained without them)."""
    record = meta.get("phenotypes")
    if not record:
        return None
    return Phenotypes(np.asarray(record["centroids"], np.float64), tuple(record["train_samples"]))


def phenotypes_record(phenotypes: Phenotypes | None) -> dict[str, Any] | None:
    """How ``model.json`` records the phenotype centroids (read back by :func:`saved_phenotypes`)."""
    if phenotypes is None:
        return None
    return {"centroids": phenotypes.centroids.tolist(), "train_samples": list(phenotypes.train_samples)}


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
        "phenotypes": phenotypes_record(phenotypes),
        "features": features,
        "fold": fold_record(fold),
        "train": train_config.to_dict(),
        "result": result.to_dict(),
        "validation": scores,
    }
