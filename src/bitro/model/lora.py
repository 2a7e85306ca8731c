"""LoRA fine-tuning of a pretrained BiTro with peft (paper §3.5).

LoRA goes on the parameter-heavy linears the paper names — the feature projections, the self-attention
projections and the feed-forward layers — listed by their exact module names (never ``"all-linear"``):

- ``gat.input_proj`` (when ``in_dim != dim``) and ``gat.layers.{l}.proj`` (head projections);
- ``transformer.fuse`` (features ⊕ positions → D);
- ``transformer.blocks.{l}.attn.{q,k,v,out}`` and ``transformer.blocks.{l}.{ff1,ff2}``.

Every base weight is frozen, including ``GATConv``'s per-head weights (PyG's own ``Linear``, which peft
cannot adapt), LayerNorms and the position tables. The task head — gene queries and readout (``mil.*``) —
stays fully trainable, because a new cohort brings new genes and a new target scale.

:func:`save_lora` writes only the trainable tensors (adapters + head) and the head's buffers (the
running moments of ``pooled_norm``, which fine-tuning moves) as safetensors, with the LoRA settings in
the metadata; :func:`load_lora` re-applies LoRA to a freshly built base model and loads them,
failing on any missing, unexpected or mis-shaped tensor (docs/pitfalls.md#weights-that-do-not-fit-fail).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from bitro._atomic import atomic_path
from bitro.errors import WeightsError
from bitro.model.bitro import BiTro

METADATA_KEY = "bitro_lora"
TRAINABLE_PREFIXES = ("mil.",)


@dataclass(frozen=True)
class LoraSettings:
    """How LoRA was applied; stored with the adapter file."""

    r: int
    alpha: int
    dropout: float
    target_modules: tuple[str, ...]


def lora_target_modules(model: BiTro) -> list[str]:
    """Exact names of the ``nn.Linear`` modules LoRA adapts (see the module docstring)."""
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.Linear) or name.startswith(TRAINABLE_PREFIXES):
            continue
        leaf = name.rsplit(".", 1)[-1]
        if leaf in {"input_proj", "proj", "fuse", "q", "k", "v", "out", "ff1", "ff2"}:
            names.append(name)
    return names


def lora_settings(model: nn.Module) -> LoraSettings | None:
    """The settings LoRA was applied with, or None for a plain model."""
    return getattr(model, "_bitro_lora", None)


def apply_lora(
    model: BiTro,
    r: int = 8,
    alpha: int = 16,
    dropout: float = 0.05,
    target_modules: list[str] | None = None,
) -> list[str]:
    """Inject LoRA adapters in place, freeze the base and keep the gene queries and readout trainable.

    Parameters
    ----------
    model
        A (pretrained) :class:`~bitro.model.bitro.BiTro`.
    r, alpha, dropout
        LoRA rank, scaling numerator (scale = alpha / r) and dropout on the adapter input.
    target_modules
        Exact module names to adapt; default :func:`lora_target_modules`. Each must be an ``nn.Linear``.

    Returns
    -------
    list[str]
        Names of the trainable parameters (adapters, gene queries, readout).
    """
    if lora_settings(model) is not None:
        raise ValueError("LoRA is already applied to this model")
    if isinstance(target_modules, str):
        raise ValueError("target_modules must be a list of exact module names, not a pattern")
    targets = lora_target_modules(model) if target_modules is None else list(target_modules)
    modules = dict(model.named_modules())
    for name in targets:
        if not isinstance(modules.get(name), nn.Linear):
            raise ValueError(f"LoRA target {name!r} is not an nn.Linear of the model")
    if not targets:
        raise ValueError("no LoRA target modules")
    # peft (and the transformers it imports) costs a second at start-up: only fine-tuning needs it.
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none")
    inject_adapter_in_model(config, model)
    for name, param in model.named_parameters():
        param.requires_grad_("lora_" in name or name.startswith(TRAINABLE_PREFIXES))
    model._bitro_lora = LoraSettings(r, alpha, dropout, tuple(targets))
    return trainable_parameter_names(model)


def trainable_parameter_names(model: nn.Module) -> list[str]:
    """Names of the parameters with ``requires_grad``."""
    return [name for name, param in model.named_parameters() if param.requires_grad]


def head_buffer_names(model: nn.Module) -> list[str]:
    """Names of the task head's buffers (e.g. ``pooled_norm``'s running moments): fine-tuning updates
    them with the head, so they travel with the adapters."""
    return [name for name, _ in model.named_buffers() if name.startswith(TRAINABLE_PREFIXES)]


def trainable_state(model: nn.Module) -> dict[str, Tensor]:
    """The trainable tensors (adapters + head) and the head's buffers, detached, contiguous, on the CPU."""
    buffers = dict(model.named_buffers())
    return {
        name: param.detach().cpu().contiguous()
        for name, param in model.named_parameters()
        if param.requires_grad
    } | {name: buffers[name].detach().cpu().contiguous() for name in head_buffer_names(model)}


def save_lora(model: BiTro, path: str | os.PathLike[str], metadata: dict[str, str] | None = None) -> None:
    """Write the adapters and the trainable head as safetensors, with the LoRA settings in the metadata.

    Parameters
    ----------
    model
        A model that :func:`apply_lora` was applied to.
    path
        Output ``.safetensors`` file (written atomically).
    metadata
        Extra string metadata (e.g. gene names as JSON, the base checkpoint's sha256).
    """
    settings = lora_settings(model)
    if settings is None:
        raise ValueError("the model has no LoRA adapters; call apply_lora first")
    meta = dict(metadata or {})
    if METADATA_KEY in meta:
        raise ValueError(f"metadata key {METADATA_KEY!r} is reserved")
    meta[METADATA_KEY] = json.dumps(asdict(settings))
    with atomic_path(path) as tmp:
        save_file(trainable_state(model), str(tmp), metadata=meta)


def read_lora_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The string metadata of an adapter file (including :data:`METADATA_KEY`)."""
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def load_lora(model: BiTro, path: str | os.PathLike[str]) -> list[str]:
    """Apply LoRA as recorded in ``path`` (unless already applied identically) and load its tensors.

    Parameters
    ----------
    model
        The base model (pretrained weights loaded) or a model LoRA was applied to with the same settings.
    path
        A file written by :func:`save_lora`.

    Returns
    -------
    list[str]
        Names of the trainable parameters.

    Raises
    ------
    WeightsError
        Missing settings, different settings, or tensors that do not match the model's trainable
        parameters exactly (name set and shapes).
    """
    meta = read_lora_metadata(path)
    if METADATA_KEY not in meta:
        raise WeightsError(path, f"not a bitro LoRA file (no {METADATA_KEY!r} metadata)")
    raw = json.loads(meta[METADATA_KEY])
    settings = LoraSettings(raw["r"], raw["alpha"], raw["dropout"], tuple(raw["target_modules"]))
    current = lora_settings(model)
    if current is None:
        apply_lora(model, settings.r, settings.alpha, settings.dropout, list(settings.target_modules))
    elif current != settings:
        raise WeightsError(path, f"LoRA settings {settings} differ from the model's {current}")
    params = dict(model.named_parameters()) | dict(model.named_buffers())
    expected = set(trainable_parameter_names(model)) | set(head_buffer_names(model))
    with safe_open(str(path), framework="pt") as f:
        keys = set(f.keys())
        missing, unexpected = sorted(expected - keys), sorted(keys - expected)
        if missing or unexpected:
            raise WeightsError(
                path, f"tensors do not match the model: missing {missing}, unexpected {unexpected}"
            )
        with torch.no_grad():
            for name in sorted(keys):
                tensor = f.get_tensor(name)
                want = tuple(params[name].shape)
                if tuple(tensor.shape) != want:
                    raise WeightsError(path, f"{name} has shape {tuple(tensor.shape)}, the model {want}")
                params[name].copy_(tensor)
    return trainable_parameter_names(model)
