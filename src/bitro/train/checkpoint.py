"""Checkpoints without pickle: tensors in safetensors, everything else in JSON (issue 5 item 5).

A trained model is two files: ``model.safetensors`` (the weights) and ``model.json`` (model config, gene
names, target statistics, phenotype centroids, feature scope, training settings). :func:`load_model`
checks the pair against each other and loads the weights strictly (docs/pitfalls.md).

The resume state of a run is ``checkpoint/state.safetensors`` (weights, the best weights so far and the
Adam moments, flattened to named tensors) plus ``checkpoint/state.json`` (epoch, early-stopping counters,
history, Adam's hyper-parameters). Both are written atomically every epoch.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from bitro._atomic import atomic_path
from bitro.errors import InputError
from bitro.genes.normalise import TargetTransform
from bitro.io.validate import require_file
from bitro.model.bitro import BiTro, BiTroConfig

FORMAT = "bitro-model/1"


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: t.detach().cpu().contiguous() for name, t in state.items()}


def save_model(model: BiTro, metadata: dict[str, Any], folder: str | Path) -> Path:
    """Write ``model.safetensors`` and ``model.json`` into ``folder``; returns the JSON path.

    ``metadata`` must hold ``genes`` and ``transform`` (a :class:`TargetTransform` dict) and may hold
    anything JSON can store (phenotypes, feature scope, training settings, fold).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    genes = list(metadata["genes"])
    if len(genes) != model.config.n_genes:
        raise ValueError(f"{len(genes)} gene names for a model of {model.config.n_genes} genes")
    with atomic_path(folder / "model.safetensors") as tmp:
        save_file(_contiguous(model.state_dict()), str(tmp))
    record = {"format": FORMAT, "model_config": asdict(model.config), **metadata}
    with atomic_path(folder / "model.json") as tmp:
        Path(tmp).write_text(json.dumps(record, indent=1))
    return folder / "model.json"


def load_model(folder: str | Path, *, device: str = "cpu") -> tuple[BiTro, dict[str, Any]]:
    """Load a model saved by :func:`save_model`; returns the model (eval mode) and its metadata."""
    folder = Path(folder)
    meta_path = require_file(folder / "model.json", "model description")
    weights_path = require_file(folder / "model.safetensors", "model weights")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(meta_path, f"is not JSON ({exc})") from exc
    if meta.get("format") != FORMAT:
        raise InputError(meta_path, f"is not a {FORMAT} model description")
    config = BiTroConfig(**meta["model_config"])
    genes = meta.get("genes", [])
    if len(genes) != config.n_genes:
        raise InputError(meta_path, f"names {len(genes)} genes for a model of {config.n_genes}")
    TargetTransform.from_dict(meta["transform"])
    model = BiTro(config)
    try:
        model.load_state_dict(load_file(str(weights_path)), strict=True)
    except RuntimeError as exc:
        raise InputError(
            weights_path, f"does not fit the model described in {meta_path.name} ({exc})"
        ) from exc
    return model.to(device).eval(), meta


def save_state(
    folder: str | Path,
    *,
    model: torch.nn.Module,
    best: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    info: dict[str, Any],
) -> None:
    """Write the resume state (module docstring) atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors |= {f"best.{k}": v for k, v in best.items()}
    optim = optimizer.state_dict()
    for index, state in optim["state"].items():
        for key, value in state.items():
            tensors[f"optim.{index}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    with atomic_path(folder / "state.safetensors") as tmp:
        save_file(_contiguous(tensors), str(tmp))
    record = {"info": info, "param_groups": optim["param_groups"]}
    with atomic_path(folder / "state.json") as tmp:
        Path(tmp).write_text(json.dumps(record, indent=1))


def load_state(
    folder: str | Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """Restore a resume state into ``model`` and ``optimizer``; None when there is none.

    Returns the best weights so far and the saved ``info``.
    """
    folder = Path(folder)
    if not (folder / "state.json").is_file() or not (folder / "state.safetensors").is_file():
        return None
    record = json.loads((folder / "state.json").read_text())
    tensors = load_file(str(folder / "state.safetensors"))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, strict=True)
    best = {k[5:]: v for k, v in tensors.items() if k.startswith("best.")}
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": record["param_groups"]})
    return best, record["info"]
