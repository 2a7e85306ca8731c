"""The settings of a training run and how it ended (:class:`TrainConfig`, :class:`TrainResult`), and the
one translation of the workflow's settings into a :class:`TrainConfig`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from bitro.errors import ConfigError


@dataclass
class TrainConfig:
    """Training settings (defaults from the paper's Appendix C.2 where it gives them)."""

    lr: float = 1e-4
    weight_decay: float = 0.0
    #: The paper's budget (100 epochs, patience 6, batch 32) restated in optimiser steps for a cohort of
    #: about 5,000 training spots (160 steps an epoch), so that a smaller cohort trains as long.
    max_steps: int = 16_000
    patience_steps: int = 1_000
    eval_every_steps: int = 160
    clip_norm: float = 1.0
    batch_bags: int = 32
    #: Bags per step when every training bag is a whole slide (bulk): multiple-instance learning on
    #: slides steps once per slide, so a cohort of a few dozen slides still takes many steps an epoch.
    slide_batch_bags: int = 1
    lambda_cluster: float = 0.1
    max_units_per_bag: int = 64
    seed: int = 0
    bf16: bool = True

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __post_init__(self) -> None:
        for name in ("max_steps", "patience_steps", "eval_every_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")


@dataclass
class TrainResult:
    """How a run ended. ``completed`` is false when ``stop_after`` cut it short, as a kill would."""

    best_epoch: int
    best_step: int
    best_val_loss: float
    epochs_run: int
    steps_run: int
    history: list[dict[str, float]] = field(default_factory=list)
    stopped_early: bool = False
    completed: bool = True

    @property
    def best_at_first_check(self) -> bool:
        """The best validation loss came at the first check: the kept weights are barely trained."""
        return bool(self.history) and self.best_step == self.history[0]["step"]

    def to_dict(self) -> dict[str, Any]:
        """What ``model.json`` records of the run."""
        return {
            "best_epoch": self.best_epoch,
            "best_step": self.best_step,
            "best_val_loss": self.best_val_loss,
            "epochs_run": self.epochs_run,
            "steps_run": self.steps_run,
            "stopped_early": self.stopped_early,
            "best_at_first_check": self.best_at_first_check,
        }


#: Keys of the workflow's ``training:`` section that are the workflow's own, not :class:`TrainConfig`'s.
WORKFLOW_KEYS = ("gpu", "phenotypes_k", "feature_scope", "zscore")


def train_config_from_settings(
    settings: Mapping[str, Any], *, stage: str | None = None, max_steps: int | None = None
) -> TrainConfig:
    """The one translation of the workflow's settings into a :class:`TrainConfig`.

    ``settings`` holds the workflow's ``training:`` section (its :data:`WORKFLOW_KEYS` are dropped); a
    transfer ``stage`` (``pretrain`` or ``finetune``) lays ``transfer: {<stage>: {...}}`` over it;
    ``max_steps`` (the verbs' ``--max-steps``) overrides the budget.
    """
    training = {k: v for k, v in dict(settings.get("training") or {}).items() if k not in WORKFLOW_KEYS}
    if stage is not None:
        training |= dict(dict(settings.get("transfer") or {}).get(stage) or {})
    if max_steps is not None:
        training["max_steps"] = max_steps
    try:
        return TrainConfig(**training)
    except (TypeError, ValueError) as exc:
        where = "training" if stage is None else f"training, transfer.{stage}"
        raise ConfigError(where, str(exc)) from exc
