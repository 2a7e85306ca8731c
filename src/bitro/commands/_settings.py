"""The workflow's settings as the training verbs read them (their translation into a
:class:`~bitro.train.config.TrainConfig` is :func:`bitro.train.config.train_config_from_settings`).

The workflow passes its ``model:``, ``training:`` and ``transfer:`` sections to ``bitro train``,
``bitro transfer-pretrain`` and ``bitro transfer`` as ``--params-json`` (or a YAML file, ``--params``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bitro.errors import InputError


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
