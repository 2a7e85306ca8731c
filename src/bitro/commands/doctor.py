"""``bitro doctor``: the preflight check the workflow runs before a cohort's first job."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bitro._atomic import atomic_path
from bitro.errors import InputError, UsageError
from bitro.options import FORMAT_LEVELS, FORMATS

#: Content of ``--stamp``: fixed, so that Snakemake, which compares small inputs by checksum, sees a
#: rewritten stamp as unchanged.
STAMP = "bitro doctor: no check failed\n"


def _checks(text: str) -> list[str]:
    """``--skip slides,gpu`` → ``["slides", "gpu"]`` (each a known check)."""
    from bitro.doctor import CHECKS

    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown check(s) {unknown}; choose from {', '.join(CHECKS)}")
    return names


def load_config(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """The config from ``--config`` (YAML) or ``--config-json``, and how to name it in the report."""
    import yaml

    if args.config_json is not None:
        try:
            config = json.loads(args.config_json)
        except json.JSONDecodeError as exc:
            raise InputError("--config-json", f"is not valid JSON ({exc})") from exc
        source = "the workflow's config"
    elif args.config is not None:
        if not args.config.is_file():
            raise InputError(args.config, "config file not found")
        try:
            config = yaml.safe_load(args.config.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise InputError(args.config, f"is not valid YAML ({exc})") from exc
        source = str(args.config)
    else:
        config, source = {}, "the environment (no --config)"
    if not isinstance(config, dict):
        raise InputError(args.config or "--config-json", "the config is not a mapping")
    return config, source


def _with_sheet(config: dict[str, Any], args: argparse.Namespace) -> tuple[dict[str, Any], list[str] | None]:
    """Apply ``--samples``: a cohort's sheet replaced, or a cohort made of ``--format --root``."""
    cohorts = dict(config.get("cohorts") or {})
    if args.samples is None:
        return config, args.cohort
    if args.format is not None and args.root is not None:
        name = args.cohort[0] if args.cohort else args.samples.stem
        cohort = {"format": args.format, "root": str(args.root)}
        if args.format in FORMAT_LEVELS:  # a prediction-only layout measures no level
            cohort["level"] = FORMAT_LEVELS[args.format]
    elif args.cohort and len(args.cohort) == 1 and args.cohort[0] in cohorts:
        name, cohort = args.cohort[0], dict(cohorts[args.cohort[0]])
    else:
        raise UsageError("--samples", "needs --format and --root, or one --cohort of the config")
    cohort |= {"samples": str(args.samples), "generated_by_demo": False}
    return config | {"cohorts": cohorts | {name: cohort}}, [name]


def _cmd_doctor(args: argparse.Namespace) -> int:
    """Run the checks and write the report; exit status 1 when a check failed."""
    from bitro.doctor import run_doctor

    config, source = load_config(args)
    config, cohorts = _with_sheet(config, args)
    try:
        report = run_doctor(
            config,
            cohorts=cohorts,
            skip=args.skip,
            repo=args.repo,
            gpu_elsewhere=args.gpu_elsewhere,
            limits=tuple(args.mpp_range) if args.mpp_range else None,
            validate=args.config_json is None and args.config is not None and args.samples is None,
            source=source + (f", cohort(s) {', '.join(cohorts)}" if cohorts else ""),
        )
    except ValueError as exc:  # an unknown --cohort or --skip
        raise UsageError("--cohort", str(exc)) from exc
    text = report.to_text()
    if args.out is not None:
        with atomic_path(args.out) as tmp:
            tmp.write_text(text, encoding="utf-8")
    if args.json is not None:
        with atomic_path(args.json) as tmp:
            tmp.write_text(report.to_json(), encoding="utf-8")
    if args.stamp is not None and report.ok:
        with atomic_path(args.stamp) as tmp:
            tmp.write_text(STAMP, encoding="utf-8")
    print(text, end="")
    if not report.ok:
        failed = sum(r.status == "fail" for r in report.results)
        print(f"bitro doctor: {failed} check(s) failed (listed above)", file=sys.stderr)
        return 1
    return 0


def register(verbs: argparse._SubParsersAction) -> None:
    """Add ``bitro doctor`` to the ``bitro`` parser."""
    doctor = verbs.add_parser(
        "doctor",
        help="preflight: package versions, weights (sha256, or their tensors), GPU, every sample's files, "
        "slide, expression and segmentation, and whether each cohort can be split; exits 1 when a check "
        "fails",
    )
    source = doctor.add_mutually_exclusive_group()
    source.add_argument("--config", type=Path, default=None, help="the workflow config (YAML)")
    source.add_argument("--config-json", default=None, help="the config as one JSON object (the workflow)")
    doctor.add_argument("--cohort", action="append", default=None, help="check this cohort only (repeatable)")
    doctor.add_argument(
        "--samples",
        type=Path,
        default=None,
        help="check this sample sheet: instead of one --cohort's, or as a cohort of --format and --root",
    )
    doctor.add_argument("--format", choices=FORMATS, default=None, help="layout of --samples' cohort")
    doctor.add_argument("--root", type=Path, default=None, help="root directory of --samples' cohort")
    doctor.add_argument(
        "--skip",
        type=_checks,
        action="extend",
        default=[],
        help="leave out checks, comma-separated: config, versions, weights, gpu, slides, cohort",
    )
    doctor.add_argument(
        "--mpp-range",
        nargs=2,
        type=float,
        metavar=("MIN", "MAX"),
        default=None,
        help="sane level-0 µm/px (default doctor.mpp_range, else 0.1 2)",
    )
    doctor.add_argument(
        "--gpu-elsewhere",
        action="store_true",
        help="GPU jobs run on other nodes (a cluster): a GPU not visible here only warns",
    )
    doctor.add_argument(
        "--repo",
        type=Path,
        default=None,
        help="the bitro checkout (requirements/cpu.txt, workflow/schemas, resources/); "
        "default: the one bitro is installed from",
    )
    doctor.add_argument("--out", type=Path, default=None, help="also write the text report here")
    doctor.add_argument("--json", type=Path, default=None, help="also write the report as JSON here")
    doctor.add_argument(
        "--stamp",
        type=Path,
        default=None,
        help="write this file, always with the same content, when no check failed (what the workflow's "
        "first per-sample jobs wait for: rewriting it does not make them rerun)",
    )
    doctor.set_defaults(func=_cmd_doctor)
