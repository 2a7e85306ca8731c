"""The ``cohort`` check: what a cohort as a whole must offer, known from its sample sheet
(:func:`sheet_problems`, which the workflow also calls when it is parsed) and the samples read."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bitro.doctor.common import CohortContext, _section
from bitro.doctor.report import Result
from bitro.options import FORMAT_LEVELS, PREDICTION_FORMATS


def sheet_patients(path: Path) -> tuple[list[str], list[str] | None]:
    """A sheet's sample ids and patient ids (an empty patient id is the sample's own), rows in order."""
    import pandas as pd

    sheet = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    samples = sheet["sample_id"].str.strip().tolist()
    if "patient_id" not in sheet.columns:
        return samples, None
    return samples, [p.strip() or s for s, p in zip(samples, sheet["patient_id"], strict=True)]


def measures_nothing(cohort: Mapping[str, Any]) -> bool:
    """Whether a cohort's layout has no expression (:data:`bitro.options.PREDICTION_FORMATS`)."""
    return str(cohort.get("format")) in PREDICTION_FORMATS


def is_prediction_only(cohort: Mapping[str, Any]) -> bool:
    """Whether a cohort is only predicted: its layout has no expression, or it names a model ``bundle``."""
    return measures_nothing(cohort) or bool(cohort.get("bundle"))


def cohort_level(cohort: Mapping[str, Any]) -> str:
    """The level of a cohort: its ``level``, else the level its ``format`` measures.

    Raises
    ------
    ValueError
        A prediction-only cohort (``format: slides``) without a ``level``: it measures none.
    """
    if not cohort.get("level") and measures_nothing(cohort):
        raise ValueError(f"a {cohort.get('format')} cohort measures no level: it is only predicted")
    return str(cohort.get("level") or FORMAT_LEVELS.get(str(cohort.get("format")), "xenium"))


def sheet_problems(sheet_path: Path, cohort: Mapping[str, Any], evaluation: Mapping[str, Any]) -> list[str]:
    """What makes a cohort unusable, known from its sample sheet alone, one message per problem, each
    naming the sheet: patient ids that contradict the TCGA barcodes (a patient's slides on both sides of a
    split), and too few samples or patients for the cohort's split. A prediction-only cohort
    (``format: slides``) is not split: its problems are those of its sheet (duplicated or empty ids, an
    ``mpp`` that is not a positive number; :func:`bitro.io.unlabelled.slides_sheet_entries`).

    The workflow calls it when it is parsed (so that a dry run already stops), ``bitro doctor`` in its
    ``cohort`` check.

    Raises
    ------
    OSError, pandas.errors.ParserError, KeyError
        The sheet cannot be read or has no ``sample_id`` column.
    """
    from bitro.folds.splits import split_shortfall
    from bitro.io.tcga import barcode_contradictions
    from bitro.io.unlabelled import slides_sheet_entries

    if is_prediction_only(cohort):
        return [f"{sheet_path}: {problem}" for problem in slides_sheet_entries(sheet_path)[1]]
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

    if is_prediction_only(cohort):
        return []  # nothing to split or select genes from; its sheet is the slides check's
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
