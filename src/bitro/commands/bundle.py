"""The bundle verbs: ``export-model`` (a portable model bundle), ``predict-sample`` (apply one to a sample
folder), ``predictions-table`` (the cohort's ``bulk.tsv``) and ``predict-slide`` (one bare slide, every
per-sample step in one process)."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from bitro.commands._sample import add_sample_args, read_args_sample
from bitro.errors import InputError

log = logging.getLogger("bitro")


def _json_option(text: str, option: str) -> dict[str, Any]:
    """A JSON mapping given on the command line."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(option, f"is not valid JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise InputError(option, "is not a JSON mapping")
    return value


def _genes(text: str | None) -> list[str] | None:
    return [g.strip() for g in text.split(",") if g.strip()] if text else None


def _cohort_counts(samples_dir: Path, samples: list[str]) -> dict[str, int]:
    """The training cohort's units and cells, counted from its samples' tables (row counts only)."""
    import pyarrow.parquet as pq

    from bitro.layout import SampleFile

    def rows(name: str) -> int:
        return sum(pq.ParquetFile(Path(samples_dir) / s / name).metadata.num_rows for s in samples)

    return {"n_units": rows(SampleFile.UNITS), "n_cells": rows(SampleFile.CELLS)}


def _cmd_export_model(args: argparse.Namespace) -> None:
    from bitro.bundle import export_bundle
    from bitro.io.validate import require_file

    description = require_file(args.embeddings_description, "embeddings description")
    cohort = _json_option(args.cohort_json, "--cohort-json")
    if args.samples_dir is not None:
        cohort = cohort | _cohort_counts(args.samples_dir, cohort.get("samples", []))
    export_bundle(
        args.model_dir,
        args.out,
        basis=args.basis,
        stain_reference=args.stain_reference,
        embeddings_description=_json_option(description.read_text(), str(description)),
        settings=_json_option(args.settings_json, "--settings-json"),
        cohort=cohort,
        cv_metrics=args.cv_metrics,
        gene_pcc_table=args.gene_pcc,
        make_zip=not args.no_zip,
    )


def _cmd_predict_sample(args: argparse.Namespace) -> None:
    from bitro.bundle import chosen_genes, load_bundle
    from bitro.predict.apply import apply_bundle, check_sample_features

    bundle = load_bundle(args.bundle, device=args.device)
    check_sample_features(bundle, args.sample_dir)
    genes = chosen_genes(bundle, _genes(args.genes), args.n_genes)
    sample = read_args_sample(args)
    apply_bundle(
        bundle,
        args.sample_dir,
        args.out_dir,
        slide=sample.slide_path,
        mpp=sample.mpp,
        genes=genes,
        sample_id=sample.sample_id,
        device=args.device,
        dpi=args.dpi,
    )


def _cmd_predictions_table(args: argparse.Namespace) -> None:
    from bitro.predict.bulk import gather_profiles, write_bulk_table

    table = gather_profiles(args.profiles)
    write_bulk_table(table, args.out)
    log.info("%d slides -> %s", len(table), args.out)


def _cmd_predict_slide(args: argparse.Namespace) -> None:
    from bitro.bundle import load_bundle
    from bitro.predict.whole_slide import predict_slide

    bundle = load_bundle(args.bundle, device=args.device)
    written = predict_slide(
        bundle,
        args.slide,
        args.out,
        mpp=args.mpp,
        encoder_weights=args.encoder_weights,
        genes=_genes(args.genes),
        n_genes=args.n_genes,
        device=args.device,
        workers=args.workers,
        progress=not args.quiet,
        dpi=args.dpi,
    )
    log.info("%s: %d units predicted -> %s", args.slide, written.n_units, args.out)


def _add_output_args(parser: argparse.ArgumentParser) -> None:
    """``--genes --n-genes --device --dpi``: what a prediction draws and where it runs."""
    parser.add_argument("--genes", default=None, help="comma-separated genes to map (default: the best)")
    parser.add_argument("--n-genes", type=int, default=6, help="without --genes: map the best n by CV PCC")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dpi", type=int, default=150, help="resolution of the heat maps")


def register(verbs: argparse._SubParsersAction) -> None:
    """Add ``export-model``, ``predict-sample``, ``predictions-table`` and ``predict-slide``."""
    export = verbs.add_parser(
        "export-model", help="write a portable model bundle: model, PCA, stain reference, card, sha256s"
    )
    export.add_argument("--model-dir", required=True, type=Path, help="model.safetensors + model.json")
    export.add_argument("--basis", type=Path, default=None, help="cohort scope: the cohort's pca.npz")
    export.add_argument("--stain-reference", required=True, type=Path, help="reference stain JSON")
    export.add_argument(
        "--embeddings-description", required=True, type=Path, help="a training sample's embeddings.json"
    )
    export.add_argument(
        "--settings-json", required=True, help="the run's tissue/units/stain/segmentation/crops/features"
    )
    export.add_argument("--cohort-json", required=True, help="the training cohort: name, level, counts")
    export.add_argument(
        "--samples-dir",
        type=Path,
        default=None,
        help="results/<cohort>/samples: count the units and cells of the --cohort-json's samples",
    )
    export.add_argument("--cv-metrics", type=Path, default=None, help="the cohort's metrics.tsv")
    export.add_argument("--gene-pcc", type=Path, default=None, help="the cohort's per-gene pcc_genes.tsv")
    export.add_argument("--out", required=True, type=Path, help="the bundle folder (its zip goes beside)")
    export.add_argument("--no-zip", action="store_true", help="do not write <out>.zip")
    export.set_defaults(func=_cmd_export_model)

    sample = verbs.add_parser(
        "predict-sample", help="apply a bundle to one sample folder: maps, h5ad, profile"
    )
    sample.add_argument("--bundle", required=True, type=Path, help="bundle folder or .zip")
    sample.add_argument("--sample-dir", required=True, type=Path, help="the sample's per-sample files")
    add_sample_args(sample)
    _add_output_args(sample)
    sample.add_argument("--out-dir", required=True, type=Path, help="the slide's prediction folder")
    sample.set_defaults(func=_cmd_predict_sample)

    table = verbs.add_parser(
        "predictions-table", help="gather slides' profile.tsv into the cohort's bulk.tsv"
    )
    table.add_argument("--profiles", required=True, nargs="+", type=Path, help="profile.tsv files")
    table.add_argument("--out", required=True, type=Path, help="bulk.tsv")
    table.set_defaults(func=_cmd_predictions_table)

    slide = verbs.add_parser(
        "predict-slide", help="one slide to predictions with a bundle, every per-sample step in one process"
    )
    slide.add_argument("--bundle", required=True, type=Path, help="bundle folder or .zip")
    slide.add_argument("--slide", required=True, type=Path, help="the whole-slide image")
    slide.add_argument("--mpp", type=float, default=None, help="µm per pixel, if the slide does not say")
    slide.add_argument("--encoder-weights", type=Path, default=None, help="the bundle's encoder weights")
    _add_output_args(slide)
    slide.add_argument("--workers", type=int, default=1, help="processes for segmentation and crops")
    slide.add_argument("--quiet", action="store_true", help="no progress bars")
    slide.add_argument("--out", required=True, type=Path, help="the prediction folder")
    slide.set_defaults(func=_cmd_predict_slide)
