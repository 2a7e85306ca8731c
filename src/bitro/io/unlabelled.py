"""The prediction-only ``slides`` layout: whole-slide images under a root and a sample sheet, no expression.

The sheet (TSV) has ``sample_id`` and optionally ``patient_id`` (empty: the sample's own), ``mpp`` (µm per
level-0 pixel; empty: the slide's own) and ``file`` (the slide relative to the root; empty:
``{root}/{sample_id}.{svs,tif,…}``, :func:`bitro.layout.slides_slide`). Other columns are kept out of the
way. Each sample is read as a :class:`~bitro.io.sample.Sample` of kind ``unlabelled`` with
``expression=None``: a trained model is applied to it, nothing is trained or scored on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from bitro.errors import InputError, MissingInputError, PixelSizeError
from bitro.io.sample import Sample
from bitro.io.slides import open_slide
from bitro.layout import SLIDE_SUFFIXES, slides_slide

#: The columns of a ``slides`` sample sheet: the one it needs, and those it may have.
SLIDES_SHEET_REQUIRED: tuple[str, ...] = ("sample_id",)
SLIDES_SHEET_OPTIONAL: tuple[str, ...] = ("patient_id", "mpp", "file")


@dataclass(frozen=True)
class SlideEntry:
    """One row of a ``slides`` sample sheet: the sample, its patient, its pixel size and slide file, if
    the sheet gives them (``None`` otherwise)."""

    sample_id: str
    patient_id: str
    mpp: float | None
    file: str | None


def parse_sheet_mpp(raw: object) -> tuple[float | None, str]:
    """A sample sheet's ``mpp`` cell: the override (``None`` when empty) and what is wrong with it ("" when
    nothing is). Every layout's sheet reads its ``mpp`` column this way."""
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


def slides_sheet_entries(path: str | Path) -> tuple[list[SlideEntry], list[str]]:
    """The rows of a ``slides`` sample sheet and every problem found in it (each a message without the
    sheet's path: a missing ``sample_id`` column, empty or duplicated ids, an ``mpp`` that is not a positive
    number). A row with a bad ``mpp`` is kept, without one.

    Raises
    ------
    MissingInputError
        The sheet does not exist.
    InputError
        It is not a readable TSV.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise MissingInputError(path, "slides sample sheet")
    try:
        sheet = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(path, f"not a readable TSV sample sheet ({exc})") from exc
    missing = [c for c in SLIDES_SHEET_REQUIRED if c not in sheet.columns]
    if missing:
        optional = ", ".join(SLIDES_SHEET_OPTIONAL)
        return [], [f"missing column(s) {missing} (a slides sheet has sample_id and optional {optional})"]
    ids = sheet["sample_id"].str.strip()
    problems: list[str] = []
    dupes = sorted(set(ids[ids.duplicated() & (ids != "")]))
    if dupes:
        problems.append(f"duplicated sample_id {dupes}")
    empty = pd.Series([""] * len(sheet), index=sheet.index)
    entries = []
    for sample, patient, raw_mpp, file in zip(
        ids,
        sheet.get("patient_id", empty).str.strip(),
        sheet.get("mpp", empty),
        sheet.get("file", empty).str.strip(),
        strict=True,
    ):
        if not sample:
            problems.append("a row has an empty sample_id")
            continue
        mpp, problem = parse_sheet_mpp(raw_mpp)
        if problem:
            problems.append(f"sample {sample}: mpp {problem}")
        entries.append(SlideEntry(sample, patient or sample, mpp, file or None))
    return entries, problems


def read_slides_sheet(path: str | Path) -> list[SlideEntry]:
    """The rows of a ``slides`` sample sheet (:func:`slides_sheet_entries`).

    Raises
    ------
    MissingInputError, InputError
        The sheet is missing or unreadable, or has a problem (all of them named in one message).
    """
    entries, problems = slides_sheet_entries(path)
    if problems:
        raise InputError(path, "; ".join(problems))
    return entries


def read_slides_sample(
    root: str | Path,
    sample_id: str,
    *,
    file: str | Path | None = None,
    mpp: float | None = None,
    patient_id: str | None = None,
) -> Sample:
    """Read one sample of the ``slides`` layout: its slide and pixel size, no expression.

    Parameters
    ----------
    root
        The folder of the cohort's slides.
    sample_id
        The sample; its slide is ``{root}/{sample_id}.{svs,tif,…}`` unless ``file`` names it.
    file
        The slide relative to ``root`` (the sheet's ``file`` column).
    mpp
        µm per level-0 pixel (the sheet's ``mpp`` column or ``--mpp``); else the slide's own.
    patient_id
        The sample's patient (default: the sample itself).

    Returns
    -------
    Sample
        ``kind="unlabelled"``, ``expression=None``; ``metadata`` holds ``mpp_source`` and ``file``.

    Raises
    ------
    MissingInputError
        The slide is not there.
    PixelSizeError
        Neither ``mpp`` nor the slide gives a pixel size.
    InputError
        The slide cannot be read.
    """
    root = Path(root)
    path = slides_slide(root, sample_id, file)
    if not path.is_file():
        suffixes = ",".join(SLIDE_SUFFIXES)
        how = (
            "the sheet's file column names it"
            if file is not None and str(file).strip()
            else f"looked for {sample_id}{{{suffixes}}} in {root}; else name it in the sheet's file column"
        )
        raise MissingInputError(path, f"whole-slide image of sample {sample_id!r} ({how})")
    try:
        with open_slide(path, mpp=mpp, mpp_source="sample sheet mpp") as slide:
            pixel_size, source = slide.mpp, slide.mpp_source
    except PixelSizeError as exc:
        raise PixelSizeError(
            path,
            "no pixel size (µm/px) in the slide's metadata (openslide.mpp-x, TIFF XResolution with a "
            "centimetre/inch unit, OME PhysicalSizeX): give it in the sample sheet's mpp column (or --mpp)",
        ) from exc
    return Sample(
        sample_id=sample_id,
        kind="unlabelled",
        slide_path=path,
        mpp=pixel_size,
        expression=None,
        patient_id=patient_id or sample_id,
        metadata={"format": "slides", "mpp_source": source, "file": None if file is None else str(file)},
    )


def read_slides_cohort(root: str | Path, sheet: str | Path, *, mpp: float | None = None) -> list[Sample]:
    """Every sample of a ``slides`` cohort, in sheet order (``mpp`` overrides every sheet value)."""
    return [
        read_slides_sample(
            root,
            entry.sample_id,
            file=entry.file,
            mpp=mpp if mpp is not None else entry.mpp,
            patient_id=entry.patient_id,
        )
        for entry in read_slides_sheet(sheet)
    ]
