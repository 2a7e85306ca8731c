"""Where bitro reads and writes: each input layout's files and every output path, stated once.

Inputs (``docs/formats.md``), one function per layout that names a sample's files:

- HEST-1k (:func:`hest_files`): ``st/{id}.h5ad``, ``metadata/{id}.json``,
  ``wsis/{id}.{tif,tiff,svs,ndpi,btf}`` and optionally
  ``cellvit_seg/{id}_cellvit_seg.{parquet,geojson,geojson.zip}``;
- TCGA (:func:`tcga_files`): ``expression/tpm.tsv``, ``expression/gene_map.tsv`` and
  ``slides/{barcode}.{uuid}.{svs,tif,tiff,ndpi}``;
- slides, prediction only (:func:`slides_files`): ``{id}.{svs,tif,tiff,ndpi,btf,mrxs,…}``
  (:data:`SLIDE_SUFFIXES`) or the sheet's ``file``, relative to the root, and no expression;
- Xenium (:func:`xenium_files`): in the section's bundle ``{root}/{id}/`` (or ``root`` itself),
  ``experiment.xenium``, ``cells.parquet``, ``cell_feature_matrix.h5``, ``he_image.ome.tif`` and
  ``he_imagealignment.csv`` (the last two possibly prefixed with the run's name).

Outputs, under ``results/``: per sample ``{cohort}/samples/{sample}/`` (:class:`SampleFile`), per cohort
``{cohort}/`` (:class:`CohortFile`), per fold ``{cohort}/{fold}/`` (:class:`FoldFile`), transfer runs
``transfer/{source}_to_{target}/``, ablations ``ablations/{variant}/{cohort}/`` and each cohort's figures
``{cohort}/figures/`` (:func:`figure_names`). Every directory function takes names or, left at its
defaults, gives the Snakemake wildcard pattern (``results/{cohort}/samples/{sample}``).

Plain Python without Snakemake: the workflow (``workflow/rules/common.smk``), ``bitro doctor``, the readers
in :mod:`bitro.io` and the demo writers in :mod:`bitro.demo` all import it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from bitro.options import FORMATS, LEVELS

# --------------------------------------------------------------------------------------------------
# input layouts
# --------------------------------------------------------------------------------------------------


#: The folders of a HEST-1k root: spot expression, slides, metadata, CellViT segmentations.
HEST_EXPRESSION_DIR: Final = "st"
HEST_SLIDE_DIR: Final = "wsis"
HEST_METADATA_DIR: Final = "metadata"
HEST_SEGMENTATION_DIR: Final = "cellvit_seg"
#: The folders of a TCGA cohort's root: the RNA-seq tables and the diagnostic slides.
TCGA_EXPRESSION_DIR: Final = "expression"
TCGA_SLIDE_DIR: Final = "slides"

#: Slide suffixes a HEST sample's ``wsis/{id}`` may have, in the order they are looked for.
HEST_SLIDE_SUFFIXES: Final = (".tif", ".tiff", ".svs", ".ndpi", ".btf")
#: Slide suffixes of the files in a TCGA cohort's ``slides/``.
TCGA_SLIDE_SUFFIXES: Final = (".svs", ".tif", ".tiff", ".ndpi")
#: Suffixes of the whole-slide images :mod:`bitro.io.slides` reads (OpenSlide's single-file formats and
#: pyramidal TIFFs), in the order a ``slides`` sample's ``{root}/{id}.*`` is looked for.
SLIDE_SUFFIXES: Final = (
    ".svs",
    ".tif",
    ".tiff",
    ".ndpi",
    ".btf",
    ".mrxs",
    ".scn",
    ".bif",
    ".vms",
    ".svslide",
)
#: Suffixes of a HEST CellViT segmentation, in the order they are looked for.
HEST_SEGMENTATION_SUFFIXES: Final = (".parquet", ".geojson", ".geojson.zip")

#: Names of the files in a Xenium output bundle (the H&E image and its alignment may carry a prefix).
XENIUM_EXPERIMENT: Final = "experiment.xenium"
XENIUM_CELLS: Final = "cells.parquet"
XENIUM_MATRIX: Final = "cell_feature_matrix.h5"
XENIUM_HE_IMAGE: Final = "he_image.ome.tif"
XENIUM_HE_IMAGE_PATTERN: Final = "*he_image*.tif*"
XENIUM_ALIGNMENT: Final = "he_imagealignment.csv"
XENIUM_ALIGNMENT_PATTERN: Final = "*imagealignment.csv"
XENIUM_CELL_BOUNDARIES: Final = "cell_boundaries.parquet"
XENIUM_NUCLEUS_BOUNDARIES: Final = "nucleus_boundaries.parquet"


@dataclass(frozen=True)
class LayoutFile:
    """One file a sample is read from: its role (the key the workflow names it by), what it is, where."""

    role: str
    what: str
    path: Path


@dataclass(frozen=True)
class SampleLayout:
    """The files one sample of a layout is read from, and which of them is its slide.

    A file that is absent is given with the name the layout expects, so that a missing one is named.
    """

    files: tuple[LayoutFile, ...]
    slide: Path

    def paths(self) -> dict[str, Path]:
        """Return role → path of every file (the workflow's input names)."""
        return {file.role: file.path for file in self.files}

    def missing(self) -> list[LayoutFile]:
        """Return the files that are not there."""
        return [file for file in self.files if not file.path.is_file()]


def hest_expression(root: Path, sample: str) -> Path:
    """Return the spots × genes counts of a HEST sample: ``st/{id}.h5ad``."""
    return Path(root) / HEST_EXPRESSION_DIR / f"{sample}.h5ad"


def hest_metadata(root: Path, sample: str) -> Path:
    """Return the metadata JSON of a HEST sample: ``metadata/{id}.json``."""
    return Path(root) / HEST_METADATA_DIR / f"{sample}.json"


def hest_slides(root: Path, sample: str) -> list[Path]:
    """Return every path a HEST sample's slide may have, ``wsis/{id}.tif`` first."""
    return [Path(root) / HEST_SLIDE_DIR / f"{sample}{suffix}" for suffix in HEST_SLIDE_SUFFIXES]


def hest_slide(root: Path, sample: str) -> Path:
    """Return the slide of a HEST sample: the first of :func:`hest_slides` that is a file, else
    ``wsis/{id}.tif`` (absent)."""
    candidates = hest_slides(root, sample)
    return next((path for path in candidates if path.is_file()), candidates[0])


def hest_segmentations(root: Path, sample: str) -> list[Path]:
    """Return the paths a HEST sample's CellViT segmentation may have, GeoParquet first."""
    folder = Path(root) / HEST_SEGMENTATION_DIR
    return [folder / f"{sample}_cellvit_seg{suffix}" for suffix in HEST_SEGMENTATION_SUFFIXES]


def hest_files(root: Path, sample: str) -> SampleLayout:
    """Return the files a HEST-1k sample is read from (the segmentation, optional, is not among them)."""
    slide = hest_slide(root, sample)
    files = (
        LayoutFile("expression", "HEST spot expression (.h5ad)", hest_expression(root, sample)),
        LayoutFile("slide", "HEST whole-slide image", slide),
        LayoutFile("metadata", "HEST metadata JSON", hest_metadata(root, sample)),
    )
    return SampleLayout(files, slide)


def tcga_slides_dir(root: Path) -> Path:
    """Return the folder of a TCGA cohort's diagnostic slides: ``slides/``."""
    return Path(root) / TCGA_SLIDE_DIR


def tcga_expression(root: Path) -> tuple[Path, Path]:
    """Return a TCGA cohort's TPM table and gene map: ``expression/tpm.tsv``, ``expression/gene_map.tsv``."""
    folder = Path(root) / TCGA_EXPRESSION_DIR
    return folder / "tpm.tsv", folder / "gene_map.tsv"


def is_tcga_slide(path: Path) -> bool:
    """Return whether ``path``'s name is that of a slide file (suffix of :data:`TCGA_SLIDE_SUFFIXES`)."""
    return path.suffix.lower() in TCGA_SLIDE_SUFFIXES and not path.name.startswith(".")


def tcga_slide(root: Path, sample: str) -> Path:
    """Return the slide of a TCGA sample (its barcode): the first slide file named ``{barcode}.*``
    (any case), else ``slides/{barcode}.<uuid>.svs`` (absent)."""
    folder = tcga_slides_dir(root)
    prefix = sample.upper() + "."
    found = sorted(
        path
        for path in (folder.iterdir() if folder.is_dir() else [])
        if path.name.upper().startswith(prefix) and is_tcga_slide(path) and path.is_file()
    )
    return found[0] if found else folder / f"{sample}.<uuid>.svs"


def tcga_files(root: Path, sample: str) -> SampleLayout:
    """Return the files a TCGA slide (``sample`` its barcode) is read from."""
    tpm, gene_map = tcga_expression(root)
    slide = tcga_slide(root, sample)
    files = (
        LayoutFile("expression", "TCGA TPM table", tpm),
        LayoutFile("gene_map", "TCGA gene map", gene_map),
        LayoutFile("slide", "TCGA diagnostic slide", slide),
    )
    return SampleLayout(files, slide)


def xenium_bundle(root: Path, sample: str) -> Path:
    """Return the Xenium bundle of a section: ``root/{id}`` when it is a folder, else ``root`` when it is
    a bundle itself (it holds ``experiment.xenium``), else ``root/{id}`` (absent)."""
    root = Path(root)
    if (root / sample).is_dir() or not (root / XENIUM_EXPERIMENT).is_file():
        return root / sample
    return root


def bundle_file(bundle: Path, name: str, pattern: str) -> Path:
    """Return ``bundle/name``, else the one file matching ``pattern`` (a run-prefixed export), else
    ``bundle/name`` (absent, or ambiguous)."""
    bundle = Path(bundle)
    exact = bundle / name
    if exact.is_file():
        return exact
    matches = sorted(path for path in bundle.glob(pattern) if path.is_file()) if bundle.is_dir() else []
    return matches[0] if len(matches) == 1 else exact


def xenium_files(root: Path, sample: str) -> SampleLayout:
    """Return the files a Xenium section is read from (the optional cell boundaries are not among them)."""
    bundle = xenium_bundle(root, sample)
    image = bundle_file(bundle, XENIUM_HE_IMAGE, XENIUM_HE_IMAGE_PATTERN)
    files = (
        LayoutFile("experiment", "Xenium experiment file", bundle / XENIUM_EXPERIMENT),
        LayoutFile("cell_table", "Xenium cell table", bundle / XENIUM_CELLS),
        LayoutFile("matrix", "Xenium cell feature matrix", bundle / XENIUM_MATRIX),
        LayoutFile("he_image", "registered H&E image", image),
        LayoutFile(
            "alignment", "H&E alignment", bundle_file(bundle, XENIUM_ALIGNMENT, XENIUM_ALIGNMENT_PATTERN)
        ),
    )
    return SampleLayout(files, image)


def is_slide_file(path: Path) -> bool:
    """Return whether ``path``'s name is that of a slide (suffix of :data:`SLIDE_SUFFIXES`, any case)."""
    return path.suffix.lower() in SLIDE_SUFFIXES and not path.name.startswith(".")


def slides_slide(root: Path, sample: str, file: str | Path | None = None) -> Path:
    """Return the slide of a ``slides`` sample.

    ``file`` (the sheet's ``file`` column), when given, is the slide's path relative to ``root`` (or
    absolute). Otherwise the first of ``{root}/{sample}{suffix}`` over :data:`SLIDE_SUFFIXES` that is a
    file, then a file named ``{sample}.*`` with a slide suffix in another case (``.SVS``), else
    ``{root}/{sample}.svs`` (absent).
    """
    root = Path(root)
    if file is not None and str(file).strip():
        return root / str(file).strip()  # an absolute ``file`` stays itself
    candidates = [root / f"{sample}{suffix}" for suffix in SLIDE_SUFFIXES]
    found = next((path for path in candidates if path.is_file()), None)
    if found is None and root.is_dir():
        found = next(
            (
                path
                for path in sorted(root.iterdir())
                if path.stem == sample and is_slide_file(path) and path.is_file()
            ),
            None,
        )
    return found if found is not None else candidates[0]


def slides_files(root: Path, sample: str, file: str | Path | None = None) -> SampleLayout:
    """Return the files a ``slides`` sample (prediction only) is read from: its slide, nothing else.

    ``file`` is the sheet's ``file`` column (see :func:`slides_slide`).
    """
    slide = slides_slide(root, sample, file)
    return SampleLayout((LayoutFile("slide", "whole-slide image", slide),), slide)


def sample_files(fmt: str, root: Path, sample: str, *, file: str | Path | None = None) -> SampleLayout:
    """Return the files a sample of layout ``fmt`` (one of :data:`bitro.options.FORMATS`) is read from.

    ``file`` is a ``slides`` sample's slide relative to ``root`` (the sheet's ``file`` column); the other
    layouts name their files themselves.

    Raises
    ------
    ValueError
        ``fmt`` is not one of :data:`bitro.options.FORMATS`, or ``file`` is given for another layout.
    """
    if fmt == "slides":
        return slides_files(root, sample, file)
    if file is not None and str(file).strip():
        raise ValueError(f"file {file!r} is only for the slides layout, not {fmt!r}")
    if fmt == "hest":
        return hest_files(root, sample)
    if fmt == "tcga":
        return tcga_files(root, sample)
    if fmt == "xenium":
        return xenium_files(root, sample)
    raise ValueError(f"unknown format {fmt!r}; expected one of {sorted(FORMATS)}")


# --------------------------------------------------------------------------------------------------
# outputs
# --------------------------------------------------------------------------------------------------

#: The workflow's output root, relative to its working directory.
RESULTS: Final = Path("results")


class SampleFile:
    """Names of the files in a sample's folder (:func:`sample_dir`)."""

    TISSUE: Final = "tissue.npz"
    TISSUE_GEOJSON: Final = "tissue.geojson"
    UNITS: Final = "units.parquet"
    STAIN: Final = "stain.json"
    CELLS: Final = "cells.parquet"
    CELLS_GEOJSON: Final = "cells.geojson"
    CELLVIT_SCRIPT: Final = "cellvit/run.sh"
    CELLVIT_OUTPUT: Final = "cellvit/output"
    CROPS: Final = "crops.zarr"
    EMBEDDINGS: Final = "embeddings.npy"
    EMBEDDINGS_DESCRIPTION: Final = "embeddings.json"
    FEATURES: Final = "features.npy"
    GRAPH: Final = "graph.npz"
    TARGETS: Final = "targets.h5ad"


class CohortFile:
    """Names of the files in a cohort's folder (:func:`cohort_dir`), a transfer run's and an ablation's."""

    GENES: Final = "genes.txt"
    FOLDS: Final = "folds.json"
    METRICS: Final = "metrics.tsv"
    BASELINES: Final = "baselines.tsv"


class FoldFile:
    """Names of the files in a fold's folder (:func:`fold_dir`)."""

    PCA: Final = "pca.npz"
    MODEL_WEIGHTS: Final = "model.safetensors"
    MODEL_DESCRIPTION: Final = "model.json"
    TRAIN_LOG: Final = "train_log.csv"
    PREDICTIONS: Final = "predictions.h5ad"
    CELL_PREDICTIONS: Final = "cells_pred.h5ad"
    METRICS: Final = "metrics.tsv"
    BASELINES: Final = "baselines.tsv"
    BASELINE_PREDICTIONS: Final = "baselines.h5ad"
    #: The final model's portable bundle folder (``final/`` only; its zip beside it,
    #: :func:`bitro.bundle.zip_path`).
    BUNDLE: Final = "bundle"

    @staticmethod
    def phenotypes(scope: str = "{scope}") -> str:
        """Return the name of a fold's phenotype centroids for feature ``scope`` (``sample``/``cohort``)."""
        return f"phenotypes_{scope}.npz"


#: The files every sample gets whatever the settings (the workflow's ``all`` asks for them).
SAMPLE_PRODUCTS: Final = (
    SampleFile.UNITS,
    SampleFile.CELLS,
    SampleFile.TARGETS,
    SampleFile.FEATURES,
    SampleFile.GRAPH,
)
#: The per-sample files a fold's training, prediction and baselines read, besides the features.
FOLD_SAMPLE_INPUTS: Final = (SampleFile.CELLS, SampleFile.GRAPH, SampleFile.UNITS, SampleFile.TARGETS)

#: File names of the whole run.
DEMO_SUMMARY: Final = "demo_summary.tsv"
STAIN_REFERENCE: Final = "stain_reference.json"
ABLATION_TABLE: Final = "table.tsv"
ABLATION_TABLE_LONG: Final = "table_long.tsv"


def cohort_dir(cohort: str = "{cohort}", results: Path = RESULTS) -> Path:
    """Return a cohort's output folder: ``results/{cohort}``."""
    return Path(results) / cohort


def samples_dir(cohort: str = "{cohort}", results: Path = RESULTS) -> Path:
    """Return the folder of a cohort's sample folders: ``results/{cohort}/samples``."""
    return cohort_dir(cohort, results) / "samples"


def sample_dir(cohort: str = "{cohort}", sample: str = "{sample}", results: Path = RESULTS) -> Path:
    """Return a sample's output folder: ``results/{cohort}/samples/{sample}``."""
    return samples_dir(cohort, results) / sample


def fold_dir(cohort: str = "{cohort}", fold: str = "{fold}", results: Path = RESULTS) -> Path:
    """Return a fold's output folder: ``results/{cohort}/{fold}``."""
    return cohort_dir(cohort, results) / fold


def predictions_dir(
    cohort: str = "{cohort}", sample: str | None = "{sample}", results: Path = RESULTS
) -> Path:
    """Return a predicted slide's folder ``results/{cohort}/predictions/{sample}``, or with
    ``sample=None`` the cohort's ``results/{cohort}/predictions`` (where ``bulk.tsv`` gathers the slides)."""
    folder = cohort_dir(cohort, results) / "predictions"
    return folder if sample is None else folder / sample


#: The predicted cohort's table of slide profiles, one row per slide, in :func:`predictions_dir`.
PREDICTED_PROFILES: Final = "bulk.tsv"


def figures_dir(cohort: str = "{cohort}", results: Path = RESULTS) -> Path:
    """Return a cohort's figures folder: ``results/{cohort}/figures``."""
    return cohort_dir(cohort, results) / "figures"


def transfer_name(source: str = "{source}", target: str = "{target}") -> str:
    """Return a transfer run's name, ``{source}_to_{target}`` (its folder; a config's ``bundle:``)."""
    return f"{source}_to_{target}"


def transfer_dir(source: str = "{source}", target: str = "{target}", results: Path = RESULTS) -> Path:
    """Return a transfer run's folder: ``results/transfer/{source}_to_{target}``."""
    return Path(results) / "transfer" / transfer_name(source, target)


def transfer_pretrain_dir(
    source: str = "{source}", target: str = "{target}", results: Path = RESULTS
) -> Path:
    """Return the folder of a transfer run's pretrained model:
    ``results/transfer/{source}_to_{target}/pretrain``."""
    return transfer_dir(source, target, results) / "pretrain"


def transfer_fold_dir(
    source: str = "{source}", target: str = "{target}", fold: str = "{fold}", results: Path = RESULTS
) -> Path:
    """Return a transfer run's fold folder: ``results/transfer/{source}_to_{target}/{fold}``."""
    return transfer_dir(source, target, results) / fold


def ablations_dir(results: Path = RESULTS) -> Path:
    """Return the ablations' folder: ``results/ablations``."""
    return Path(results) / "ablations"


def ablation_dir(variant: str = "{variant}", cohort: str = "{cohort}", results: Path = RESULTS) -> Path:
    """Return an ablation run's folder: ``results/ablations/{variant}/{cohort}``."""
    return ablations_dir(results) / variant / cohort


def ablation_fold_dir(
    variant: str = "{variant}", cohort: str = "{cohort}", fold: str = "{fold}", results: Path = RESULTS
) -> Path:
    """Return an ablation run's fold folder: ``results/ablations/{variant}/{cohort}/{fold}``."""
    return ablation_dir(variant, cohort, results) / fold


def logs_dir(results: Path = RESULTS) -> Path:
    """Return the workflow's log folder: ``results/logs``."""
    return Path(results) / "logs"


def benchmarks_dir(results: Path = RESULTS) -> Path:
    """Return the workflow's benchmark folder: ``results/benchmarks``."""
    return Path(results) / "benchmarks"


#: The name of the demo's manifest (``bitro demo --manifest``) in its data folder.
DEMO_MANIFEST: Final = "manifest.json"


def demo_data_dir(results: Path = RESULTS) -> Path:
    """Return the folder the demo's cohorts are written into by default: ``results/demo_data``."""
    return Path(results) / "demo_data"


def doctor_dir(results: Path = RESULTS) -> Path:
    """Return the preflight reports' folder: ``results/doctor``."""
    return Path(results) / "doctor"


# --------------------------------------------------------------------------------------------------
# folds
# --------------------------------------------------------------------------------------------------

#: The final model's fold: every sample of the cohort trains or validates, none is tested
#: (:func:`bitro.folds.splits.final_fold`); its folder ``results/{cohort}/final`` is laid out as a fold's.
FINAL_FOLD: Final = "final"
#: The pattern of a fold's name (the workflow's ``{fold}`` wildcard): a cross-validation fold or the final.
FOLD_PATTERN: Final = rf"fold\d+|{FINAL_FOLD}"


def fold_name(index: int) -> str:
    """Return the name of fold ``index``: ``fold{index}``."""
    return f"fold{index}"


def fold_names(count: int) -> list[str]:
    """Return the names of ``count`` folds: ``fold0`` … ``fold{count-1}``."""
    return [fold_name(k) for k in range(count)]


def fold_count(
    level: str,
    samples: Sequence[str],
    patients: Sequence[str] | None,
    *,
    group_by: str,
    bulk_folds: int,
    xenium_strips: int,
) -> int:
    """Return how many folds a cohort's split has, known from its sample sheet before the split is made.

    Bulk: ``bulk_folds`` (one patient split when it is 1); Xenium: one per strip; ST: leave one group
    out, a group being a patient (``group_by == "patient"``; an empty patient id stands for its sample)
    or a sample.
    """
    if level == "bulk":
        return bulk_folds
    if level == "xenium":
        return xenium_strips
    if group_by == "patient" and patients is not None:
        return len({patient or sample for sample, patient in zip(samples, patients, strict=True)})
    return len(samples)


# --------------------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------------------

#: A cohort's figures and tables that do not depend on its folds: key (the workflow's output name) → file.
COHORT_FIGURES: Final[dict[str, str]] = {
    "pcc_genes": "pcc_genes.png",
    "pcc_table": "pcc_genes.tsv",
    "baselines": "baselines.png",
    "training": "training.png",
    "summary": "summary.tsv",
    "metrics": "metrics_by_fold.tsv",
}
#: Per-fold figures: kind → the levels that get it.
FOLD_FIGURE_LEVELS: Final[dict[str, tuple[str, ...]]] = {
    "spatial": ("st", "xenium"),
    "cells": ("xenium", "bulk"),
}


def figure_names(level: str, folds: Sequence[str]) -> dict[str, str]:
    """Return every file ``bitro plot`` writes for a cohort of ``level`` and ``folds``: key → file name.

    Per fold ``{fold}_spatial.png`` (key ``spatial_{fold}``; ST and Xenium) and ``{fold}_cells.png``
    (``cells_{fold}``; Xenium and bulk), then :data:`COHORT_FIGURES`.

    Raises
    ------
    ValueError
        ``level`` is not one of :data:`LEVELS`.
    """
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    names: dict[str, str] = {}
    for fold in folds:
        for kind, levels in FOLD_FIGURE_LEVELS.items():
            if level in levels:
                names[f"{kind}_{fold}"] = f"{fold}_{kind}.png"
    return names | COHORT_FIGURES


def figure_kind(key: str) -> tuple[str, str]:
    """Return the kind of figure a :func:`figure_names` key names and its fold (``all`` for a cohort's)."""
    kind, _, fold = key.partition("_")
    if kind in FOLD_FIGURE_LEVELS and fold:
        return kind, fold
    return key, "all"
