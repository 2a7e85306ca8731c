#!/usr/bin/env python
"""Write a bitro sample sheet for HEST-1k samples from HEST's metadata table.

HEST-1k publishes one row per sample in ``HEST_v1_1_0.csv`` (github.com/mahmoodlab/HEST, ``assets/``; the
same table is on its Hugging Face dataset page). This script selects rows by id or by metadata and writes
the sheet a cohort's ``samples`` key points to: ``sample_id`` (the HEST id), ``patient_id`` (HEST's
``patient``, so leave-one-patient-out keeps a patient's sections together) and an empty ``mpp`` (the pixel
size then comes from ``metadata/{id}.json``).

    scripts/make_sheet_hest.py HEST_v1_1_0.csv --ids SPA119-SPA154 > config/samples/her2st.tsv
    scripts/make_sheet_hest.py HEST_v1_1_0.csv --oncotree CSCC --technology "Spatial Transcriptomics"

HEST leaves ``patient`` empty for many samples: such a sample becomes its own patient (a warning lists
them; group sections you know to share a patient by editing the sheet). The same label in two datasets
("Patient 1") names two people, so labels are prefixed with their dataset whenever the selection spans
several datasets that use the same label.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

SPOT_TECHNOLOGIES = ("Visium", "Spatial Transcriptomics")


def expand_ids(spec: str) -> list[str]:
    """Expand ``"SPA119-SPA154,NCBI642"`` into ids; a range keeps the prefix and counts either way."""
    ids: list[str] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        match = re.fullmatch(r"([A-Za-z]+)(\d+)-([A-Za-z]+)?(\d+)", part)
        if match is None:
            ids.append(part)
            continue
        prefix, first, prefix2, last = match.groups()
        if prefix2 not in (None, prefix):
            raise ValueError(f"a range keeps one prefix: {part!r}")
        lo, hi = sorted((int(first), int(last)))
        ids.extend(f"{prefix}{n}" for n in range(lo, hi + 1))
    return ids


def slug(text: str) -> str:
    """A label fit for a sample sheet: letters, digits and underscores."""
    return re.sub(r"[^A-Za-z0-9]+", "_", str(text)).strip("_")


def select(
    table: pd.DataFrame,
    *,
    ids: Sequence[str] | None = None,
    organ: str | None = None,
    oncotree: str | None = None,
    technology: str | None = None,
    species: str | None = "Homo sapiens",
    disease_state: str | None = None,
    dataset: str | None = None,
) -> tuple[pd.DataFrame, list[str]]:
    """Rows of the HEST table that pass every filter given, and the requested ids it lacks."""
    table = table.copy()
    for column in ("id", "organ", "oncotree_code", "st_technology", "species", "disease_state"):
        if column not in table.columns:
            raise SystemExit(f"the HEST table has no {column!r} column: is it HEST_v1_1_0.csv?")
    keep = pd.Series(True, index=table.index)
    missing: list[str] = []
    if ids:
        missing = [i for i in ids if i not in set(table["id"])]
        keep &= table["id"].isin(ids)

    def equals(column: str, value: str | None) -> None:
        nonlocal keep
        if value is not None:
            keep &= table[column].fillna("").str.strip().str.casefold() == value.strip().casefold()

    equals("organ", organ)
    equals("oncotree_code", oncotree)
    equals("st_technology", technology)
    equals("species", species)
    equals("disease_state", disease_state)
    if dataset is not None:
        keep &= table["dataset_title"].fillna("").str.contains(dataset, case=False, regex=False)
    chosen = table[keep]
    if ids:
        order = {sample: k for k, sample in enumerate(ids)}
        chosen = chosen.sort_values("id", key=lambda s: s.map(order))
    return chosen, missing


def sample_sheet(rows: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The bitro sheet of ``rows`` and the ids that had no patient (each its own patient)."""
    patients = rows.get("patient", pd.Series("", index=rows.index)).fillna("").astype(str).str.strip()
    datasets = rows.get("dataset_title", pd.Series("", index=rows.index)).fillna("").astype(str)
    labels = pd.DataFrame({"patient": patients, "dataset": datasets})
    shared = labels[labels["patient"] != ""].groupby("patient")["dataset"].nunique()
    ambiguous = set(shared[shared > 1].index)
    unknown = rows.loc[patients == "", "id"].tolist()
    patient_ids = []
    for sample, patient, title in zip(rows["id"], patients, datasets, strict=True):
        if not patient:
            patient_ids.append(sample)
        elif patient in ambiguous:
            patient_ids.append(f"{slug(title)[:32]}_{slug(patient)}")
        else:
            patient_ids.append(slug(patient))
    sheet = pd.DataFrame({"sample_id": rows["id"].to_list(), "patient_id": patient_ids, "mpp": ""})
    return sheet, unknown


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("metadata", type=Path, help="HEST_v1_1_0.csv (HEST-1k's metadata table)")
    parser.add_argument("--ids", help="ids and ranges, e.g. SPA119-SPA154,NCBI642")
    parser.add_argument("--organ", help="HEST `organ`, e.g. Breast, Bowel, Prostate, Liver, Skin")
    parser.add_argument("--oncotree", help="HEST `oncotree_code`, e.g. IDC, COAD, PRAD, HCC, CSCC")
    parser.add_argument("--technology", help="HEST `st_technology`: Visium, 'Spatial Transcriptomics', ...")
    parser.add_argument("--species", default="Homo sapiens", help="HEST `species` (default: Homo sapiens)")
    parser.add_argument("--disease-state", help="HEST `disease_state`, e.g. Cancer")
    parser.add_argument("--dataset", help="keep rows whose `dataset_title` contains this text")
    parser.add_argument("--out", type=Path, help="write the sheet here (default: standard output)")
    args = parser.parse_args(argv)

    table = pd.read_csv(args.metadata, dtype=str)
    rows, missing = select(
        table,
        ids=expand_ids(args.ids) if args.ids else None,
        organ=args.organ,
        oncotree=args.oncotree,
        technology=args.technology,
        species=args.species,
        disease_state=args.disease_state,
        dataset=args.dataset,
    )
    if missing:
        print(f"not in {args.metadata.name} (skipped): {', '.join(missing)}", file=sys.stderr)
    if rows.empty:
        print("no HEST sample passes the filters", file=sys.stderr)
        return 1
    others = sorted(set(rows["st_technology"].dropna()) - set(SPOT_TECHNOLOGIES))
    if others:
        print(
            f"warning: {', '.join(others)} samples selected; bitro's `hest` layout reads spot-based ST "
            "(Visium, Spatial Transcriptomics). Xenium sections are read from their own bundles "
            "(format: xenium).",
            file=sys.stderr,
        )
    sheet, unknown = sample_sheet(rows)
    if unknown:
        print(
            f"warning: HEST gives no patient for {', '.join(unknown)}: each is its own patient here",
            file=sys.stderr,
        )
    text = sheet.to_csv(sep="\t", index=False)
    if args.out:
        args.out.write_text(text)
    else:
        sys.stdout.write(text)
    print(
        f"{len(sheet)} samples of {sheet['patient_id'].nunique()} patients",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
