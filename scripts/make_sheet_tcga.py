#!/usr/bin/env python
"""Turn a GDC download into bitro's TCGA layout: the sample sheet, and the expression tables.

``slides``: the sample sheet of a cohort's slides, from the GDC portal's sample sheet of the slide files
(``gdc_sample_sheet.<date>.tsv``, cart -> "Sample Sheet") or from the manifest gdc-client downloaded them
with (``gdc_manifest.<date>.txt``). ``sample_id`` is the slide barcode (the file name up to its first dot),
``patient_id`` its first 12 characters. ``--link-into`` also makes ``slides/{file name}`` links to the
files gdc-client wrote as ``<download dir>/<file id>/<file name>``.

    scripts/make_sheet_tcga.py slides --sample-sheet gdc_sample_sheet.tsv --slide-type diagnostic \\
        --expression /data/tcga_brca/expression/tpm.tsv --out config/samples/tcga_brca.tsv

``expression``: ``expression/tpm.tsv`` (gene_id, then one TPM column per RNA-seq sample) and
``expression/gene_map.tsv`` (gene_id, gene_name, gene_type) from GDC's STAR gene-count files
(``*.rna_seq.augmented_star_gene_counts.tsv``, workflow "STAR - Counts") and the sample sheet of those
files. Two files of one sample are averaged, as the reader averages aliquots of one sample.

    scripts/make_sheet_tcga.py expression --sample-sheet gdc_sample_sheet_rna.tsv \\
        --files gdc_download/ --out /data/tcga_brca/expression
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from bitro.io.tcga import SLIDE_SUFFIXES, parse_barcode

SLIDE_TYPES = {"diagnostic": ("DX",), "tissue": ("TS", "BS", "MS"), "all": ("DX", "TS", "BS", "MS")}
STAR_VALUE = "tpm_unstranded"


def read_file_table(sample_sheet: Path | None, manifest: Path | None) -> pd.DataFrame:
    """``file_id``, ``file_name``, ``case_id`` (or empty) and ``sample_id`` (or empty) of each GDC file."""
    if (sample_sheet is None) == (manifest is None):
        raise SystemExit("give one of --sample-sheet and --manifest")
    if sample_sheet is not None:
        table = pd.read_csv(sample_sheet, sep="\t", dtype=str)
        needed = {"File ID", "File Name"}
        if not needed <= set(table.columns):
            raise SystemExit(
                f"{sample_sheet}: not a GDC sample sheet (no {sorted(needed - set(table.columns))})"
            )
        return pd.DataFrame(
            {
                "file_id": table["File ID"],
                "file_name": table["File Name"],
                "case_id": table.get("Case ID", pd.Series("", index=table.index)).fillna(""),
                "sample_id": table.get("Sample ID", pd.Series("", index=table.index)).fillna(""),
            }
        )
    table = pd.read_csv(manifest, sep="\t", dtype=str)
    if not {"id", "filename"} <= set(table.columns):
        raise SystemExit(f"{manifest}: not a GDC manifest (columns id, filename, md5, size, state)")
    return pd.DataFrame(
        {"file_id": table["id"], "file_name": table["filename"], "case_id": "", "sample_id": ""}
    )


def slide_rows(files: pd.DataFrame, slide_type: str) -> tuple[pd.DataFrame, list[str]]:
    """Slide files of the wanted type with their barcode and patient; names that are no slide barcode."""
    kinds = SLIDE_TYPES[slide_type]
    rows, skipped = [], []
    for record in files.itertuples():
        name = str(record.file_name)
        if not name.lower().endswith(SLIDE_SUFFIXES):
            continue
        barcode = name.split(".")[0]
        try:
            parts = parse_barcode(barcode)
        except ValueError:
            skipped.append(name)
            continue
        slide = parts["slide"] or ""
        if not slide.startswith(kinds):
            continue
        case = str(record.case_id).split(",")[0].strip()
        if case and case.upper() != parts["patient"]:
            raise SystemExit(f"{name}: GDC gives case {case}, the barcode patient {parts['patient']}")
        rows.append(
            {
                "sample_id": parts["barcode"],
                "patient_id": parts["patient"],
                "sample_code": parts["sample"],
                "file_id": record.file_id,
                "file_name": name,
            }
        )
    table = pd.DataFrame(rows, columns=["sample_id", "patient_id", "sample_code", "file_id", "file_name"])
    duplicated = table["sample_id"][table["sample_id"].duplicated()].tolist()
    if duplicated:
        raise SystemExit(f"two files for slide(s) {duplicated}: keep one in the sample sheet")
    return table.sort_values("sample_id").reset_index(drop=True), skipped


def expression_sample_codes(tpm: Path) -> set[str]:
    """Sample codes (first 15 characters) of the columns of a ``tpm.tsv``."""
    columns = pd.read_csv(tpm, sep="\t", nrows=0).columns.tolist()[1:]
    return {parse_barcode(c)["sample"] for c in columns}


def link_slides(slides: pd.DataFrame, downloads: Path, into: Path) -> None:
    """Link ``into/{file name}`` to each slide gdc-client wrote under ``downloads``."""
    into.mkdir(parents=True, exist_ok=True)
    for record in slides.itertuples():
        source = downloads / record.file_id / record.file_name
        if not source.is_file():
            found = sorted(downloads.rglob(record.file_name))
            if not found:
                raise SystemExit(f"{record.file_name} is not under {downloads}")
            source = found[0]
        target = into / record.file_name
        if target.is_symlink() or target.exists():
            target.unlink()
        target.symlink_to(source.resolve())


def cmd_slides(args: argparse.Namespace) -> int:
    files = read_file_table(args.sample_sheet, args.manifest)
    slides, skipped = slide_rows(files, args.slide_type)
    if skipped:
        print(f"not TCGA slide barcodes (skipped): {', '.join(skipped)}", file=sys.stderr)
    if args.expression is not None:
        codes = expression_sample_codes(args.expression)
        lacking = slides.loc[~slides["sample_code"].isin(codes), "sample_id"].tolist()
        if lacking:
            print(
                f"no RNA-seq sample in {args.expression} for {len(lacking)} slide(s), left out: "
                + ", ".join(lacking),
                file=sys.stderr,
            )
        slides = slides[slides["sample_code"].isin(codes)]
    if slides.empty:
        print("no slide left", file=sys.stderr)
        return 1
    if args.link_into is not None:
        if args.downloads is None:
            raise SystemExit("--link-into needs --downloads (the gdc-client download directory)")
        link_slides(slides, args.downloads, args.link_into)
    sheet = slides[["sample_id", "patient_id"]].assign(mpp="")
    text = sheet.to_csv(sep="\t", index=False)
    if args.out:
        args.out.write_text(text)
    else:
        sys.stdout.write(text)
    print(f"{len(sheet)} slides of {sheet['patient_id'].nunique()} patients", file=sys.stderr)
    return 0


def read_star_counts(path: Path, value: str = STAR_VALUE) -> pd.DataFrame:
    """``gene_id``, ``gene_name``, ``gene_type`` and ``value`` of a GDC STAR gene-count file, genes only."""
    table = pd.read_csv(
        path, sep="\t", comment="#", dtype={"gene_id": str, "gene_name": str, "gene_type": str}
    )
    missing = {"gene_id", "gene_name", "gene_type", value} - set(table.columns)
    if missing:
        raise SystemExit(f"{path}: not a GDC STAR gene-count file (no {sorted(missing)})")
    table = table[~table["gene_id"].str.startswith("N_")]
    return table[["gene_id", "gene_name", "gene_type", value]].reset_index(drop=True)


def cmd_expression(args: argparse.Namespace) -> int:
    files = read_file_table(args.sample_sheet, None)
    files = files[files["file_name"].str.endswith("star_gene_counts.tsv")]
    if files.empty:
        raise SystemExit(f"{args.sample_sheet} lists no *star_gene_counts.tsv file")
    genes: pd.DataFrame | None = None
    columns: dict[str, list[pd.Series]] = {}
    for record in files.itertuples():
        path = args.files / record.file_id / record.file_name
        if not path.is_file():
            found = sorted(args.files.rglob(record.file_name))
            if not found:
                raise SystemExit(f"{record.file_name} is not under {args.files}")
            path = found[0]
        sample = str(record.sample_id).split(",")[0].strip()
        parse_barcode(sample)
        table = read_star_counts(path, args.value)
        if genes is None:
            genes = table[["gene_id", "gene_name", "gene_type"]]
        elif not table["gene_id"].equals(genes["gene_id"]):
            raise SystemExit(f"{path}: its genes differ from the first file's (another gene model?)")
        columns.setdefault(sample, []).append(table[args.value].astype(float))
    assert genes is not None
    averaged = {
        sample: values[0] if len(values) == 1 else pd.concat(values, axis=1).mean(axis=1)
        for sample, values in sorted(columns.items())
    }
    repeated = sorted(s for s, values in columns.items() if len(values) > 1)
    if repeated:
        print(f"several files averaged for: {', '.join(repeated)}", file=sys.stderr)
    tpm = pd.concat([genes["gene_id"], pd.DataFrame(averaged)], axis=1)
    args.out.mkdir(parents=True, exist_ok=True)
    tpm.to_csv(args.out / "tpm.tsv", sep="\t", index=False)
    genes.to_csv(args.out / "gene_map.tsv", sep="\t", index=False)
    print(f"{len(genes)} genes x {len(averaged)} samples -> {args.out}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    verbs = parser.add_subparsers(dest="verb", required=True)

    slides = verbs.add_parser("slides", help="the sample sheet of the slides")
    slides.add_argument("--sample-sheet", type=Path, help="GDC sample sheet of the slide files")
    slides.add_argument("--manifest", type=Path, help="or the GDC manifest of the slide files")
    slides.add_argument(
        "--slide-type",
        choices=sorted(SLIDE_TYPES),
        default="all",
        help="diagnostic (DX, FFPE), tissue (TS/BS/MS, frozen) or all (default)",
    )
    slides.add_argument("--expression", type=Path, help="keep only slides whose sample is in this tpm.tsv")
    slides.add_argument("--downloads", type=Path, help="gdc-client's download directory (for --link-into)")
    slides.add_argument("--link-into", type=Path, help="make {file name} links here, e.g. <root>/slides")
    slides.add_argument("--out", type=Path, help="write the sheet here (default: standard output)")
    slides.set_defaults(run=cmd_slides)

    expression = verbs.add_parser("expression", help="tpm.tsv and gene_map.tsv from STAR gene counts")
    expression.add_argument("--sample-sheet", type=Path, required=True, help="GDC sample sheet of the files")
    expression.add_argument("--files", type=Path, required=True, help="where gdc-client downloaded them")
    expression.add_argument("--out", type=Path, required=True, help="the cohort's expression/ directory")
    expression.add_argument("--value", default=STAR_VALUE, help=f"column to take (default {STAR_VALUE})")
    expression.set_defaults(run=cmd_expression)

    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
