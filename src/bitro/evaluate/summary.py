"""Cohort tables: each fold's metrics, then their mean and standard deviation per model, level and space.

``results/{cohort}/metrics.tsv`` holds BiTro's rows and ``baselines.tsv`` the baselines' rows, each with a
``fold`` column whose rows per group are the folds, then ``mean`` and ``std`` (ddof = 1), and the ``space``
and ``scope`` of every number (docs/pitfalls.md#per-sample-or-pooled-said-every-time).

A bulk cohort cross-validated over patients (``evaluation.bulk_folds`` ≥ 2) tests every slide once, so its
test predictions together form one out-of-fold prediction of the whole cohort. Its tables then end each
group with an ``out_of_fold`` row: the metrics of those pooled predictions, from each fold's
``predictions.h5ad`` (BiTro) and ``baselines.h5ad``. A fold tests two or three slides, where a per-gene
correlation is ±1 or undefined; over the pooled slides it means something.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from bitro._atomic import atomic_path
from bitro.errors import InputError
from bitro.io.validate import require_file
from bitro.metrics import metric_rows, summarise_folds

GROUP = ["model", "level", "space", "scope"]
#: The ``fold`` label of the metrics of the pooled out-of-fold predictions.
OUT_OF_FOLD = "out_of_fold"
#: Rows of a cohort table that are not folds.
NOT_FOLDS = ("mean", "std", OUT_OF_FOLD)


def read_fold_tables(paths: Sequence[str | Path]) -> pd.DataFrame:
    """Concatenate per-fold tables, checking each has the columns a summary needs."""
    frames = []
    for path in paths:
        frame = pd.read_csv(require_file(path, "fold metrics"), sep="\t")
        missing = {"fold", *GROUP} - set(frame.columns)
        if missing:
            raise InputError(path, f"lacks columns {sorted(missing)}")
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["fold", *GROUP])


def _fold_predictions(path: str | Path) -> tuple[ad.AnnData, dict[str, np.ndarray], str, list[str]]:
    """The scored test units of one fold's ``predictions.h5ad`` or ``baselines.h5ad``: the AnnData (its
    ``layers["truth"]``), each model's predictions, the unit level and the metric spaces."""
    adata = ad.read_h5ad(require_file(path, "fold predictions"))
    info = adata.uns.get("bitro", {})
    if "truth" not in adata.layers:
        raise InputError(path, 'has no layers["truth"]')
    if "models" in info:
        models = {str(m): np.asarray(adata.layers[str(m)], np.float64) for m in info["models"]}
        level, spaces = str(info["level"]), [str(s) for s in info["spaces"]]
    elif "metrics" in info:
        metrics = info["metrics"]
        models = {str(np.ravel(metrics["model"])[0]): np.asarray(adata.X, np.float64)}
        level = str(np.ravel(metrics["level"])[0])
        spaces = list(dict.fromkeys(str(s) for s in np.ravel(metrics["space"])))
    else:
        raise InputError(path, 'has neither uns["bitro"]["models"] nor uns["bitro"]["metrics"]')
    if "scored" in adata.obs:
        keep = adata.obs["scored"].to_numpy(bool)
        adata, models = adata[keep], {name: values[keep] for name, values in models.items()}
    return adata, models, level, spaces


def out_of_fold_rows(paths: Sequence[str | Path]) -> pd.DataFrame:
    """Metrics of the pooled test predictions of every fold, one row per model and space.

    ``paths`` are the folds' ``predictions.h5ad`` or ``baselines.h5ad``; every test unit must appear in
    exactly one fold (the folds of a K-fold split) and every fold must predict the same genes.
    """
    truths: list[np.ndarray] = []
    predictions: dict[str, list[np.ndarray]] = {}
    names: list[str] = []
    groups: list[np.ndarray] = []
    genes: list[str] | None = None
    level, spaces = "", []
    for path in paths:
        adata, models, level, spaces = _fold_predictions(path)
        fold_genes = [str(g) for g in adata.var_names]
        if genes is not None and fold_genes != genes:
            raise InputError(path, "predicts other genes (or another order) than the first fold")
        genes = fold_genes
        truths.append(np.asarray(adata.layers["truth"], np.float64))
        for model, values in models.items():
            predictions.setdefault(model, []).append(values)
        names += [str(n) for n in adata.obs_names]
        groups.append(adata.obs["sample_id"].astype(str).to_numpy())
    repeated = sorted(pd.Index(names)[pd.Index(names).duplicated()].unique())
    if repeated:
        raise InputError(paths[0], f"out-of-fold pooling needs each unit tested once; twice: {repeated[:5]}")
    rows = []
    for model, parts in predictions.items():
        if len(parts) != len(truths):
            raise InputError(paths[0], f"model {model} is missing from some folds")
        rows += metric_rows(
            np.concatenate(truths),
            np.concatenate(parts),
            genes or [],
            np.concatenate(groups),
            level=level,
            spaces=spaces,
            model=model,
            fold=OUT_OF_FOLD,
        )
    return pd.DataFrame(rows)


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Per model, level, space and scope: the fold rows, ``mean`` and ``std``, then any ``out_of_fold``."""
    parts = []
    for _, group in table.groupby(GROUP, sort=False):
        pooled = group[group["fold"] == OUT_OF_FOLD]
        folds = group[group["fold"] != OUT_OF_FOLD]
        summary = summarise_folds(folds.to_dict(orient="records"))
        summary = summary.rename_axis("fold").reset_index()
        for column in GROUP:
            summary[column] = group[column].iloc[0]
        parts.append(summary)
        if not pooled.empty:
            parts.append(pooled[[c for c in pooled.columns if c in summary.columns]])
    if not parts:
        return table
    out = pd.concat(parts, ignore_index=True)
    return out[["fold", *GROUP, *[c for c in out.columns if c not in {"fold", *GROUP}]]]


def summarise_cohort(
    metrics: Sequence[str | Path],
    out: str | Path,
    *,
    baselines: Sequence[str | Path] = (),
    baselines_out: str | Path | None = None,
    predictions: Sequence[str | Path] = (),
    baseline_predictions: Sequence[str | Path] = (),
) -> pd.DataFrame:
    """Write the cohort's ``metrics.tsv`` (and ``baselines.tsv``) from the folds' tables; returns metrics.

    With the folds' ``predictions`` (and ``baseline_predictions``) of a K-fold bulk cohort, each table also
    gets the ``out_of_fold`` rows of :func:`out_of_fold_rows`.
    """
    table = read_fold_tables(metrics)
    if predictions:
        table = pd.concat([table, out_of_fold_rows(predictions)], ignore_index=True)
    table = summarise(table)
    with atomic_path(out) as tmp:
        table.to_csv(tmp, sep="\t", index=False)
    if baselines and baselines_out:
        base = read_fold_tables(baselines)
        if baseline_predictions:
            base = pd.concat([base, out_of_fold_rows(baseline_predictions)], ignore_index=True)
        with atomic_path(baselines_out) as tmp:
            summarise(base).to_csv(tmp, sep="\t", index=False)
    return table


#: Headline columns of the demo summary.
HEADLINE = ["pcc_gene", "pcc_overall", "spearman_gene", "rmse", "js_divergence"]


def headline_rows(table: pd.DataFrame, *, cohort: str, protocol: str) -> pd.DataFrame:
    """``mean ± std`` over folds of the headline metrics, one row per model, level and space; a model
    with ``out_of_fold`` metrics gets a second row, its ``scope`` ``out_of_fold``."""
    rows = []
    for (model, level, space, scope), group in table.groupby(GROUP, sort=False):
        folds = group[~group["fold"].isin(NOT_FOLDS)]
        mean = group[group["fold"] == "mean"].iloc[0]
        std = group[group["fold"] == "std"].iloc[0]
        row: dict[str, object] = {"cohort": cohort, "protocol": protocol, "model": model, "level": level}
        row |= {"space": space, "scope": scope, "n_folds": len(folds)}
        pooled = row | {"scope": OUT_OF_FOLD}
        for column in HEADLINE:
            if column in group:
                value, spread = float(mean[column]), float(std[column])
                row[column] = f"{value:.3f} ± {spread:.3f}" if np.isfinite(spread) else f"{value:.3f}"
        rows.append(row)
        out_of_fold = group[group["fold"] == OUT_OF_FOLD]
        if not out_of_fold.empty:
            values = out_of_fold.iloc[0]
            rows.append(pooled | {c: f"{float(values[c]):.3f}" for c in HEADLINE if c in group})
    return pd.DataFrame(rows)


def demo_summary(cohorts: dict[str, tuple[str, list[Path]]], out: str | Path) -> pd.DataFrame:
    """``results/demo_summary.tsv``: each cohort's BiTro (with and without transfer) beside every baseline.

    ``cohorts`` maps a cohort name to its protocol label and the summary tables to read (its
    ``metrics.tsv``, ``baselines.tsv`` and any ``results/transfer/*_to_<cohort>/metrics.tsv``).
    """
    parts = []
    for cohort, (protocol, paths) in cohorts.items():
        for path in paths:
            parts.append(
                headline_rows(pd.read_csv(require_file(path), sep="\t"), cohort=cohort, protocol=protocol)
            )
    table = pd.concat(parts, ignore_index=True)
    with atomic_path(out) as tmp:
        table.to_csv(tmp, sep="\t", index=False)
    return table


#: The unit level and space each cohort level is compared on in the ablation table (paper Tables 7-8).
ABLATION_LEVEL = {"spot": "log1p counts", "slide": "log1p TPM"}


def _ablation_row(model: str) -> tuple[str, str]:
    """(type, configuration) of a model name: ``bitro``, ``bitro_transfer_<mode>``, ``bitro_<variant>``."""
    if model == "bitro":
        return "base", "standard"
    if model.startswith("bitro_transfer_"):
        return f"transfer ({model.removeprefix('bitro_transfer_')})", "standard"
    return "base", model.removeprefix("bitro_")


def ablation_table(cohorts: dict[str, Sequence[str | Path]], out: str | Path) -> pd.DataFrame:
    """Paper Tables 7-8 in their shape: one row per (type, configuration), ``O.`` and ``G.`` per cohort.

    ``cohorts`` maps a cohort to its summary tables (main ``metrics.tsv``, transfer and ablation
    ``metrics.tsv``). Cells hold ``mean ± std`` over folds of PCC overall (O.) and PCC gene (G.) on spots
    in log1p counts or slides in log1p TPM, or the ``out_of_fold`` value where a K-fold bulk table has one
    (a fold's two or three test slides give no usable per-gene PCC); a configuration a cohort did not run
    is left empty. Writes
    ``out`` and returns the table (columns ``type``, ``configuration``, then ``<cohort> O.``/``G.``).
    """
    cells: dict[tuple[str, str], dict[str, str]] = {}
    for cohort, paths in cohorts.items():
        for path in paths:
            table = pd.read_csv(require_file(path, "cohort metrics"), sep="\t")
            keep = table["level"].map(ABLATION_LEVEL).eq(table["space"])
            for model, group in table[keep].groupby("model", sort=False):
                mean = group[group["fold"] == "mean"].iloc[0]
                std = group[group["fold"] == "std"].iloc[0]
                pooled = group[group["fold"] == OUT_OF_FOLD]
                row = cells.setdefault(_ablation_row(str(model)), {})
                for column, label in (("pcc_overall", "O."), ("pcc_gene", "G.")):
                    value, spread = float(mean[column]), float(std[column])
                    text = f"{value:.3f} ± {spread:.3f}" if np.isfinite(spread) else f"{value:.3f}"
                    if not pooled.empty:
                        text = f"{float(pooled[column].iloc[0]):.3f}"
                    row[f"{cohort} {label}"] = text
    if not cells:
        raise InputError(out, "no spot or slide rows in the ablation tables")
    columns = [f"{cohort} {label}" for cohort in cohorts for label in ("O.", "G.")]
    # Base runs first, the standard configuration on top of each type.
    order = sorted(cells, key=lambda key: (key[0] != "base", key[0], key[1] != "standard", key[1]))
    frame = pd.DataFrame(
        [{"type": kind, "configuration": config} | cells[(kind, config)] for kind, config in order],
        columns=["type", "configuration", *columns],
    )
    with atomic_path(out) as tmp:
        frame.to_csv(tmp, sep="\t", index=False)
    return frame
