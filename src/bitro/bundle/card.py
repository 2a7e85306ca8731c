"""``MODEL_CARD.md``: what a bundle predicts, from what it was trained, how well, and how to apply it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from bitro.bundle.cv import best_genes
from bitro.bundle.files import BundleFile

#: Genes listed by name in the card (``bundle.json`` lists them all).
LISTED_GENES = 20
#: What one predicted value is, per level the model was trained on.
UNIT_OF = {"spot": "each spot-sized unit (a Visium spot, or a 55 µm patch of a slide)", "bulk": "each slide"}


def _value(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join("---" for _ in header) + " |"]
    lines += ["| " + " | ".join(_value(v) for v in row) + " |" for row in rows]
    return lines


def _cv_lines(cv: Mapping[str, Any] | None) -> list[str]:
    if not cv:
        return ["No cross-validation scores were given when the bundle was made."]
    protocol = cv.get("protocol") or "the cohort's folds"
    lines = [
        f"Protocol: {protocol}. Each fold's model is trained without its test samples and scored on them; "
        "the bundled model is trained the same way on the whole cohort, so these scores estimate how it "
        "does on slides it has not seen. Mean ± standard deviation over the folds "
        f"({BundleFile.CV_METRICS}).",
        "",
    ]
    rows = [
        [
            r["level"],
            r["space"],
            r["scope"],
            r["n_folds"],
            *(f"{_value(r.get(s))} ± {_value(r.get(s + '_std'))}" for s in ("pcc_gene", "pcc_overall")),
        ]
        for r in cv.get("scores", [])
    ]
    lines += _table(["level", "space", "scope", "folds", "PCC per gene", "PCC overall"], rows)
    per_gene = cv.get("gene_pcc")
    if per_gene:
        lines += [
            "",
            f"Per-gene PCC ({per_gene['level']}, {per_gene['space']}, {per_gene['scope']}, mean over "
            f"{per_gene['n_folds']} folds) is in `{BundleFile.RECORD}` and `{BundleFile.CV_GENE_PCC}`.",
        ]
    return lines


def model_card(record: Mapping[str, Any]) -> str:
    """The Markdown of ``MODEL_CARD.md`` for a bundle's ``bundle.json`` record (its ``files`` aside)."""
    cohort, encoder, cv = record["cohort"], record["encoder"], record.get("cv")
    genes = list(record["genes"])
    per_gene = (cv or {}).get("gene_pcc") or {}
    top = best_genes(genes, per_gene.get("pcc"), min(LISTED_GENES, len(genes)))
    listed = ", ".join(top) + (f" and {len(genes) - len(top)} more" if len(genes) > len(top) else "")
    order = "highest cross-validated PCC first" if per_gene else "in the model's order"
    name = cohort.get("name", "a cohort")
    space = "raw counts" if record["space"] == "counts" else "TPM"
    lines = [
        f"# BiTro model of {name}",
        "",
        f"`{record['format']}`, made by bitro {record['bitro_version']} on {record['created_utc']}.",
        "",
        "## What it predicts",
        "",
        f"The expression of {len(genes)} genes in {space} for {UNIT_OF[record['trained_level']]}, from the "
        f"H&E image alone (trained at the `{record['trained_level']}` level on `{record['level']}` data). "
        "Every prediction is also spread over the unit's cells (pseudo-cell profiles, eq. 10 of the paper).",
        "",
        f"Genes ({order}): {listed}.",
        "",
        "## Training cohort",
        "",
        *_table(
            ["cohort", "format", "level", "samples", "patients", "units", "cells"],
            [
                [
                    cohort.get(k)
                    for k in ("name", "format", "level", "n_samples", "n_patients", "n_units", "n_cells")
                ]
            ],
        ),
        "",
        "## Cross-validation",
        "",
        *_cv_lines(cv),
        "",
        "## Encoder and features",
        "",
        *_table(
            ["encoder", "weights sha256", "mode", "crop", "image size", "pooling", "stain", "feature scope"],
            [
                [
                    encoder.get("name"),
                    f"`{encoder.get('weights_sha256')}`",
                    encoder.get("mode"),
                    f"{encoder.get('crop_size')} px at {encoder.get('mpp')} µm/px",
                    encoder.get("image_size"),
                    encoder.get("pooling"),
                    encoder.get("stain_method"),
                    record["features"]["scope"],
                ]
            ],
        ),
        "",
        "Cells are embedded by this encoder with these weights, on crops of this size and pixel size, "
        f"stain-normalised to `{BundleFile.STAIN_REFERENCE}`"
        + (
            f", and projected on the cohort's PCA basis (`{BundleFile.PCA}`)."
            if record["features"]["scope"] == "cohort"
            else ", then reduced by a PCA of each slide."
        ),
        "",
        "## Intended use and limits",
        "",
        "- Research use: hypotheses, spatial maps and bulk estimates from H&E. Not for diagnosis or "
        "treatment.",
        f"- H&E slides like those of {name} (tissue, staining, scanner). Other tissue types or stains are "
        "out of the training distribution; the cross-validation above says nothing about them.",
        "- Slides must be embedded exactly as the training cohort was: bitro refuses another encoder, other "
        "weights, another crop size or pixel size, or another embedding mode.",
        "- Genes of low cross-validated PCC are predicted little better than their average: read their "
        "maps with care.",
        "",
        "## How to apply",
        "",
        "One slide, without Snakemake (every step in one process, with this bundle's settings):",
        "",
        "```",
        "bitro predict-slide --bundle <this folder or its .zip> --slide slide.svs --out predictions/slide",
        "```",
        "",
        "A folder of slides through the workflow: a cohort of `format: slides` with `bundle:` naming this "
        "folder or its .zip in the config (bitro's docs/predict.md); every slide gets its maps under "
        "`results/{cohort}/predictions/`.",
        "",
        f"Every file's sha256 is in `{BundleFile.RECORD}`; bitro checks them when it loads the bundle.",
        "",
    ]
    return "\n".join(lines)
