"""The ``versions`` check: Python and the packages bitro needs, against the pins of
``requirements/cpu.txt`` (a different version warns, a missing required package fails)."""

from __future__ import annotations

import importlib.metadata as metadata
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from bitro.doctor.report import Result

#: The Python the pins were verified on (envs/bitro.yaml, requirements/cpu.txt).
PYTHON = (3, 11)
#: Packages every rule's environment needs (envs/bitro.yaml): missing is a failure.
REQUIRED_PACKAGES = (
    "torch",
    "torch-geometric",
    "peft",
    "transformers",
    "safetensors",
    "anndata",
    "scanpy",
    "numpy",
    "pandas",
    "scipy",
    "scikit-learn",
    "scikit-image",
    "h5py",
    "zarr",
    "tifffile",
    "imagecodecs",
    "openslide-python",
    "pyarrow",
    "geopandas",
    "shapely",
    "PyYAML",
    "jsonschema",
    "tqdm",
)
#: Reported when present: only the environment that runs Snakemake needs these.
OPTIONAL_PACKAGES = ("snakemake", "snakemake-executor-plugin-slurm", "openslide-bin", "pyvips")


def normalise_name(name: str) -> str:
    """PEP 503 name: lower case, runs of ``-_.`` as one ``-``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path: Path) -> dict[str, str]:
    """``name==version`` lines of a requirements file, by normalised name."""
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        match = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*==\s*([^\s;#]+).*", line)
        if match:
            pins[normalise_name(match.group(1))] = match.group(2)
    return pins


def _public(version: str) -> str:
    """The version without its local label (``2.13.0+cu128`` → ``2.13.0``)."""
    return version.split("+", 1)[0]


def check_python(version: tuple[int, int] | None = None) -> Result:
    """Python 3.11 is what the pins were verified on; older fails, newer warns."""
    major, minor = version or sys.version_info[:2]
    text = f"Python {major}.{minor} ({sys.executable})"
    if (major, minor) < PYTHON:
        return Result("versions", "python", "fail", f"{text}: bitro needs Python >= 3.11")
    if (major, minor) != PYTHON:
        return Result("versions", "python", "warn", f"{text}: the pinned stack is verified on Python 3.11")
    return Result("versions", "python", "ok", text)


def check_package(name: str, pins: Mapping[str, str], pins_path: Path | None, *, required: bool) -> Result:
    """One package: installed (required ones must be), and at its pinned version."""
    pin = pins.get(normalise_name(name))
    try:
        installed = metadata.version(name)
    except metadata.PackageNotFoundError:
        if not required:
            return Result("versions", name, "skip", "not installed (optional here)")
        wanted = f"{name}=={pin}" if pin else name
        return Result("versions", name, "fail", f"not installed: pip install {wanted} (requirements/cpu.txt)")
    if pin is None:
        note = "" if pins_path is None else f" (not pinned in {pins_path})"
        return Result("versions", name, "ok", installed + note)
    if _public(installed) != pin:
        return Result("versions", name, "warn", f"{installed} installed, {pins_path} pins {pin}")
    return Result("versions", name, "ok", installed)


def check_versions(
    pins_path: Path | None,
    *,
    required: Sequence[str] = REQUIRED_PACKAGES,
    optional: Sequence[str] = OPTIONAL_PACKAGES,
) -> list[Result]:
    """Python and every package, against the pins of ``pins_path`` (``requirements/cpu.txt``) if present."""
    results = [check_python()]
    pins: dict[str, str] = {}
    if pins_path is not None and pins_path.is_file():
        pins = read_pins(pins_path)
    else:
        results.append(
            Result(
                "versions", "pins", "skip", "requirements/cpu.txt not found (--repo): versions not compared"
            )
        )
        pins_path = None
    results.append(check_package("bitro", {}, None, required=True))
    results += [check_package(name, pins, pins_path, required=True) for name in required]
    results += [check_package(name, pins, pins_path, required=False) for name in optional]
    return results
