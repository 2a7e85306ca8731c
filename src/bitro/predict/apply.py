"""Applying a model bundle to one sample folder: the slide's predictions, maps and profile.

The sample folder (``results/{cohort}/samples/{sample}/``) needs ``cells.parquet``, ``graph.npz``,
``units.parquet`` and the features the bundle reads (``embeddings.npy`` + ``.json`` projected on the
bundle's PCA basis, or ``features.npy``); ``targets.h5ad`` is not read, so a slide without expression
predicts like any other. Prediction is :func:`bitro.evaluate.predict.predict_sample`, the code path that
scores the cross-validation folds. :func:`apply_bundle` writes into ``out_dir`` every file of
:func:`bitro.predict.slide.write_slide_outputs` (``spots.h5ad``, ``cells.h5ad``, ``cells.geojson``,
``maps/{gene}.png``) and ``profile.tsv``, the slide's row of the cohort's ``bulk.tsv``: a bulk model's
prediction of the slide, or the pseudo-bulk of a spot model's units. A bulk model's maps are its
patches' shares of the slide (the sums of their cells' pseudo-cell profiles, :func:`unit_amounts`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from bitro.bundle.checks import check_features, chosen_genes
from bitro.bundle.load import Bundle
from bitro.evaluate.predict import SamplePrediction, predict_sample
from bitro.folds.samples import SampleData, load_sample, sample_features
from bitro.io.slides import Slide
from bitro.layout import SampleFile
from bitro.predict.bulk import bulk_table, write_bulk_table
from bitro.predict.slide import PredictionFile, SlideOutputs, unit_amounts, write_slide_outputs
from bitro.preprocess.cells import read_cells
from bitro.preprocess.units import read_units

log = logging.getLogger("bitro")


def check_sample_features(bundle: Bundle, sample_dir: str | os.PathLike[str]) -> None:
    """Refuse a sample whose ``embeddings.json`` was not made as the bundle's cohort's was
    (:func:`bitro.bundle.checks.check_features`); a sample without one is not checked."""
    path = Path(sample_dir) / SampleFile.EMBEDDINGS_DESCRIPTION
    if path.is_file():
        check_features(bundle, json.loads(path.read_text()), source=path)


def bundle_sample(bundle: Bundle, sample_dir: str | os.PathLike[str]) -> SampleData:
    """One sample as the bundle's model sees it: its features (projected on the bundle's basis, or its
    ``features.npy``), the bundle's phenotypes, cut into bags at the bundle's level; no targets read."""
    folder = Path(sample_dir)
    features, _ = sample_features(folder, scope=bundle.scope, basis=bundle.basis)
    # Bags as the training cohort's were cut (a Xenium cohort's patches ignore the in-tissue flag).
    level = "bulk" if bundle.trained_level == "bulk" else ("xenium" if bundle.level == "xenium" else "st")
    return load_sample(
        folder, genes=bundle.genes, features=features, phenotypes=bundle.phenotypes, level=level
    )


def predict_with_bundle(
    bundle: Bundle,
    sample_dir: str | os.PathLike[str],
    *,
    sample_id: str | None = None,
    device: str = "cpu",
) -> SamplePrediction:
    """The bundle's predictions of one sample (units and pseudo-cells, counts or TPM); nothing is written.

    ``sample_id`` names the sample in the outputs (default: its folder's name)."""
    sample = bundle_sample(bundle, sample_dir)
    if sample_id is not None:
        sample = replace(sample, sample_id=sample_id)
    return predict_sample(bundle.model, sample, bundle.transform, device=device)


def write_bundle_prediction(
    bundle: Bundle,
    prediction: SamplePrediction,
    sample_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    slide: Slide | str | os.PathLike[str],
    mpp: float,
    chosen: Sequence[str],
    dpi: int = 150,
) -> SlideOutputs:
    """Write one sample's prediction files and ``profile.tsv`` into ``out_dir`` (module docstring)."""
    folder, out = Path(sample_dir), Path(out_dir)
    units = read_units(folder / SampleFile.UNITS)
    cells = read_cells(folder / SampleFile.CELLS).iloc[prediction.cell_rows].reset_index(drop=True)
    genes = bundle.genes
    if bundle.trained_level == "bulk":
        per_unit = unit_amounts(prediction.pseudo_cells, prediction.cell_unit, len(units))
        whole = prediction.prediction[0]
    else:
        per_unit = np.full((len(units), len(genes)), np.nan)
        per_unit[prediction.unit_ids] = prediction.prediction
        whole = None
    written = write_slide_outputs(
        out,
        sample_id=prediction.sample_id,
        genes=genes,
        units=units,
        unit_prediction=per_unit,
        cells=cells,
        pseudo_cells=prediction.pseudo_cells,
        slide=slide,
        mpp=mpp,
        space=bundle.space,
        trained_level=bundle.trained_level,
        chosen=chosen,
        model=bundle.description(),
        slide_prediction=whole,
        phenotype=prediction.phenotype,
        dpi=dpi,
    )
    table = bulk_table(
        {prediction.sample_id: written.profile},
        genes,
        space=bundle.space,
        trained_level=bundle.trained_level,
        n_units={prediction.sample_id: written.n_units},
    )
    write_bulk_table(table, out / PredictionFile.PROFILE)
    return written


def apply_bundle(
    bundle: Bundle,
    sample_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    slide: Slide | str | os.PathLike[str],
    mpp: float,
    genes: Sequence[str] | None = None,
    n_genes: int = 6,
    sample_id: str | None = None,
    device: str = "cpu",
    dpi: int = 150,
) -> SlideOutputs:
    """Check, predict and write one sample (module docstring); returns what was written.

    Parameters
    ----------
    bundle
        The loaded bundle (:func:`bitro.bundle.load_bundle`).
    sample_dir
        The sample's folder of per-sample files.
    out_dir
        The slide's prediction folder.
    slide, mpp
        The sample's H&E and its µm per level-0 pixel (the maps are drawn over it).
    genes, n_genes
        Genes of the maps and QuPath measurements: ``genes``, else the bundle's best ``n_genes``.
    sample_id
        The sample's name in the outputs (default: its folder's name).

    Raises
    ------
    BundleMismatchError
        The sample's embeddings were made otherwise than the bundle's cohort's, or ``genes`` names a gene
        the bundle does not predict.
    """
    chosen = chosen_genes(bundle, genes, n_genes)
    check_sample_features(bundle, sample_dir)
    prediction = predict_with_bundle(bundle, sample_dir, sample_id=sample_id, device=device)
    written = write_bundle_prediction(
        bundle, prediction, sample_dir, out_dir, slide=slide, mpp=mpp, chosen=chosen, dpi=dpi
    )
    log.info(
        "%s: %d units, %d cells predicted -> %s",
        prediction.sample_id,
        len(prediction.unit_ids),
        len(prediction.cell_rows),
        out_dir,
    )
    return written
