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
  slide; invalid outlines repaired and counted). A prediction-only cohort (``format: slides``): its sheet
  (``sample_id``, optional ``patient_id``, ``mpp``, ``file``; no duplicated or empty ids), and each slide
  exists, opens and has a known µm/px in that range;
- ``cohort``: the sample sheet agrees with the TCGA barcodes, the cohort has enough samples or patients
  for its split, and ``genes.n_genes`` does not exceed the genes every sample measures (unless
  ``genes.up_to``). It runs with ``slides``, from what that check read.

One module per family (:mod:`bitro.doctor.config`, ``versions``, ``weights``, ``gpu``, ``slides``,
``cohort``); :func:`run_doctor` runs them all.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from bitro.doctor.cohort import (
    check_protocol,
    cohort_level,
    is_prediction_only,
    sheet_patients,
    sheet_problems,
)
from bitro.doctor.common import (
    MPP_RANGE,
    CohortContext,
    _guard,
    _section,
    cohort_segmentation,
    find_repo,
    mpp_range,
    resolve,
)
from bitro.doctor.config import check_config
from bitro.doctor.gpu import check_gpu, gpu_requests, nvidia_smi_gpus, torch_gpus
from bitro.doctor.report import STATUSES, Report, Result, Status
from bitro.doctor.slides import (
    check_cohort,
    check_sample,
    check_segmentation,
    layout_files,
    open_slide_dims,
    probe_slide,
    read_sheet,
    read_slides_sheet_rows,
    segmentation_file,
)
from bitro.doctor.versions import (
    OPTIONAL_PACKAGES,
    PYTHON,
    REQUIRED_PACKAGES,
    check_package,
    check_python,
    check_versions,
    normalise_name,
    read_pins,
)
from bitro.doctor.weights import (
    CELLVIT_HELP,
    DEFAULT_DINOV3,
    EFFICIENTNET_LITE0_SHA256,
    SHA256SUMS,
    WeightsSpec,
    cellvit_spec,
    check_all_weights,
    check_weights,
    encoder_spec,
    read_sha256sums,
)

__all__ = [
    "CELLVIT_HELP",
    "CHECKS",
    "DEFAULT_DINOV3",
    "EFFICIENTNET_LITE0_SHA256",
    "MPP_RANGE",
    "OPTIONAL_PACKAGES",
    "PYTHON",
    "REQUIRED_PACKAGES",
    "SHA256SUMS",
    "STATUSES",
    "CohortContext",
    "Report",
    "Result",
    "Status",
    "WeightsSpec",
    "cellvit_spec",
    "check_all_weights",
    "check_cohort",
    "check_config",
    "check_gpu",
    "check_package",
    "check_protocol",
    "check_python",
    "check_sample",
    "check_segmentation",
    "check_versions",
    "check_weights",
    "cohort_level",
    "cohort_segmentation",
    "encoder_spec",
    "find_repo",
    "gpu_requests",
    "is_prediction_only",
    "layout_files",
    "mpp_range",
    "normalise_name",
    "nvidia_smi_gpus",
    "open_slide_dims",
    "probe_slide",
    "read_pins",
    "read_sha256sums",
    "read_sheet",
    "read_slides_sheet_rows",
    "resolve",
    "run_doctor",
    "segmentation_file",
    "sheet_patients",
    "sheet_problems",
    "torch_gpus",
]

CHECKS = ("config", "versions", "weights", "gpu", "slides", "cohort")


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
