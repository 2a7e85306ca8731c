"""TCGA bulk cohorts: diagnostic slides in ``slides/`` and a TPM table in ``expression/``."""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from bitro.errors import InputError
from bitro.io.sample import Sample
from bitro.io.slides import open_slide
from bitro.io.validate import check_counts, check_unique, require_dir, require_file
from bitro.layout import TCGA_SLIDE_SUFFIXES, is_tcga_slide, tcga_expression, tcga_slides_dir

if TYPE_CHECKING:  # anndata only to read expression: the barcode checks (bitro folds, doctor) need none
    import anndata as ad

#: Slide suffixes of a TCGA cohort's ``slides/`` (:data:`bitro.layout.TCGA_SLIDE_SUFFIXES`).
SLIDE_SUFFIXES = TCGA_SLIDE_SUFFIXES
_BARCODE = re.compile(r"^TCGA-[A-Z0-9]{2}-[A-Z0-9]{4}(-[A-Z0-9]+)*$", re.IGNORECASE)
_TPM_TOTAL = 1e6


def parse_barcode(barcode: str) -> dict[str, str | None]:
    """Split a TCGA barcode into its parts.

    Parameters
    ----------
    barcode
        A patient, sample, aliquot or slide barcode, e.g. ``TCGA-DM-A001-01A-11R-A00Z-07`` or
        ``TCGA-DM-A001-01Z-00-DX1``.

    Returns
    -------
    dict
        ``barcode``, ``project`` (``TCGA``), ``tss``, ``participant``, ``patient`` (first 12 characters),
        ``sample`` (first 15, or ``None``), ``sample_type`` (``01``…), ``vial``, ``portion``, ``analyte``,
        ``plate``, ``center``, ``slide`` (``DX1``… for slide barcodes); parts the barcode lacks are
        ``None``.

    Raises
    ------
    ValueError
        ``barcode`` is not a TCGA barcode.
    """
    text = str(barcode).strip().upper()
    if not _BARCODE.match(text):
        raise ValueError(f"not a TCGA barcode: {barcode!r}")
    parts = text.split("-")
    out: dict[str, str | None] = dict.fromkeys(
        ("sample", "sample_type", "vial", "portion", "analyte", "plate", "center", "slide")
    )
    out.update(barcode=text, project=parts[0], tss=parts[1], participant=parts[2], patient=text[:12])
    if len(parts) > 3:
        match = re.fullmatch(r"(\d{2})([A-Z]?)", parts[3])
        if not match:
            raise ValueError(f"not a TCGA barcode (sample part {parts[3]!r}): {barcode!r}")
        out.update(sample=text[:15], sample_type=match.group(1), vial=match.group(2) or None)
    if len(parts) > 4:
        match = re.fullmatch(r"(\d{2})([A-Z]?)", parts[4])
        if match:
            out.update(portion=match.group(1), analyte=match.group(2) or None)
    if len(parts) > 5:
        if re.fullmatch(r"[TBM]S[0-9A-Z]+|DX[0-9A-Z]*", parts[5]):
            out["slide"] = parts[5]
        else:
            out["plate"] = parts[5]
    if len(parts) > 6:
        out["center"] = parts[6]
    return out


# --------------------------------------------------------------------------------------------------
# expression
# --------------------------------------------------------------------------------------------------


def _read_tpm_table(path: Path) -> pd.DataFrame:
    """Read ``tpm.tsv`` as a float DataFrame indexed by ``gene_id`` with one column per aliquot."""
    try:
        header = pd.read_csv(path, sep="\t", nrows=0, dtype=str).columns.tolist()
        raw = pd.read_csv(path, sep="\t", dtype={header[0]: str} if header else None)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(path, f"is not a readable tab-separated table ({exc})") from exc
    with path.open(encoding="utf-8") as handle:
        columns = handle.readline().rstrip("\r\n").split("\t")
    if not columns or columns[0] != "gene_id":
        raise InputError(path, f"first column must be 'gene_id', found {columns[0]!r}")
    if len(columns) < 2:
        raise InputError(path, "has no sample columns")
    check_unique(columns[1:], path, "sample columns (aliquot barcodes)")
    raw.columns = columns
    check_unique(raw["gene_id"], path, "gene_id")
    values = raw.drop(columns="gene_id").apply(pd.to_numeric, errors="coerce")
    bad = values.isna() & raw.drop(columns="gene_id").notna()
    if bad.any().any():
        raise InputError(path, f"{int(bad.sum().sum())} TPM value(s) are not numbers")
    table = values.astype(np.float64)
    table.index = pd.Index(raw["gene_id"].astype(str), name="gene_id")
    check_counts(table.to_numpy(), path, "TPM values")
    return table


def _read_gene_map(path: Path) -> dict[str, str]:
    """Return ``gene_id`` → ``gene_name`` from GDC's gene table."""
    try:
        table = pd.read_csv(path, sep="\t", dtype=str)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(path, f"is not a readable tab-separated table ({exc})") from exc
    missing = {"gene_id", "gene_name"} - set(table.columns)
    if missing:
        raise InputError(path, f"missing column(s) {sorted(missing)}")
    table = table.dropna(subset=["gene_id", "gene_name"])
    check_unique(table["gene_id"], path, "gene_id")
    return dict(zip(table["gene_id"], table["gene_name"], strict=True))


def _strip_version(gene_id: str) -> str:
    """Return an Ensembl id without its ``.N`` version (``_PAR_Y`` suffixes kept)."""
    return re.sub(r"\.\d+(?=$|_)", "", gene_id)


def _symbols(gene_ids: pd.Index, gene_map: dict[str, str]) -> list[str]:
    """Map gene ids to symbols: exact id, then id without version, else the id itself."""
    by_stem = {_strip_version(k): v for k, v in gene_map.items()}
    return [gene_map.get(g) or by_stem.get(_strip_version(g)) or g for g in gene_ids]


def _warn_tpm_totals(table: pd.DataFrame, path: Path) -> None:
    """Warn when sample totals are far from 10⁶ TPM (not rescaled here)."""
    totals = table.sum(axis=0)
    off = totals[(totals - _TPM_TOTAL).abs() > 0.01 * _TPM_TOTAL]
    if len(off):
        warnings.warn(
            f"{path}: {len(off)} sample(s) do not sum to 1e6 TPM (e.g. {off.index[0]}: {off.iloc[0]:.6g}); "
            "values are used as they are",
            UserWarning,
            stacklevel=3,
        )


def read_tcga_expression(tpm_path: str | Path, gene_map_path: str | Path) -> ad.AnnData:
    """Read a TCGA TPM table as aliquots × gene symbols.

    Ensembl ids are mapped to symbols with ``gene_map.tsv`` (exact id, then without version; ids
    absent from the map keep the id as their name). Ids sharing one symbol are summed, so each
    aliquot keeps its TPM total. Totals are checked, not rescaled: a table that does not sum to
    ~10⁶ per sample triggers a ``UserWarning`` and is used as it is.

    Parameters
    ----------
    tpm_path
        ``expression/tpm.tsv``: ``gene_id`` then one column per RNA-seq aliquot barcode.
    gene_map_path
        ``expression/gene_map.tsv``: ``gene_id``, ``gene_name``, ``gene_type``.

    Returns
    -------
    anndata.AnnData
        Aliquots × unique symbols, float64 TPM in ``X``; ``var["gene_ids"]`` the Ensembl id(s) of the
        symbol, joined with ``";"`` when summed; ``obs`` has ``patient`` and ``sample`` codes.

    Raises
    ------
    MissingInputError, InputError
        A file is missing, ``gene_id`` or aliquot columns are duplicated, or TPM values are NaN,
        infinite, negative or not numbers.
    """
    import anndata as ad

    tpm_path = require_file(tpm_path, "TCGA TPM table")
    gene_map_path = require_file(gene_map_path, "TCGA gene map")
    table = _read_tpm_table(tpm_path)
    gene_map = _read_gene_map(gene_map_path)
    _warn_tpm_totals(table, tpm_path)

    symbols = pd.Series(_symbols(table.index, gene_map), index=table.index)
    summed = table.groupby(symbols.to_numpy(), sort=False).sum()
    gene_ids = symbols.groupby(symbols.to_numpy(), sort=False).apply(lambda s: ";".join(s.index))
    gene_ids = gene_ids.reindex(summed.index)

    aliquots = [str(c) for c in table.columns]
    obs = pd.DataFrame(index=pd.Index(aliquots, name="aliquot"))
    obs["patient"] = [_barcode_part(a, "patient") for a in aliquots]
    obs["sample"] = [_barcode_part(a, "sample") for a in aliquots]
    var = pd.DataFrame({"gene_ids": gene_ids.to_numpy()}, index=pd.Index(summed.index.astype(str)))
    adata = ad.AnnData(X=summed.to_numpy(dtype=np.float64).T.copy(), obs=obs, var=var)
    adata.uns["path"] = str(tpm_path)
    return adata


def _barcode_part(barcode: str, part: str) -> str | None:
    """Return one part of a barcode, or ``None`` when it does not parse."""
    try:
        return parse_barcode(barcode)[part]
    except ValueError:
        return None


def barcode_contradictions(samples: Sequence[str], patients: Sequence[str]) -> str:
    """What contradicts the TCGA barcodes among (sample, patient) pairs, or ``""``."""
    bad = []
    for sample, patient in zip(samples, patients, strict=True):
        from_barcode = _barcode_part(sample, "patient")
        if from_barcode is not None and patient.upper() != from_barcode:
            bad.append(f"{sample} (patient_id {patient}, barcode patient {from_barcode})")
    if not bad:
        return ""
    shown = ", ".join(bad[:5]) + (f" … and {len(bad) - 5} more" if len(bad) > 5 else "")
    return (
        f"patient_id contradicts the TCGA barcode of {len(bad)} sample(s): {shown}; a patient's slides "
        "would end up on both sides of a split: give the barcode's first 12 characters, or leave it empty"
    )


# --------------------------------------------------------------------------------------------------
# slides
# --------------------------------------------------------------------------------------------------


def list_tcga_slides(root: str | Path) -> pd.DataFrame:
    """List the diagnostic slides of a TCGA cohort.

    Parameters
    ----------
    root
        Cohort directory holding ``slides/{slide_barcode}.{uuid}.{svs,tif,tiff,ndpi}``.

    Returns
    -------
    pandas.DataFrame
        One row per slide, sorted by ``slide_id``: ``slide_id`` (the slide barcode), ``path``,
        ``patient_id`` (barcode[:12]), ``sample_code`` (barcode[:15]), ``uuid`` (or ``None``).

    Raises
    ------
    MissingInputError, InputError
        ``slides/`` is missing or empty, a file name is not a TCGA barcode, or two files share one.
    """
    slides_dir = require_dir(tcga_slides_dir(Path(root)), "TCGA slides directory")
    rows: list[dict[str, Any]] = []
    for path in sorted(slides_dir.iterdir()):
        if not path.is_file() or not is_tcga_slide(path):
            continue
        stem = path.name[: -len(path.suffix)]
        barcode, _, uuid = stem.partition(".")
        try:
            parts = parse_barcode(barcode)
        except ValueError as exc:
            raise InputError(path, f"file name does not start with a TCGA slide barcode ({exc})") from exc
        if parts["sample"] is None:
            raise InputError(path, f"slide barcode {barcode!r} has no sample code")
        rows.append(
            {
                "slide_id": parts["barcode"],
                "path": path,
                "patient_id": parts["patient"],
                "sample_code": parts["sample"],
                "uuid": uuid or None,
            }
        )
    if not rows:
        raise InputError(slides_dir, f"holds no slides ({', '.join(SLIDE_SUFFIXES)})")
    frame = pd.DataFrame(rows).sort_values("slide_id", kind="stable").reset_index(drop=True)
    check_unique(frame["slide_id"], slides_dir, "slide barcodes")
    return frame


def _expression_paths(root: Path) -> tuple[Path, Path]:
    """Return ``expression/tpm.tsv`` and ``expression/gene_map.tsv`` under ``root``."""
    return tcga_expression(root)


def _aliquots_for(expression: ad.AnnData, sample_code: str) -> list[str]:
    """Return the aliquots whose sample code is ``sample_code``."""
    samples = expression.obs.get("sample")
    if samples is None:
        samples = pd.Series([_barcode_part(a, "sample") for a in expression.obs_names])
    return [a for a, s in zip(expression.obs_names, samples, strict=True) if s == sample_code]


def _check_matched(slides: pd.DataFrame, expression: ad.AnnData, tpm_path: Path) -> None:
    """Raise one ``InputError`` listing slides without an aliquot of the same sample code."""
    unmatched = [
        f"{row.slide_id} (sample {row.sample_code})"
        for row in slides.itertuples()
        if not _aliquots_for(expression, row.sample_code)
    ]
    if unmatched:
        raise InputError(
            tpm_path,
            f"no RNA-seq aliquot with the same sample code for {len(unmatched)} slide(s): "
            + ", ".join(unmatched),
        )


def _slide_sample(row: Any, expression: ad.AnnData, mpp: float | None) -> Sample:
    """Build the bulk ``Sample`` of one slide row (aliquots of its sample code averaged)."""
    import anndata as ad

    aliquots = _aliquots_for(expression, row.sample_code)
    values = np.asarray(expression[aliquots].X, dtype=np.float64).mean(axis=0, keepdims=True)
    if not np.any(values):
        tpm_path = expression.uns.get("path", "expression/tpm.tsv")
        raise InputError(
            tpm_path,
            f"every TPM value of {', '.join(aliquots)} (slide {row.slide_id}) is zero: nothing measured",
        )
    obs = pd.DataFrame({"aliquots": [";".join(aliquots)]}, index=pd.Index([row.slide_id]))
    bulk = ad.AnnData(X=values, obs=obs, var=expression.var.copy())
    with open_slide(row.path, mpp=mpp) as slide:
        pixel_size, source = slide.mpp, slide.mpp_source
    return Sample(
        sample_id=row.slide_id,
        kind="bulk",
        slide_path=Path(row.path),
        mpp=pixel_size,
        expression=bulk,
        patient_id=row.patient_id,
        metadata={
            "barcode": parse_barcode(row.slide_id),
            "slide_uuid": row.uuid,
            "aliquots": aliquots,
            "mpp_source": source,
        },
    )


def read_tcga_slide(
    root: str | Path,
    slide_id: str,
    *,
    mpp: float | None = None,
    expression: ad.AnnData | None = None,
) -> Sample:
    """Read one TCGA slide with the bulk expression of its sample.

    Parameters
    ----------
    root
        Cohort directory (``slides/``, ``expression/``).
    slide_id
        Slide barcode, e.g. ``TCGA-DM-A001-01Z-00-DX1``.
    mpp
        µm per level-0 pixel; overrides the slide's own.
    expression
        Output of ``read_tcga_expression``; read from ``root/expression`` when ``None``.

    Returns
    -------
    Sample
        ``kind="bulk"``; ``expression`` 1 × genes TPM with obs name ``slide_id`` (the mean of the
        aliquots sharing the slide's sample code, usually one); ``patient_id`` barcode[:12].

    Raises
    ------
    InputError
        The slide is not in ``slides/`` or has no aliquot with its sample code.
    """
    root = Path(root)
    slides = list_tcga_slides(root)
    match = slides[slides["slide_id"] == str(slide_id).upper()]
    if match.empty:
        raise InputError(tcga_slides_dir(root), f"no slide with barcode {slide_id!r}")
    tpm_path, map_path = _expression_paths(root)
    if expression is None:
        expression = read_tcga_expression(tpm_path, map_path)
    _check_matched(match, expression, tpm_path)
    return _slide_sample(next(match.itertuples()), expression, mpp)


def read_tcga_cohort(root: str | Path, *, mpp: float | None = None) -> list[Sample]:
    """Read every slide of a TCGA cohort, reading the TPM table once.

    Parameters
    ----------
    root
        Cohort directory (``slides/``, ``expression/tpm.tsv``, ``expression/gene_map.tsv``).
    mpp
        µm per level-0 pixel for every slide; overrides the slides' own.

    Returns
    -------
    list of Sample
        One bulk sample per slide, sorted by slide barcode; several slides of one patient each get
        their sample's expression.

    Raises
    ------
    InputError
        Any slide lacks a matching aliquot (all such slides are listed in one error).
    """
    root = Path(root)
    slides = list_tcga_slides(root)
    tpm_path, map_path = _expression_paths(root)
    expression = read_tcga_expression(tpm_path, map_path)
    _check_matched(slides, expression, tpm_path)
    return [_slide_sample(row, expression, mpp) for row in slides.itertuples()]
