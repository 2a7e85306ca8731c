"""``bitro predict-slide``: one bare slide to predictions, every per-sample step in one process.

With the bundle's settings (``bundle.json`` ``settings``, each missing one at the library's default) and
its encoder, the steps the workflow runs per sample, calling the same library functions:

1. tissue mask (:func:`~bitro.preprocess.tissue.tissue_mask`);
2. spot-sized patches over tissue (:func:`~bitro.preprocess.units.grid_units`; a bare slide has no spots);
3. the slide's stain model, mapped to the bundle's reference
   (:func:`~bitro.preprocess.stain.fit_slide_stain`);
4. nuclei by the classical segmenter (:func:`~bitro.preprocess.segment.segment_classical`), assigned to
   the patches (:func:`~bitro.preprocess.cells.cells_table`);
5. stain-normalised crops at the bundle's crop size and pixel size
   (:func:`~bitro.preprocess.crops.write_crops`);
6. embeddings by the bundle's encoder, whose weights must be the bundle's (sha256), in its mode;
7. per-sample PCA (sample scope only; cohort scope projects on the bundle's basis when predicting);
8. kNN graphs within patches (:func:`~bitro.features.graph.knn_graphs`);
9. prediction and outputs (:func:`bitro.predict.apply.apply_bundle`).

The per-sample files go to ``out_dir/sample/`` in the layout of a sample folder (so
``bitro predict-sample`` can re-apply another bundle to them); the predictions to ``out_dir``.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from bitro._atomic import atomic_path
from bitro.bundle.checks import check_features, chosen_genes
from bitro.bundle.files import BundleFile
from bitro.bundle.load import Bundle
from bitro.errors import BundleMismatchError, InputError
from bitro.features.embed import embed_crops
from bitro.features.encoders import Encoder, load_encoder
from bitro.features.graph import knn_graphs, write_graph
from bitro.features.reduce import fit_pca
from bitro.features.tokens import embed_tiles
from bitro.io.slides import Slide, open_slide
from bitro.layout import SampleFile
from bitro.predict.apply import apply_bundle
from bitro.predict.slide import PredictionFile, SlideOutputs
from bitro.preprocess.cells import cells_table, read_cells, write_cells
from bitro.preprocess.crops import CropParams, write_crops
from bitro.preprocess.segment import ClassicalParams, segment_classical
from bitro.preprocess.stain import StainNormalizer, fit_slide_stain, read_reference, write_stain_json
from bitro.preprocess.tissue import tissue_mask, write_tissue
from bitro.preprocess.units import grid_units, make_units, write_units

log = logging.getLogger("bitro")

T = TypeVar("T")
#: The stages, in order, as the log names them.
STAGES = ("tissue", "units", "stain", "cells", "crops", "embeddings", "features", "graph", "predict")
#: Segmentation backends ``predict-slide`` runs itself; other cohorts' cells are replaced by these.
OWN_SEGMENTERS = ("classical", "histomicstk")


@contextmanager
def _stage(name: str, slide: str) -> Iterator[None]:
    start = time.perf_counter()
    log.info("[%d/%d] %s: %s …", STAGES.index(name) + 1, len(STAGES), slide, name)
    yield
    log.info(
        "[%d/%d] %s: %s done in %.1f s",
        STAGES.index(name) + 1,
        len(STAGES),
        slide,
        name,
        time.perf_counter() - start,
    )


def _given(section: Mapping[str, Any], names: Mapping[str, str]) -> dict[str, Any]:
    """The keyword arguments (``names``: setting → argument) that ``section`` sets; the rest keep the
    library's defaults."""
    return {argument: section[key] for key, argument in names.items() if section.get(key) is not None}


def _default(function: Callable[..., T], argument: str) -> Any:
    return inspect.signature(function).parameters[argument].default


def segmenter_params(segmentation: Mapping[str, Any]) -> ClassicalParams:
    """The classical segmenter's settings from the config's ``segmentation`` section."""
    backend = segmentation.get("backend")
    if backend is not None and backend not in OWN_SEGMENTERS:
        log.warning(
            "the training cohort's cells came from %r; this slide is segmented by the classical segmenter",
            backend,
        )
    algorithm = backend if backend in OWN_SEGMENTERS else "classical"
    names = {
        "mpp": "mpp",
        "min_area_um2": "min_area_um2",
        "max_area_um2": "max_area_um2",
        "min_distance_um": "min_distance_um",
        "threshold_factor": "threshold_factor",
        "core_factor": "core_factor",
        "polygons": "polygons",
    }
    return ClassicalParams(**_given(segmentation, names), algorithm=algorithm)


def _check_weights(bundle: Bundle, sha256: str, weights: str | os.PathLike[str] | None) -> None:
    expected = bundle.encoder.get("weights_sha256")
    if sha256 != expected:
        raise BundleMismatchError(
            weights if weights is not None else "--encoder-weights",
            f"encoder weights sha256 is {sha256!r} here but {expected!r} in the bundle: give the weights "
            f"the bundle's {bundle.encoder.get('name')} was trained with",
        )


def bundle_encoder(
    bundle: Bundle, *, weights: str | os.PathLike[str] | None = None, device: str = "cpu"
) -> Encoder:
    """The bundle's encoder with ``weights`` (default: where bitro looks), refused unless their sha256 is
    the bundle's."""
    recorded = bundle.encoder
    encoder = load_encoder(
        str(recorded["name"]),
        weights=weights,
        device=device,
        **_given(recorded, {"image_size": "image_size", "pooling": "pooling"}),
    )
    _check_weights(bundle, encoder.sha256, weights)
    return encoder


def _embed(
    bundle: Bundle,
    encoder: Encoder,
    slide: Slide,
    folder: Path,
    normalizer: StainNormalizer,
    *,
    workers: int,
    progress: bool,
) -> dict[str, Any]:
    """Stages 5–6: crops (crop mode) and embeddings, with the bundle's encoder; returns embeddings.json."""
    recorded, features = bundle.encoder, bundle.settings.get("features") or {}
    name = str(recorded["name"])
    out = folder / SampleFile.EMBEDDINGS
    cells = folder / SampleFile.CELLS
    crop_mpp, crop_size = float(recorded["mpp"]), int(recorded["crop_size"])
    if recorded.get("mode") == "tile-token":
        with _stage("crops", slide.path.name):
            log.info("tile-token mode: no crops")
        with _stage("embeddings", slide.path.name):
            tiles = {"tile_size": "tile_px", "tile_margin": "margin_px", "tile_batch_size": "batch_tiles"}
            embed_tiles(
                slide,
                cells,
                normalizer,
                encoder,
                out,
                mpp=crop_mpp,
                progress=progress,
                **_given(features, tiles),
            )
    else:
        crops = folder / SampleFile.CROPS
        with _stage("crops", slide.path.name):
            table = read_cells(cells, geometry=False)
            write_crops(
                slide,
                table["x_px"].to_numpy(),
                table["y_px"].to_numpy(),
                crops,
                params=CropParams(size=crop_size, mpp=crop_mpp),
                normalizer=normalizer,
                workers=workers,
                progress=progress,
            )
        with _stage("embeddings", slide.path.name):
            extra = {"image_size": recorded.get("image_size"), "pooling": recorded.get("pooling")}
            outlines = None
            if name.startswith("morphology"):
                from bitro.features.morphology import CellOutlines
                from bitro.preprocess.crops import read_crops

                n_crops = read_crops(crops).shape[0]
                outlines = CellOutlines.read(cells, size=crop_size, mpp=crop_mpp, n_crops=n_crops)
            embed_crops(
                crops,
                encoder,
                out,
                progress=progress,
                extra=extra,
                outlines=outlines,
                **_given(features, {"batch_size": "batch_size"}),
            )
    description_path = folder / SampleFile.EMBEDDINGS_DESCRIPTION
    description = json.loads(description_path.read_text())
    check_features(bundle, description, source=description_path)
    return description


def predict_slide(
    bundle: Bundle,
    slide_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    mpp: float | None = None,
    encoder_weights: str | os.PathLike[str] | None = None,
    genes: Sequence[str] | None = None,
    n_genes: int = 6,
    device: str = "cpu",
    workers: int = 1,
    progress: bool = True,
    dpi: int = 150,
) -> SlideOutputs:
    """Run every per-sample step on one slide with the bundle's settings, then predict (module docstring).

    Parameters
    ----------
    bundle
        The loaded bundle.
    slide_path, mpp
        The slide file and, when it does not record one, its µm per level-0 pixel.
    out_dir
        Predictions go here (``spots.h5ad``, ``cells.h5ad``, ``cells.geojson``, ``maps/``,
        ``profile.tsv``), the per-sample files to its ``sample/`` folder.
    encoder_weights
        The encoder's weights (default: where bitro looks for them); their sha256 must be the bundle's.
    genes, n_genes
        Genes of the maps and QuPath measurements: ``genes``, else the bundle's best ``n_genes``.
    device, workers, progress, dpi
        Torch device; processes for segmentation and crops; progress bars; heat-map resolution.

    Raises
    ------
    BundleMismatchError
        Encoder weights other than the bundle's, or a gene the bundle does not predict.
    InputError
        An unreadable slide, or one where no cell is found.
    """
    out = Path(out_dir)
    folder = out / PredictionFile.SAMPLE
    folder.mkdir(parents=True, exist_ok=True)
    chosen = chosen_genes(bundle, genes, n_genes)
    encoder = bundle_encoder(bundle, weights=encoder_weights, device=device)
    settings = bundle.settings
    section = {key: dict(settings.get(key) or {}) for key in ("tissue", "units", "stain", "segmentation")}
    with open_slide(Path(slide_path), mpp=mpp) as slide:
        slide.verify()
        name = slide.path.name
        with _stage("tissue", name):
            mask = tissue_mask(slide, **_given(section["tissue"], {"mask_mpp": "mpp"}))
            write_tissue(mask, folder / SampleFile.TISSUE, folder / SampleFile.TISSUE_GEOJSON)
        with _stage("units", name):
            size = section["units"].get("patch_size_um") or _default(make_units, "patch_size_um")
            tissue_share = {"min_tissue_fraction": "min_tissue_fraction"}
            units = grid_units(
                slide, size_um=float(size), mask=mask, **_given(section["units"], tissue_share)
            )
            write_units(units, folder / SampleFile.UNITS)
            log.info(
                "%s: %d patches of %g µm (%d in tissue)", name, len(units), size, units["in_tissue"].sum()
            )
        with _stage("stain", name):
            method = str(bundle.encoder.get("stain_method") or section["stain"].get("method") or "none")
            reference_path = folder / BundleFile.STAIN_REFERENCE
            with atomic_path(reference_path) as tmp:
                tmp.write_text(json.dumps(bundle.stain_reference))
            reference = read_reference(reference_path, method)
            fit = {"fit_mpp": "mpp", "n_tiles": "n_tiles"}
            model = fit_slide_stain(slide, mask, method=method, **_given(section["stain"], fit))
            write_stain_json(folder / SampleFile.STAIN, model, reference)
            normalizer = StainNormalizer(model, reference)
        with _stage("cells", name):
            params = segmenter_params(section["segmentation"])
            found = segment_classical(slide, mask, model, params=params, workers=workers, progress=progress)
            table = cells_table(
                found,
                mpp=slide.mpp,
                units=units,
                source=params.algorithm,
                slide_dimensions=slide.dimensions,
                path=slide.path,
            )
            if table.empty:
                raise InputError(slide.path, "no cells found: nothing to predict")
            write_cells(table, folder / SampleFile.CELLS)
            log.info("%s: %d cells (%d in a patch)", name, len(table), int((table["unit_id"] >= 0).sum()))
        _embed(bundle, encoder, slide, folder, normalizer, workers=workers, progress=progress)
        with _stage("features", name):
            if bundle.scope == "sample":
                from bitro.features.embeddings import read_embeddings

                embeddings, _ = read_embeddings(folder / SampleFile.EMBEDDINGS)
                basis = fit_pca(np.asarray(embeddings), n_components=bundle.model.config.in_dim)
                with atomic_path(folder / SampleFile.FEATURES) as tmp, tmp.open("wb") as handle:
                    np.save(handle, basis.transform(embeddings))
            else:
                log.info("cohort scope: embeddings are projected on the bundle's PCA basis")
        with _stage("graph", name):
            k = _given(dict(settings.get("features") or {}), {"graph_k": "k"})
            graphs = knn_graphs(table["x_um"], table["y_um"], table["unit_id"], **k)
            write_graph(graphs, folder / SampleFile.GRAPH)
        with _stage("predict", name):
            return apply_bundle(
                bundle,
                folder,
                out,
                slide=slide,
                mpp=slide.mpp,
                genes=chosen,
                sample_id=Path(slide_path).stem,
                device=device,
                dpi=dpi,
            )
