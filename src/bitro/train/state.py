"""The resume state of a run, and the one rule that says when it may be resumed.

A run writes, atomically after every round, ``checkpoint/state.safetensors`` (weights, the best weights so
far and the Adam moments, flattened to named tensors) and ``checkpoint/state.json`` (epoch,
early-stopping counters, history, Adam's hyper-parameters, and the run's *fingerprint*).

**The stale-resume rule.** A saved state is resumed only when its fingerprint equals the new run's
(:func:`fingerprint`): the data each sample gives the model (features, targets, phenotype labels, cells),
the bags of each role, the target statistics, the model settings, the training settings but the step
budget and patience (a larger budget or patience continues a finished run), the feature scope and, for a
run that starts from trained weights, where it starts (:func:`fingerprint`'s ``start``: the pretrained
checkpoint's sha256, the transfer mode, the LoRA settings). Anything else starts afresh; the state is then
overwritten by the new run's first round.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from bitro._atomic import atomic_path
from bitro.folds.inputs import FoldInputs
from bitro.genes.normalise import TargetTransform
from bitro.model.bitro import BiTroConfig
from bitro.train.config import TrainConfig


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: t.detach().cpu().contiguous() for name, t in state.items()}


def fingerprint(
    inputs: FoldInputs,
    transform: TargetTransform,
    config: BiTroConfig,
    train_config: TrainConfig,
    scope: str,
    start: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What a saved state must match to be resumed (module docstring), as it reads back from JSON."""
    digest = hashlib.sha256()
    for sample in inputs.samples:
        digest.update(sample.sample_id.encode())
        for array in (sample.features, sample.targets, sample.phenotype, sample.cell_rows):
            digest.update(np.ascontiguousarray(array).tobytes())
    for role in sorted(inputs.bags):
        digest.update(f"{role}:{[bag.key for bag in inputs.bags[role]]}".encode())
    record: dict[str, Any] = {
        "data_sha256": digest.hexdigest(),
        "transform": transform.to_dict(),
        "model": config.to_dict(),
        "train": {
            k: v for k, v in train_config.to_dict().items() if k not in ("max_steps", "patience_steps")
        },
        "scope": scope,
    }
    if start is not None:
        record["start"] = start
    return json.loads(json.dumps(record))


def save_state(
    folder: str | Path,
    *,
    model: torch.nn.Module,
    best: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    info: dict[str, Any],
) -> None:
    """Write the resume state (module docstring) atomically: ``state.safetensors`` and ``state.json``."""
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


def saved_fingerprint(folder: str | Path) -> tuple[bool, Any]:
    """Whether ``folder`` holds a complete resume state, and the fingerprint it was made with."""
    folder = Path(folder)
    if not (folder / "state.json").is_file() or not (folder / "state.safetensors").is_file():
        return False, None
    return True, json.loads((folder / "state.json").read_text())["info"].get("fingerprint")


def load_state(
    folder: str | Path, *, model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """Restore a resume state into ``model`` and ``optimizer``; None when there is none.

    Returns the best weights so far and the saved ``info``. Whether the state may be resumed at all is
    the caller's to check first (:func:`saved_fingerprint`).
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
