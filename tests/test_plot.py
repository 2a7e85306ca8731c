"""``bitro plot``: the report's figures and tables, on tiny cohorts written by the real writers."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image
from scipy import stats

from bitro.cli import main
from bitro.evaluate.predict import SamplePrediction, _cells_anndata, _predictions_anndata
from bitro.evaluate.summary import summarise_cohort
from bitro.folds.splits import Fold, Folds, in_strips, leave_one_out, spatial_strips, write_folds
from bitro.metrics import metric_rows
from bitro.plot import (
    figure_names,
    pcc_table,
    plot_baselines,
    plot_cells,
    plot_cohort,
    plot_spatial,
    plot_training,
)
from bitro.train.fit import _append_log
from conftest import run_snakemake

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
GENES = [f"G{i}" for i in range(8)]
TOP = 3
BEST_EPOCH = 3


# ------------------------------------------------------------------------------------- synthetic cohorts


def _expression(rng: np.random.Generator, xy: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Counts with a spatial pattern per gene, and a noisy prediction of them (both units × genes)."""
    x, y = xy[:, 0] / 150.0, xy[:, 1] / 150.0
    rate = np.stack([np.exp(1.5 + np.sin(x + g) * np.cos(0.5 * y - g)) for g in range(len(GENES))], axis=1)
    truth = rng.poisson(scale * rate).astype(np.float64)
    prediction = scale * rate * rng.lognormal(0.0, 0.1 + 0.1 * np.arange(len(GENES)), size=rate.shape)
    return truth, prediction


def _cells_of(units: pd.DataFrame, rng: np.random.Generator, per_unit: int) -> pd.DataFrame:
    rows = []
    for unit in units.itertuples():
        for k in range(per_unit):
            dx, dy = rng.uniform(-20, 20, size=2)
            rows.append((f"c{unit.unit_id}_{k}", unit.x_px + dx, unit.y_px + dy, unit.unit_id))
    cells = pd.DataFrame(rows, columns=["cell_id", "x_px", "y_px", "unit_id"])
    cells["x_um"], cells["y_um"] = cells["x_px"], cells["y_px"]
    return cells


def _units(n_side: int, spacing: float) -> pd.DataFrame:
    yy, xx = np.mgrid[0:n_side, 0:n_side].astype(np.float64)
    xx += 0.5 * (yy % 2)
    units = pd.DataFrame({"unit_id": np.arange(n_side * n_side)})
    units["x_px"], units["y_px"] = 30 + spacing * xx.ravel(), 30 + spacing * yy.ravel()
    units["x_um"], units["y_um"], units["diameter_um"] = units["x_px"], units["y_px"], spacing
    return units


def _sample(
    sample_id: str,
    units: pd.DataFrame,
    cells: pd.DataFrame,
    truth: np.ndarray,
    prediction: np.ndarray,
    unit_ids: np.ndarray,
    *,
    level: str = "spot",
) -> SamplePrediction:
    rows = np.flatnonzero(np.isin(cells["unit_id"], unit_ids))
    cell_unit = cells["unit_id"].to_numpy()[rows]
    position = {u: i for i, u in enumerate(unit_ids)}
    share = np.full(len(rows), 1.0)
    for u in unit_ids:
        mine = cell_unit == u
        share[mine] = np.linspace(0.5, 1.5, mine.sum()) / np.linspace(0.5, 1.5, mine.sum()).sum()
    if level == "slide":
        pseudo = prediction[0][None] * share[:, None] / share.sum()
    else:
        pseudo = prediction[[position[u] for u in cell_unit]] * share[:, None]
    return SamplePrediction(
        sample_id=sample_id,
        level=level,
        unit_ids=np.asarray(unit_ids),
        n_cells=np.array([int((cell_unit == u).sum()) for u in unit_ids]),
        prediction=prediction,
        truth=truth,
        cell_rows=rows,
        cell_unit=cell_unit,
        pseudo_cells=pseudo,
        phenotype=np.zeros(len(rows), dtype=np.int64),
    )


def _write_fold(
    cohort: Path,
    fold: Fold,
    results: list[SamplePrediction],
    units: dict[str, pd.DataFrame],
    cells: dict[str, pd.DataFrame],
    *,
    bulk: bool = False,
    cell_truth: np.ndarray | None = None,
) -> None:
    """The fold's predictions.h5ad, cells_pred.h5ad, metrics.tsv, baselines.tsv and train_log.csv, as
    ``bitro predict``, ``bitro baselines`` and ``bitro train`` write them."""
    folder = cohort / fold.name
    folder.mkdir(parents=True)
    predictions = _predictions_anndata(results, units, GENES, fold)
    pseudo = _cells_anndata(results, cells, GENES, fold)
    level, spaces = ("slide", ["log1p TPM", "TPM"]) if bulk else ("spot", ["log1p counts"])
    scored = predictions[predictions.obs["scored"].to_numpy()]
    truth, groups = np.asarray(scored.layers["truth"]), scored.obs["sample_id"].to_numpy()
    common = {"level": level, "spaces": spaces, "fold": fold.name}
    rows = metric_rows(truth, np.asarray(scored.X), GENES, groups, model="bitro", **common)
    if cell_truth is not None:
        pseudo.layers["truth"] = cell_truth.astype(np.float32)
        test = pseudo.obs["in_test_strip"].to_numpy() & np.isfinite(cell_truth).all(axis=1)
        rows += metric_rows(
            cell_truth[test],
            np.asarray(pseudo.X)[test],
            GENES,
            pseudo.obs["sample_id"].to_numpy()[test],
            level="cell",
            spaces=["log1p counts"],
            model="bitro",
            fold=fold.name,
        )
    table = pd.DataFrame(rows)
    predictions.uns["bitro"] = {"metrics": table.astype(str).to_dict(orient="list"), "params": {}}
    pseudo.uns["bitro"] = {"params": {}, "space": "tpm" if bulk else "counts"}
    predictions.write_h5ad(folder / "predictions.h5ad")
    pseudo.write_h5ad(folder / "cells_pred.h5ad")
    table.to_csv(folder / "metrics.tsv", sep="\t", index=False)
    mean = np.broadcast_to(truth.mean(axis=0), truth.shape)
    baselines = metric_rows(truth, mean, GENES, groups, model="training_mean", **common)
    noisy = np.asarray(scored.X) * 1.3 + 1.0
    baselines += metric_rows(truth, noisy, GENES, groups, model="hest_probe", **common)
    pd.DataFrame(baselines).to_csv(folder / "baselines.tsv", sep="\t", index=False)
    for epoch in range(1, 7):
        val = 1.0 / epoch if epoch <= BEST_EPOCH else 1.0 / BEST_EPOCH + 0.05 * (epoch - BEST_EPOCH)
        row = {"epoch": epoch, "step": 10 * epoch, "seconds": 1.0, "bags_per_s": 10.0, "val_seconds": 0.1}
        row |= {"train_gene": 2.0 / epoch, "train_cluster": 0.01, "train_total": 2.0 / epoch + 0.001}
        row |= {"val_gene": val, "val_cluster": 0.02, "val_total": val + 0.002}
        _append_log(folder / "train_log.csv", row)


def _summarise(cohort: Path, folds: Folds) -> None:
    write_folds(folds, cohort / "folds.json")
    summarise_cohort(
        [cohort / f.name / "metrics.tsv" for f in folds.folds],
        cohort / "metrics.tsv",
        baselines=[cohort / f.name / "baselines.tsv" for f in folds.folds],
        baselines_out=cohort / "baselines.tsv",
    )


def st_cohort(cohort: Path) -> Path:
    """Six sections of three patients, leave one patient out; G7 is not expressed in S1 (undefined)."""
    rng = np.random.default_rng(0)
    samples, units, cells, data = ["S1", "S2", "S3", "S4", "S5", "S6"], {}, {}, {}
    for k, sample in enumerate(samples):
        units[sample] = _units(7 + k % 2, 100.0)
        cells[sample] = _cells_of(units[sample], rng, 3)
        truth, prediction = _expression(rng, units[sample][["x_px", "y_px"]].to_numpy(), 1.0 + k)
        if sample == "S1":
            truth[:, 7] = 0.0
        data[sample] = (truth, prediction)
    folds = leave_one_out(cohort.name, samples, patients=["P1", "P1", "P2", "P2", "P3", "P3"])
    for fold in folds.folds:
        results = []
        for sample in fold.test:
            truth, prediction = data[sample]
            ids = units[sample]["unit_id"].to_numpy()
            results.append(_sample(sample, units[sample], cells[sample], truth, prediction, ids))
        _write_fold(cohort, fold, results, units, cells)
    _summarise(cohort, folds)
    return cohort


def xenium_cohort(cohort: Path, n_strips: int = 3) -> Path:
    """One section of 55 µm pseudo-spots cut into strips; cells carry measured counts."""
    rng = np.random.default_rng(1)
    units = {"X1": _units(9, 55.0)}
    units["X1"]["x_px"] = units["X1"]["x_um"] = 30 + 55.0 * (np.arange(81) % 9)
    cells = {"X1": _cells_of(units["X1"], rng, 4)}
    xy = cells["X1"][["x_px", "y_px"]].to_numpy()
    measured, _ = _expression(rng, xy, 0.3)
    cell_counts = pd.Series(cells["X1"]["unit_id"]).value_counts().sort_index().to_numpy()
    spot_truth = np.zeros((len(units["X1"]), len(GENES)))
    np.add.at(spot_truth, cells["X1"]["unit_id"].to_numpy(), measured)
    _, spot_prediction = _expression(rng, units["X1"][["x_px", "y_px"]].to_numpy(), 1.2)
    extent = (0.0, float(cells["X1"]["x_um"].max()) + 1.0)
    folds = spatial_strips(cohort.name, {"X1": extent}, n_strips=n_strips)
    for fold in folds.folds:
        in_test = in_strips(cells["X1"]["x_um"].to_numpy(), fold.strips["X1"]["test"])
        ids = np.unique(cells["X1"]["unit_id"].to_numpy()[in_test])
        result = _sample("X1", units["X1"], cells["X1"], spot_truth[ids], spot_prediction[ids], ids)
        truth = measured[result.cell_rows]
        truth[::17] = np.nan  # cells missing from the feature matrix are left out
        _write_fold(cohort, fold, [result], units, cells, cell_truth=truth)
    assert cell_counts.min() == 4
    _summarise(cohort, folds)
    return cohort


def bulk_cohort(cohort: Path) -> Path:
    """Three test slides of 2 × 2 patches each, one unit per slide in the predictions."""
    rng = np.random.default_rng(2)
    samples = ["B1", "B2", "B3"]
    fold = Fold("fold0", train=["B4", "B5"], validation=["B6"], test=samples)
    units, cells, results = {}, {}, []
    for k, sample in enumerate(samples):
        units[sample] = _units(2, 55.0)
        cells[sample] = _cells_of(units[sample], rng, 5)
        truth = rng.gamma(2.0, 50.0 * (k + 1), size=(1, len(GENES)))
        prediction = truth * rng.lognormal(0, 0.2, size=truth.shape)
        ids = units[sample]["unit_id"].to_numpy()
        whole = _sample(sample, units[sample], cells[sample], truth, prediction, ids, level="slide")
        whole.unit_ids, whole.n_cells = np.array([0]), np.array([len(whole.cell_rows)])
        results.append(whole)
    _write_fold(cohort, fold, results, units, cells, bulk=True)
    _summarise(cohort, Folds(cohort.name, "patient", [fold]))
    return cohort


MAKERS: dict[str, Callable[[Path], Path]] = {"st": st_cohort, "xenium": xenium_cohort, "bulk": bulk_cohort}


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("results")
    return {level: make(root / f"tiny_{level}") for level, make in MAKERS.items()}


def check_png(path: Path) -> tuple[int, int]:
    """``path`` is a non-empty PNG of a sane size; returns (width, height)."""
    assert path.is_file() and path.stat().st_size > 1000, path
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.load()
        width, height = image.size
    assert 300 <= width <= 12000 and 300 <= height <= 12000, (path, image.size)
    return width, height


def scipy_top(truth: np.ndarray, pred: np.ndarray, n: int) -> list[tuple[str, float]]:
    """The n genes of highest scipy Pearson r on log1p, undefined (constant) genes left out."""
    scores = []
    for g, gene in enumerate(GENES):
        t, p = np.log1p(np.asarray(truth[:, g], np.float64)), np.log1p(np.asarray(pred[:, g], np.float64))
        if np.ptp(t) > 0 and np.ptp(p) > 0:
            scores.append((gene, float(stats.pearsonr(t, p)[0])))
    return sorted(scores, key=lambda item: -item[1])[:n]


# ---------------------------------------------------------------------------------------------- figures


def test_spot_maps_show_each_samples_best_genes_with_their_pcc(
    cohorts: dict[str, Path], tmp_path: Path
) -> None:
    folder = cohorts["st"] / "fold0"
    drawn = plot_spatial(folder / "predictions.h5ad", tmp_path / "spatial.png", top_n=TOP)
    check_png(drawn.path)
    predictions = ad.read_h5ad(folder / "predictions.h5ad")
    samples = list(dict.fromkeys(predictions.obs["sample_id"]))
    assert len(samples) == 2 and len(drawn.panels) == 2 * TOP
    for sample in samples:
        rows = (predictions.obs["sample_id"] == sample).to_numpy()
        expected = scipy_top(predictions.layers["truth"][rows], predictions.X[rows], TOP)
        panels = [p for p in drawn.panels if p.sample_id == sample]
        assert [p.gene for p in panels] == [gene for gene, _ in expected]
        for panel, (_, r) in zip(panels, expected, strict=True):
            assert panel.pcc == pytest.approx(r, abs=1e-9)
            assert f"PCC {r:.3f}" in panel.titles[1] and "measured" in panel.titles[0]
            assert panel.n_points == rows.sum()
    # G7 is constant in S1: never among its genes, whatever its rank elsewhere.
    assert "G7" not in [p.gene for p in drawn.panels if p.sample_id == "S1"]


def test_xenium_spot_maps_keep_the_pseudo_spots_inside_the_test_strip(
    cohorts: dict[str, Path], tmp_path: Path
) -> None:
    predictions = ad.read_h5ad(cohorts["xenium"] / "fold1" / "predictions.h5ad")
    scored = predictions.obs["scored"].to_numpy()
    assert 0 < scored.sum() < predictions.n_obs
    drawn = plot_spatial(predictions, tmp_path / "spatial.png", top_n=TOP)
    check_png(drawn.path)
    expected = scipy_top(predictions.layers["truth"][scored], predictions.X[scored], TOP)
    assert [(p.gene, round(p.pcc, 9)) for p in drawn.panels] == [(g, round(r, 9)) for g, r in expected]
    assert {p.n_points for p in drawn.panels} == {int(scored.sum())}


def test_xenium_cell_maps_compare_test_strip_cells_with_their_pseudo_cells(
    cohorts: dict[str, Path], tmp_path: Path
) -> None:
    cells = ad.read_h5ad(cohorts["xenium"] / "fold0" / "cells_pred.h5ad")
    truth = np.asarray(cells.layers["truth"], dtype=np.float64)
    keep = cells.obs["in_test_strip"].to_numpy() & np.isfinite(truth).all(axis=1)
    assert 0 < keep.sum() < cells.n_obs
    drawn = plot_cells(cells, tmp_path / "cells.png", top_n=TOP)
    check_png(drawn.path)
    expected = scipy_top(truth[keep], np.asarray(cells.X, dtype=np.float64)[keep], TOP)
    assert [p.gene for p in drawn.panels] == [gene for gene, _ in expected]
    assert [p.pcc for p in drawn.panels] == pytest.approx([r for _, r in expected], abs=1e-6)
    assert {p.n_points for p in drawn.panels} == {int(keep.sum())}
    assert all(len(p.titles) == 2 for p in drawn.panels)


def test_bulk_cell_maps_show_predicted_pseudo_cells_only(cohorts: dict[str, Path], tmp_path: Path) -> None:
    cells = ad.read_h5ad(cohorts["bulk"] / "fold0" / "cells_pred.h5ad")
    assert "truth" not in cells.layers
    drawn = plot_cells(cells, tmp_path / "cells.png", top_n=2, max_cells=7)
    check_png(drawn.path)
    assert [p.gene for p in drawn.panels] == ["G0", "G1"] * 3
    assert {p.sample_id for p in drawn.panels} == {"B1", "B2", "B3"}
    assert {p.n_points for p in drawn.panels} == {7}
    assert all(len(p.titles) == 1 and "predicted cells" in p.titles[0] for p in drawn.panels)


def test_per_gene_pcc_agrees_with_scipy_and_the_fold_metrics(cohorts: dict[str, Path]) -> None:
    folder = cohorts["st"] / "fold0"
    table = pcc_table(folder / "predictions.h5ad", fold="fold0", cells=folder / "cells_pred.h5ad")
    assert set(table["level"]) == {"spot"} and set(table["scope"]) == {"per_sample"}
    predictions = ad.read_h5ad(folder / "predictions.h5ad")
    for gene in ("G0", "G3", "G7"):
        by_sample = []
        for sample in predictions.obs["sample_id"].unique():
            rows = (predictions.obs["sample_id"] == sample).to_numpy()
            t = np.log1p(predictions[rows, gene].layers["truth"].ravel().astype(np.float64))
            p = np.log1p(predictions[rows, gene].X.ravel().astype(np.float64))
            if np.ptp(t) > 0:
                by_sample.append(stats.pearsonr(t, p)[0])
        row = table.set_index("gene").loc[gene]
        assert row["pcc"] == pytest.approx(np.mean(by_sample), abs=1e-9)
        assert row["n_samples_undefined"] == 2 - len(by_sample)
    metrics = pd.read_csv(folder / "metrics.tsv", sep="\t")
    assert (table["n_samples_undefined"] > 0).sum() == metrics["n_undefined_genes"].iloc[0] == 1
    xenium = cohorts["xenium"] / "fold2"
    table = pcc_table(xenium / "predictions.h5ad", fold="fold2", cells=xenium / "cells_pred.h5ad")
    assert table.groupby("level").size().to_dict() == {"cell": len(GENES), "spot": len(GENES)}
    bulk = pcc_table(cohorts["bulk"] / "fold0" / "predictions.h5ad", fold="fold0")
    assert set(zip(bulk["level"], bulk["space"], bulk["scope"], strict=True)) == {
        ("slide", "log1p TPM", "pooled"),
        ("slide", "TPM", "pooled"),
    }


def test_baselines_figure_draws_the_mean_and_std_over_folds(cohorts: dict[str, Path], tmp_path: Path) -> None:
    cohort = cohorts["xenium"]
    drawn = plot_baselines(cohort / "metrics.tsv", cohort / "baselines.tsv", tmp_path / "baselines.png")
    check_png(tmp_path / "baselines.png")
    assert list(dict.fromkeys(drawn["model"])) == ["bitro", "training_mean", "hest_probe"]
    assert set(drawn["level"]) == {"spot", "cell"} and set(drawn["n_folds"]) == {3}
    folds = pd.read_csv(cohort / "baselines.tsv", sep="\t")
    probe = folds[(folds["model"] == "hest_probe") & folds["fold"].str.startswith("fold")]
    pick = drawn[(drawn["metric"] == "pcc_gene") & (drawn["level"] == "spot")].set_index("model")
    assert pick.loc["hest_probe", "mean"] == pytest.approx(probe["pcc_gene"].mean())
    assert pick.loc["hest_probe", "std"] == pytest.approx(probe["pcc_gene"].std(ddof=1))
    assert np.isnan(pick.loc["training_mean", "mean"])


def test_training_curves_mark_each_folds_best_epoch(cohorts: dict[str, Path], tmp_path: Path) -> None:
    folds = ("fold0", "fold1", "fold2")
    logs = {fold: cohorts["xenium"] / fold / "train_log.csv" for fold in folds}
    best = plot_training(logs, tmp_path / "training.png")
    check_png(tmp_path / "training.png")
    assert best == dict.fromkeys(folds, 10 * BEST_EPOCH)


# ------------------------------------------------------------------------------------- over the H&E


def _pink(path: Path) -> float:
    """Fraction of light pink (eosin-like) pixels of a PNG: none in viridis, in grey or in white."""
    with Image.open(path) as image:
        rgb = np.asarray(image.convert("RGB"), dtype=np.int16)
    return float(((rgb[..., 0] > 150) & (rgb[..., 2] > 110) & (rgb[..., 0] - rgb[..., 1] > 30)).mean())


def _he_slides(folder: Path, samples: list[str], write_slide: Callable[..., Path], rgb: Callable) -> Path:
    """A HEST-layout root with an H&E slide (1000 × 1000 px, covering every unit) per sample."""
    (folder / "wsis").mkdir(parents=True, exist_ok=True)
    for k, sample in enumerate(samples):
        write_slide(folder / "wsis" / f"{sample}.tif", rgb(1000, 1000, seed=k), mpp=1.0, downsamples=(1, 4))
    return folder


def test_draw_map_puts_the_he_beneath_the_discs(
    tmp_path: Path, write_slide: Callable[..., Path], rgb_image: Callable
) -> None:
    from bitro.io.thumbnails import slide_image
    from bitro.plot._figure import new_figure
    from bitro.plot.maps import OVER_IMAGE_ALPHA, colour_norm, draw_map

    path = write_slide(tmp_path / "he.tif", rgb_image(800, 1000), mpp=0.5)
    image = slide_image(path, max_size=250)
    assert image.pixels.shape == (200, 250, 3) and image.scale == pytest.approx(0.25)
    xy = np.array([[100.0, 100.0], [300.0, 100.0], [200.0, 300.0]])
    ax = new_figure(3, 3).subplots()
    draw_map(ax, xy, np.array([1.0, 2.0, np.nan]), norm=colour_norm(np.arange(3.0)), diameter=50, image=image)
    (drawn,) = ax.images
    assert drawn.get_extent() == pytest.approx([0.0, 1000.0, 800.0, 0.0])
    (discs,) = ax.collections
    assert drawn.get_zorder() < discs.get_zorder() and discs.get_alpha() == OVER_IMAGE_ALPHA
    assert ax.get_ylim()[0] > ax.get_ylim()[1]  # y down, as in the image


def test_spot_maps_draw_each_test_sample_over_its_he(
    cohorts: dict[str, Path],
    tmp_path: Path,
    write_slide: Callable[..., Path],
    rgb_image: Callable,
    caplog: pytest.LogCaptureFixture,
) -> None:
    folder = cohorts["st"] / "fold0"
    samples = list(dict.fromkeys(ad.read_h5ad(folder / "predictions.h5ad").obs["sample_id"].astype(str)))
    root = _he_slides(tmp_path / "hest", samples, write_slide, rgb_image)
    slides = {s: root / "wsis" / f"{s}.tif" for s in samples}
    blank = plot_spatial(folder / "predictions.h5ad", tmp_path / "blank.png", top_n=2, dpi=60)
    over = plot_spatial(folder / "predictions.h5ad", tmp_path / "he.png", top_n=2, dpi=60, slides=slides)
    assert [p.gene for p in over.panels] == [p.gene for p in blank.panels]  # same genes, same scales
    assert _pink(tmp_path / "blank.png") < 0.002 and _pink(tmp_path / "he.png") > 0.02
    # A sample whose slide is missing is drawn on a blank background, and said so.
    missing = {samples[0]: slides[samples[0]], samples[1]: tmp_path / "nowhere.tif"}
    plot_spatial(folder / "predictions.h5ad", tmp_path / "some.png", top_n=2, dpi=60, slides=missing)
    assert f"{samples[1]}:" in caplog.text and "without the H&E" in caplog.text
    check_png(tmp_path / "some.png")


def test_bitro_plot_draws_spot_maps_over_the_slides_of_the_cohorts_layout(
    cohorts: dict[str, Path], tmp_path: Path, write_slide: Callable[..., Path], rgb_image: Callable
) -> None:
    folder = cohorts["st"] / "fold1"
    samples = list(dict.fromkeys(ad.read_h5ad(folder / "predictions.h5ad").obs["sample_id"].astype(str)))
    root = _he_slides(tmp_path / "hest", samples, write_slide, rgb_image)
    out = tmp_path / "figures"
    argv = ["plot", "--cohort-dir", str(cohorts["st"]), "--out-dir", str(out), "--folds", "fold1"]
    assert main([*argv, "--format", "hest", "--root", str(root), "--dpi", "60", "--top-genes", "2"]) == 0
    names = figure_names("st", ["fold1"])
    assert sorted(p.name for p in out.iterdir()) == sorted(names.values())
    assert _pink(out / names["spatial_fold1"]) > 0.02


# ---------------------------------------------------------------------------------------- the verb


@pytest.mark.parametrize("level", ["st", "xenium", "bulk"])
def test_plot_cohort_writes_every_figure_and_table(
    cohorts: dict[str, Path], tmp_path: Path, level: str
) -> None:
    out = tmp_path / "figures"
    written = plot_cohort(cohorts[level], out, top_n=TOP)
    folds = [f"fold{k}" for k in range(1 if level == "bulk" else 3)]
    names = figure_names(level, folds)
    assert set(written) == set(names)
    assert sorted(p.name for p in out.iterdir()) == sorted(names.values())
    for key, path in written.items():
        assert path == out / names[key]
        if path.suffix == ".png":
            check_png(path)
    assert any(k.startswith("spatial_") for k in names) == (level != "bulk")
    assert any(k.startswith("cells_") for k in names) == (level != "st")
    summary = pd.read_csv(out / "summary.tsv", sep="\t")
    assert summary["model"].iloc[0] == "bitro" and {"hest_probe", "training_mean"} <= set(summary["model"])
    assert summary["cohort"].unique().tolist() == [cohorts[level].name]
    by_fold = pd.read_csv(out / "metrics_by_fold.tsv", sep="\t")
    assert set(by_fold["fold"]) == {*folds, "mean", "std"}
    pcc = pd.read_csv(out / "pcc_genes.tsv", sep="\t")
    assert pcc["fold"].unique().tolist() == folds


def test_bitro_plot_command_line(
    cohorts: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "by_main"
    argv = ["plot", "--cohort-dir", str(cohorts["st"]), "--out-dir", str(out), "--top-genes", "2"]
    assert main([*argv, "--folds", "fold1", "--level", "st", "--threads", "1"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(figure_names("st", ["fold1"]).values())
    done = subprocess.run(
        [str(BIN / "bitro"), "plot", "--cohort-dir", str(cohorts["bulk"]), "--dpi", "60"],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    default = cohorts["bulk"] / "figures"
    assert sorted(p.name for p in default.iterdir()) == sorted(figure_names("bulk", ["fold0"]).values())
    for name in ("fold0_cells.png", "baselines.png"):
        check_png(default / name)
    assert main(["plot", "--cohort-dir", str(tmp_path / "nowhere")]) == 2
    assert "metrics.tsv: cohort metrics not found" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ workflow


def snakemake(workdir: Path, *args: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    """Snakemake on the Snakefile it finds in ``workdir`` (or the one ``--snakefile`` names), one thread."""
    single_thread = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return run_snakemake(workdir, *args, snakefile=None, timeout=timeout, env=single_thread)


def _files(block: str, field: str) -> list[str]:
    """The files of a dry-run job block's ``input:`` or ``output:`` line."""
    line = next(line for line in block.splitlines() if line.strip().startswith(f"{field}:"))
    return [f.strip() for f in line.split(":", 1)[1].split(",")]


def test_demo_targets_schedule_one_plot_job_per_cohort_with_the_verbs_outputs() -> None:
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    snakefile = str(ROOT / "workflow" / "Snakefile")
    done = snakemake(ROOT, "--dry-run", "--forceall", "--snakefile", snakefile, "all", *config["cohorts"])
    assert done.returncode == 0, done.stdout[-3000:]
    blocks = re.split(r"\n(?:local)?rule ", done.stdout)
    stats_table = done.stdout.split("Job stats:")[1]
    # A cohort predicted by a bundle is not scored: it has predictions, no figures.
    assert "plot_demo_slides" not in stats_table and "bundle" in config["cohorts"]["demo_slides"]
    evaluated = {name: c for name, c in config["cohorts"].items() if "bundle" not in c}
    for cohort, settings in evaluated.items():
        assert f"plot_{cohort}  " in stats_table or f"plot_{cohort} " in stats_table
        block = next(b for b in blocks if b.startswith(f"plot_{cohort}:"))
        folds = sorted({Path(f).parent.name for f in _files(block, "input")} - {cohort})
        outputs = _files(block, "output")
        assert {str(Path(f).parent) for f in outputs} == {f"results/{cohort}/figures"}
        assert sorted(Path(f).name for f in outputs) == sorted(
            figure_names(settings["level"], folds).values()
        )
        cohort_target = next(b for b in blocks if b.startswith(f"{cohort}:"))
        assert set(outputs) <= set(_files(cohort_target, "input")), cohort
        everything = next(b for b in blocks if b.startswith("all:"))
        assert set(outputs) <= set(_files(everything, "input")), cohort


def test_report_renders_the_figures_of_a_tiny_project(tmp_path: Path) -> None:
    """The plot rule runs `bitro plot` on existing fold outputs; `snakemake --report` packs every figure."""
    xenium_cohort(tmp_path / "results" / "tiny_xenium")
    (tmp_path / "sheet.tsv").write_text("sample_id\tpatient_id\nX1\tP1\n")
    config = {
        "cohorts": {
            "tiny_xenium": {"level": "xenium", "format": "xenium", "root": "data", "samples": "sheet.tsv"}
        },
        "evaluation": {"xenium_strips": 3},
    }
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    rules = ROOT / "workflow" / "rules"
    (tmp_path / "Snakefile").write_text(
        f'configfile: "config.yaml"\n\n'
        f'report: "{ROOT / "workflow" / "report" / "workflow.rst"}"\n\n'
        f'include: "{rules / "common.smk"}"\n'
        f'include: "{rules / "report.smk"}"\n\n'
        "rule all:\n"
        "    input:\n"
        "        [p for c in COHORTS for p in plot_files(c).values()],\n"
    )
    done = snakemake(tmp_path)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "plot_tiny_xenium" in done.stdout
    expected = figure_names("xenium", ["fold0", "fold1", "fold2"]).values()
    for name in expected:
        assert (tmp_path / "results" / "tiny_xenium" / "figures" / name).is_file(), name
    report = snakemake(tmp_path, "--report", "report.zip")
    assert report.returncode == 0, report.stdout[-3000:]
    with zipfile.ZipFile(tmp_path / "report.zip") as archive:
        packed = {Path(name).name for name in archive.namelist()}
    assert set(expected) <= packed
