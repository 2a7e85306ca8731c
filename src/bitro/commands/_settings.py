"""The workflow's settings as the training verbs read them: one translation of ``training:`` to
:class:`~bitro.train.fit.TrainConfig`.

The workflow passes its ``model:``, ``training:`` and ``transfer:`` sections to ``bitro train``,
``bitro transfer-pretrain`` and ``bitro transfer`` as ``--params-json`` (or a YAML file, ``--params``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bitro.errors import ConfigError, InputError

if TYPE_CHECKING:
    from bitro.train.fit import TrainConfig

#: Keys of ``training:`` that are the workflow's, not :class:`bitro.train.fit.TrainConfig`'s.
WORKFLOW_KEYS = ("gpu", "phenotypes_k", "feature_scope", "zscore")


def read_settings(params: str | Path | None, params_json: str | None) -> dict[str, Any]:
    """The settings from ``--params-json`` (preferred) or the YAML file ``--params``; ``{}`` for neither.

    Raises
    ------
    InputError
        The JSON or YAML does not parse, or is not a mapping.
    """
    import yaml

    if params_json:
        try:
            settings = json.loads(params_json)
        except json.JSONDecodeError as exc:
            raise InputError("--params-json", f"is not valid JSON ({exc})") from exc
        where: str | Path = "--params-json"
    elif params:
        try:
            settings = yaml.safe_load(Path(params).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise InputError(params, f"is not a readable YAML file ({exc})") from exc
        where = params
    else:
        return {}
    if not isinstance(settings, dict):
        raise InputError(where, "the settings are not a mapping")
    return dict(settings)


def train_config(
    settings: dict[str, Any], *, stage: str | None = None, max_steps: int | None = None
) -> TrainConfig:
    """The :class:`~bitro.train.fit.TrainConfig` that the workflow's settings ask for.

    Parameters
    ----------
    settings
        The workflow's settings: ``training:`` (less :data:`WORKFLOW_KEYS`) gives the fields.
    stage
        ``pretrain`` or ``finetune``: ``transfer.<stage>`` overrides ``training:`` for that stage.
    max_steps
        ``--max-steps``: overrides everything else.

    Raises
    ------
    ConfigError
        A key that is not a training setting, or a value it refuses.
    """
    from bitro.train.fit import TrainConfig

    training = dict(settings.get("training", {}))
    for key in WORKFLOW_KEYS:
        training.pop(key, None)
    if stage is not None:
        training |= dict(settings.get("transfer", {}).get(stage, {}))
    if max_steps is not None:
        training["max_steps"] = max_steps
    try:
        return TrainConfig(**training)
    except (TypeError, ValueError) as exc:
        where = "training" if stage is None else f"training, transfer.{stage}"
        raise ConfigError(where, str(exc)) from exc
