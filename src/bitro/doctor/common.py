"""What the check families share: the repository, config sections, a guard around each check, and
the context of one cohort's checks."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bitro.doctor.report import Result

#: Sane range of level-0 µm/px for H&E (40x scanners ≈ 0.25, 20x ≈ 0.5); ``doctor.mpp_range`` overrides it.
MPP_RANGE = (0.1, 2.0)


def find_repo() -> Path | None:
    """The checkout bitro runs from (editable install), or ``None`` when it is installed elsewhere."""
    here = Path(__file__).resolve().parents[3]  # src/bitro/doctor/common.py
    return here if (here / "requirements" / "cpu.txt").is_file() else None


def resolve(path: str | Path, repo: Path | None) -> Path:
    """``path`` as given when absolute or present from the working directory, else under ``repo``.

    The workflow's ``repo_path`` does the same for config paths.
    """
    given = Path(path)
    if given.is_absolute() or given.exists() or repo is None:
        return given
    return repo / given if (repo / given).exists() else given


def _section(config: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = config.get(key)
    return dict(value) if isinstance(value, Mapping) else {}


def cohort_segmentation(config: Mapping[str, Any], cohort: Mapping[str, Any]) -> dict[str, Any]:
    """The global segmentation settings overridden by the cohort's own (as the workflow merges them)."""
    return _section(config, "segmentation") | _section(cohort, "segmentation")


def mpp_range(config: Mapping[str, Any]) -> tuple[float, float]:
    """``doctor.mpp_range`` from the config, else :data:`MPP_RANGE`."""
    value = _section(config, "doctor").get("mpp_range")
    return (float(value[0]), float(value[1])) if value else MPP_RANGE


def _guard(check: str, subject: str, run: Callable[[], list[Result]]) -> list[Result]:
    """Run one family of checks; an unexpected error becomes one failure instead of a crash."""
    try:
        return run()
    except Exception as exc:
        return [Result(check, subject, "fail", f"the check could not run: {type(exc).__name__}: {exc}")]


@dataclass
class CohortContext:
    """What the per-sample checks of one cohort share."""

    name: str
    fmt: str
    root: Path
    mpp_range: tuple[float, float]
    crops_mpp: float
    segmentation: dict[str, Any]
    expression: Any = None  # TCGA: the cohort's TPM table, read once
    genes: dict[str, set[str]] = field(default_factory=dict)  # sample → genes measured (readable samples)
    files: dict[str, str] = field(default_factory=dict)  # slides: sample → the sheet's file column
