"""The ``slides`` check: every sample's files (as :mod:`bitro.layout` names them), slide pixels, the
project's reader, its µm/px, and a precomputed segmentation. A prediction-only cohort (``format: slides``)
has its own sheet (:func:`bitro.io.unlabelled.slides_sheet_entries`: ``sample_id``, optional
``patient_id``, ``mpp``, ``file``) and only slides: each must exist, open and have a known µm/px."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from bitro.doctor.cohort import check_protocol, measures_nothing
from bitro.doctor.common import CohortContext, _guard, _section, cohort_segmentation, mpp_range, resolve
from bitro.doctor.report import Result
from bitro.errors import BitroError, InputError
from bitro.io.unlabelled import parse_sheet_mpp, slides_sheet_entries
from bitro.layout import demo_data_dir, hest_segmentations, sample_files


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
        mpp, problem = parse_sheet_mpp(raw)
        if problem:
            problems.append(Result("slides", sample, "fail", f"{path}: sample {sample}: mpp {problem}"))
        rows.append((sample, mpp))
    return rows, problems


def read_slides_sheet_rows(path: Path) -> tuple[list[tuple[str, float | None]], dict[str, str], list[Result]]:
    """A ``slides`` sample sheet: (sample id, mpp override) rows, sample → its ``file`` (where the sheet
    names one), and its problems (each naming the sheet)."""
    try:
        entries, problems = slides_sheet_entries(path)
    except InputError as exc:
        return [], {}, [Result("slides", str(path), "fail", str(exc))]
    results = [Result("slides", str(path), "fail", f"{path}: {problem}") for problem in problems]
    files = {entry.sample_id: entry.file for entry in entries if entry.file}
    return [(entry.sample_id, entry.mpp) for entry in entries], files, results


def layout_files(
    fmt: str, root: Path, sample: str, *, file: str | None = None
) -> tuple[list[tuple[str, Path]], Path | None]:
    """The files a sample of layout ``fmt`` is read from, as (what, path), and its slide.

    A file that is absent is given with the name the layout expects (:func:`bitro.layout.sample_files`);
    ``file`` is a ``slides`` sample's sheet ``file``.
    """
    layout = sample_files(fmt, root, sample, file=file)
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


def check_sample(ctx: CohortContext, sample: str, mpp: float | None) -> list[Result]:
    """One sample: its files, its slide's pixels, the project's reader, and its µm/px."""
    subject = f"{ctx.name}/{sample}"
    files, slide = layout_files(ctx.fmt, ctx.root, sample, file=ctx.files.get(sample))
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
    if ctx.fmt in ("tcga", "slides"):
        return [
            Result(
                "slides",
                subject,
                "fail",
                f"{ctx.root}: segmentation.backend precomputed, but the {ctx.fmt} layout has no "
                "segmentation: set segmentation.path (with {sample}) or use the classical backend",
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
    from bitro.io import read_hest_sample, read_sample, read_slides_sample
    from bitro.io.tcga import read_tcga_slide

    results = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            if ctx.fmt == "tcga":
                read = read_tcga_slide(ctx.root, sample, mpp=mpp, expression=ctx.expression)
            elif ctx.fmt == "hest":
                read = read_hest_sample(ctx.root, sample, mpp=mpp, cells="none")
            elif ctx.fmt == "slides":
                read = read_slides_sample(ctx.root, sample, mpp=mpp, file=ctx.files.get(sample))
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
    if read.expression is None:
        measured = "no expression (prediction only)"
    else:
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
    if read.expression is not None:
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
        outdir = _section(config, "demo").get("outdir", str(demo_data_dir()))
        text = (
            f"{root}: demo data not written yet; the workflow's generate_demo rule writes it "
            f"(or `bitro demo --out {outdir}`), then this cohort can be checked"
        )
        return [Result("slides", name, "skip", text)]
    files: dict[str, str] = {}
    if measures_nothing(cohort):
        rows, files, results = read_slides_sheet_rows(sheet_path)
    else:
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
        files=files,
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
