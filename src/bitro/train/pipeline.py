"""The one way a model is trained on a fold: build, optional initial weights, optional adapter, fit, save.

Training from scratch (``bitro train``), pretraining (``bitro transfer-pretrain``) and fine-tuning
(``bitro transfer``, full or LoRA) all run :func:`train_on_fold`:

1. **build** (:func:`build_model`): fresh weights drawn after seeding torch with the training seed, or,
   when the :class:`Start` names a trained model, its weights with the per-gene rows selected by gene name
   (:func:`bitro.train.transfer.select_model_genes`);
2. **adapter**: with :class:`LoraOptions`, :func:`bitro.model.lora.apply_lora` freezes the base and the
   adapters, gene queries and readout train; without, every weight trains;
3. **fit** (:func:`bitro.train.fit.fit`): Adam with early stopping on the validation bags' gene loss,
   resumed from ``checkpoint/`` under the one stale-resume rule (:mod:`bitro.train.state`);
4. **score** the validation bags (:func:`bitro.train.validation.validation_scores`);
5. **save** (:func:`bitro.train.saved.save_trained`).

Writes into the run's folder: ``model.safetensors``, ``model.json``, ``adapter.safetensors`` (LoRA only),
``train_log.csv`` and ``checkpoint/``. A run cut short by ``stop_after`` writes no model, as a kill would.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from bitro.features.phenotype import Phenotypes
from bitro.folds.bags import Bag
from bitro.folds.inputs import FoldInputs
from bitro.folds.samples import SampleData
from bitro.folds.splits import Fold
from bitro.genes.normalise import TargetTransform
from bitro.model.bitro import BiTro, BiTroConfig
from bitro.model.lora import TRAINABLE_PREFIXES, apply_lora, trainable_parameter_names
from bitro.train.config import TrainConfig, TrainResult
from bitro.train.fit import fit
from bitro.train.saved import model_metadata, save_trained
from bitro.train.state import fingerprint
from bitro.train.transfer import select_model_genes
from bitro.train.validation import validation_scores

log = logging.getLogger("bitro")


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


@dataclass(frozen=True)
class Start:
    """Where a run's weights start.

    Attributes
    ----------
    model, genes
        A trained model (left unchanged) and its genes in output order; ``None``: fresh weights.
    lora
        LoRA settings: the start's weights are frozen and adapters train; ``None``: every weight trains.
    """

    model: BiTro | None = None
    genes: tuple[str, ...] = ()
    lora: LoraOptions | None = None

    def __post_init__(self) -> None:
        if self.lora is not None and self.model is None:
            raise ValueError("LoRA adapts trained weights: give the model to start from")


@dataclass
class Trained:
    """What :func:`train_model` returns.

    Attributes
    ----------
    model
        The trained model (LoRA injected when the start has adapters), holding its best validation weights.
    base
        The start's model with its genes selected, as training started from it (None for fresh weights).
    lora
        The LoRA settings or None.
    result
        What :func:`bitro.train.fit.fit` returned.
    trainable
        Names of the parameters that trained.
    """

    model: BiTro
    base: BiTro | None
    lora: LoraOptions | None
    result: TrainResult
    trainable: list[str]


def fresh_config(
    model_config: Mapping[str, Any] | None, n_genes: int, in_dim: int, *, zscore: bool
) -> BiTroConfig:
    """The model settings of a run from fresh weights: the workflow's ``model:`` section, with a Softplus
    output by default for targets that are not z-scored."""
    settings = dict(model_config or {})
    settings.setdefault("output", "identity" if zscore else "softplus")
    return BiTroConfig(n_genes=n_genes, in_dim=in_dim, **settings)


def start_config(start: Start, genes: Sequence[str], config: BiTroConfig | None) -> BiTroConfig:
    """The model settings a run trains: the start model's for ``genes``, else ``config``."""
    if start.model is not None:
        return replace(start.model.config, n_genes=len(genes))
    if config is None:
        raise ValueError("a run from fresh weights needs its model settings")
    return config


def build_model(
    start: Start, genes: Sequence[str], config: BiTroConfig | None, seed: int
) -> tuple[BiTro, BiTro | None]:
    """The model a run trains and the base it starts from (None for fresh weights).

    Torch is seeded with ``seed`` first: fresh weights and LoRA adapters are drawn from it.
    """
    torch.manual_seed(seed)
    if start.model is None:
        model, base = BiTro(start_config(start, genes, config)), None
    else:
        base = select_model_genes(start.model, start.genes, genes)
        model = copy.deepcopy(base)
    if start.lora is not None:
        options = start.lora
        targets = list(options.target_modules) if options.target_modules is not None else None
        apply_lora(model, options.r, options.alpha, options.dropout, targets)
    else:
        for param in model.parameters():
            param.requires_grad_(True)
    return model, base


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


def train_model(
    start: Start,
    genes: Sequence[str],
    train_bags: Sequence[Bag],
    validation_bags: Sequence[Bag],
    samples: Sequence[SampleData],
    transform: TargetTransform,
    config: TrainConfig,
    out_dir: str | Path,
    *,
    model_config: BiTroConfig | None = None,
    run_fingerprint: dict[str, Any] | None = None,
    device: str = "cpu",
    progress: bool = True,
    stop_after: int | None = None,
) -> Trained:
    """Steps 1–3 of the module docstring on bags already cut; writes ``train_log.csv`` and ``checkpoint/``.

    Parameters
    ----------
    start, genes
        Where the weights start and the genes to predict (the bags' targets and ``transform`` follow them).
    train_bags, validation_bags, samples, transform, config, out_dir, device, progress, stop_after
        As for :func:`bitro.train.fit.fit`.
    model_config
        The model settings of a run from fresh weights (:func:`fresh_config`).
    run_fingerprint
        What a saved state must match to be resumed (:func:`bitro.train.state.fingerprint`).

    Raises
    ------
    RuntimeError
        A frozen base weight changed during LoRA training.
    """
    if tuple(transform.genes) != tuple(genes):
        raise ValueError("the target statistics are not in the order of the genes")
    model, base = build_model(start, genes, model_config, config.seed)
    trainable = [p for p in model.parameters() if p.requires_grad]
    names = trainable_parameter_names(model)
    log.info(
        "%d of %d parameters train",
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
        stop_after=stop_after,
        parameters=lambda: trainable,
        fingerprint=run_fingerprint,
    )
    if start.lora is not None and base is not None:
        changed = _frozen_changes(model, base)
        if changed:
            raise RuntimeError(f"LoRA fine-tuning changed frozen base weights: {changed[:5]}")
    return Trained(model=model.eval(), base=base, lora=start.lora, result=result, trainable=names)


def train_on_fold(
    inputs: FoldInputs,
    genes: Sequence[str],
    transform: TargetTransform,
    out_dir: str | Path,
    *,
    label: str,
    fold: Fold,
    train_config: TrainConfig,
    start: Start | None = None,
    model_config: BiTroConfig | None = None,
    origin: dict[str, Any] | None = None,
    phenotypes: Phenotypes | None = None,
    features: dict[str, Any] | None = None,
    record: Callable[[Trained], dict[str, Any]] | None = None,
    device: str = "cpu",
    progress: bool = True,
    stop_after: int | None = None,
) -> TrainResult:
    """Train a model on a fold's loaded inputs and save it into ``out_dir`` (module docstring).

    Parameters
    ----------
    inputs, genes, transform
        The fold's samples and bags (``train`` and ``validation``), the genes, the target statistics
        (fitted on the training bags).
    label
        Names the run in the log.
    fold, train_config, phenotypes
        Recorded in ``model.json``; the phenotypes already label ``inputs``.
    start, model_config
        Where the weights start (default: fresh) and, for fresh weights, the model settings.
    origin
        What identifies a non-fresh start for the stale-resume rule (the pretrained checkpoint's sha256,
        the mode, the LoRA settings).
    features
        ``model.json``'s ``features`` record (default: per-sample features, no basis).
    record
        Extra ``model.json`` keys, made from the trained model (pretraining and transfer records).
    """
    start = start or Start()
    features = features or {"scope": "sample", "basis": None}
    config = start_config(start, genes, model_config)
    log.info(
        "%s: %d training and %d validation bags, %d genes",
        label,
        len(inputs.bags["train"]),
        len(inputs.bags["validation"]),
        len(genes),
    )
    trained = train_model(
        start,
        genes,
        inputs.bags["train"],
        inputs.bags["validation"],
        inputs.samples,
        transform,
        train_config,
        out_dir,
        model_config=config,
        run_fingerprint=fingerprint(inputs, transform, config, train_config, features["scope"], origin),
        device=device,
        progress=progress,
        stop_after=stop_after,
    )
    result = trained.result
    if not result.completed:
        return result  # as if killed: no model is written until the run ends
    scores = validation_scores(trained.model, inputs, transform, device=device)
    metadata = model_metadata(genes, transform, phenotypes, features, fold, train_config, result, scores)
    if record is not None:
        metadata |= record(trained)
    save_trained(trained.model, metadata, out_dir, base=trained.base)
    log.info("%s: validation %s", label, json.dumps(scores))
    return result
