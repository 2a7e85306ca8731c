"""The ``config`` check: the config validates against ``workflow/schemas/config.schema.yaml``."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bitro.doctor.report import Result


def check_config(config: Mapping[str, Any], repo: Path | None) -> list[Result]:
    """Validate ``config`` against the workflow's JSON schema (every error reported)."""
    schema_path = None if repo is None else repo / "workflow" / "schemas" / "config.schema.yaml"
    if schema_path is None or not schema_path.is_file():
        return [Result("config", "schema", "skip", "workflow/schemas/config.schema.yaml not found (--repo)")]
    import jsonschema
    import yaml

    schema = yaml.safe_load(schema_path.read_text(encoding="utf-8"))
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(dict(config)), key=lambda e: list(map(str, e.absolute_path)))
    if not errors:
        return [Result("config", "schema", "ok", f"valid against {schema_path}")]
    return [
        Result(
            "config", ".".join(map(str, e.absolute_path)) or "(top)", "fail", f"{e.message} ({schema_path})"
        )
        for e in errors
    ]
