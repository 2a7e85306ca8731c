"""Cohort tables: each fold's metrics, then their mean and standard deviation per model, level and space.

``results/{cohort}/metrics.tsv`` holds BiTro's rows and ``baselines.tsv`` the baselines' rows, each with a
``fold`` column whose rows per group are the folds, then ``mean`` and ``std`` (ddof = 1), and the ``space``
and ``scope`` of every number (docs/pitfalls.md#per-sample-or-pooled-said-every-time).

A bulk cohort cross-validated over patients (``evaluation.bulk_folds`` ≥ 2) tests every slide once, so its
test predictions together form one out-of-fold prediction of the whole cohort. Its tables then end each
group with an ``out_of_fold`` row: the metrics of those pooled predictions, from each fold's
``predictions.h5ad`` (BiTro) and ``baselines.h5ad``. A fold tests two or three slides, where a per-gene
correlation is ±1 or undefined; over the pooled slides it means something.

A transfer run predicts only the genes its two cohorts share, so its table
(``results/transfer/{source}_to_{target}/metrics.tsv``, :func:`summarise_transfer`) also scores the target
cohort's own models (BiTro from scratch, every baseline) on those genes and the same test units, from their
folds' ``predictions.h5ad`` and ``baselines.h5ad``: its ``run`` column says ``transfer`` or ``target cohort``,
its ``genes`` column ``shared: <n> of <all>``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from bitro._atomic import atomic_path
from bitro.errors import InputError
from bitro.io.validate import require_file
from bitro.metrics import metric_rows, summarise_folds

if TYPE_CHECKING:  # anndata only to read a fold's predictions: the tables and the bundles' CV need none
    import anndata as ad

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


def _fold_name(adata: ad.AnnData) -> str:
    """The fold a ``predictions.h5ad`` (``uns["bitro"]["params"]["fold"]``) or ``baselines.h5ad``
    (``uns["bitro"]["fold"]``) holds."""
    info = adata.uns.get("bitro", {})
    if "fold" in info:
        return str(np.ravel(info["fold"])[0])
    if "fold" in info.get("params", {}):
        return str(info["params"]["fold"])
    return str(np.ravel(info.get("metrics", {}).get("fold", [""]))[0])


def _fold_predictions(path: str | Path) -> tuple[ad.AnnData, dict[str, np.ndarray], str, list[str]]:
    """The scored test units of one fold's ``predictions.h5ad`` or ``baselines.h5ad``: the AnnData (its
    ``layers["truth"]``), each model's predictions, the unit level and the metric spaces."""
    import anndata as ad

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


#: ``run`` of a transfer table's rows: the transfer itself, or a model of the target cohort re-scored.
RUN_COLUMN = "run"
TRANSFER_RUN = "transfer"
TARGET_RUN = "target cohort"


def shared_genes_label(n_shared: int, n_all: int) -> str:
    """The ``genes`` column of a transfer table: ``shared: 37 of 50``."""
    return f"shared: {n_shared} of {n_all}"


def shared_gene_rows(
    transfer_predictions: Sequence[str | Path],
    references: Sequence[str | Path],
    *,
    pooled: bool = False,
) -> tuple[pd.DataFrame, list[str], int]:
    """The target cohort's own models scored on a transfer's genes and test units, fold by fold.

    ``transfer_predictions`` are the transfer's folds' ``predictions.h5ad``; ``references`` the target
    cohort's folds' ``predictions.h5ad`` (BiTro from scratch) and ``baselines.h5ad``, matched to the
    transfer's folds by their fold name. Every reference model is scored, with :func:`metric_rows` (the
    level and spaces of its file), on the transfer's genes (by name) and its scored test units (by unit
    name), against its own truth, which must equal the transfer's there. With ``pooled`` (a K-fold bulk
    target) each model also gets its ``out_of_fold`` rows. Returns the rows, the shared genes and the
    number of the target's genes.
    """
    folds: dict[str, tuple[list[str], list[str]]] = {}
    truths: dict[str, np.ndarray] = {}
    genes: list[str] | None = None
    for path in transfer_predictions:
        adata, _, _, _ = _fold_predictions(path)
        fold_genes = [str(g) for g in adata.var_names]
        if genes is not None and fold_genes != genes:
            raise InputError(path, "predicts other genes (or another order) than the first transfer fold")
        genes = fold_genes
        fold = _fold_name(adata)
        folds[fold] = ([str(n) for n in adata.obs_names], adata.obs["sample_id"].astype(str).tolist())
        truths[fold] = np.asarray(adata.layers["truth"], np.float64)
    if genes is None:
        raise InputError("--predictions", "no transfer predictions to take the shared genes from")
    rows: list[dict[str, object]] = []
    pooled_parts: dict[str, dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
    labels: dict[str, tuple[str, list[str]]] = {}
    n_all: int | None = None
    for path in references:
        adata, models, level, spaces = _fold_predictions(path)
        fold = _fold_name(adata)
        if fold not in folds:
            raise InputError(path, f"holds fold {fold!r}, which the transfer did not test")
        names, groups = folds[fold]
        missing_genes = [g for g in genes if g not in adata.var_names]
        missing_units = [n for n in names if n not in adata.obs_names]
        if missing_genes or missing_units:
            raise InputError(
                path,
                f"lacks shared genes {missing_genes[:5]} or test units {missing_units[:5]} of the transfer's "
                f"{fold}",
            )
        if n_all is not None and adata.n_vars != n_all:
            raise InputError(path, f"has {adata.n_vars} genes, another target file {n_all}")
        n_all = adata.n_vars
        units = adata.obs_names.get_indexer(names)
        columns = adata.var_names.get_indexer(genes)
        truth = np.asarray(adata.layers["truth"], np.float64)[np.ix_(units, columns)]
        if not np.allclose(truth, truths[fold], rtol=1e-5, atol=1e-6, equal_nan=True):
            raise InputError(path, f"its truth on the shared genes differs from the transfer's in {fold}")
        for model, values in models.items():
            prediction = values[np.ix_(units, columns)]
            labels[model] = (level, spaces)
            rows += metric_rows(
                truth,
                prediction,
                genes,
                np.asarray(groups),
                level=level,
                spaces=spaces,
                model=model,
                fold=fold,
            )
            pooled_parts.setdefault(model, {})[fold] = (truth, prediction, np.asarray(groups))
    for model, parts in pooled_parts.items():
        absent = sorted(set(folds) - set(parts))
        if absent:
            raise InputError(references[0] if references else "--reference", f"{model} lacks folds {absent}")
        if pooled:
            level, spaces = labels[model]
            truth, prediction, groups = (np.concatenate(x) for x in zip(*parts.values(), strict=True))
            rows += metric_rows(
                truth, prediction, genes, groups, level=level, spaces=spaces, model=model, fold=OUT_OF_FOLD
            )
    return pd.DataFrame(rows), genes, int(n_all or 0)


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


def summarise_transfer(
    metrics: Sequence[str | Path],
    out: str | Path,
    *,
    predictions: Sequence[str | Path],
    references: Sequence[str | Path] = (),
    pooled: bool = False,
) -> pd.DataFrame:
    """Write a transfer run's ``metrics.tsv``; returns it.

    The transfer's rows (its folds' ``metrics``, then ``mean``, ``std`` and, with ``pooled``, the
    ``out_of_fold`` rows of its ``predictions``), then, from ``references`` (the target cohort's folds'
    ``predictions.h5ad`` and ``baselines.h5ad``), each of the target's own models scored on the transfer's
    genes and test units (:func:`shared_gene_rows`). Two columns after ``scope`` label the rows: ``run``
    (``transfer`` or ``target cohort``) and ``genes`` (``shared: <n> of <all>``).
    """
    table = read_fold_tables(metrics)
    if pooled:
        table = pd.concat([table, out_of_fold_rows(predictions)], ignore_index=True)
    table = summarise(table)
    table.insert(len(GROUP) + 1, RUN_COLUMN, TRANSFER_RUN)
    if references:
        rescored, genes, n_all = shared_gene_rows(predictions, references, pooled=pooled)
        scored = table.loc[~table["fold"].isin(("mean", "std")), "n_genes"].dropna()
        if set(scored) - {len(genes)}:
            raise InputError(metrics[0], f"scores other than the {len(genes)} genes of its predictions")
        target = summarise(rescored)
        target.insert(len(GROUP) + 1, RUN_COLUMN, TARGET_RUN)
        table = pd.concat([table, target], ignore_index=True)
        table.insert(len(GROUP) + 2, "genes", shared_genes_label(len(genes), n_all))
    with atomic_path(out) as tmp:
        table.to_csv(tmp, sep="\t", index=False)
    return table


#: Headline columns of the demo summary.
HEADLINE = ["pcc_gene", "pcc_overall", "spearman_gene", "rmse", "js_divergence"]


def headline_rows(table: pd.DataFrame, *, cohort: str, protocol: str) -> pd.DataFrame:
    """``mean ± std`` over folds of the headline metrics, one row per model, level and space; a model
    with ``out_of_fold`` metrics gets a second row, its ``scope`` ``out_of_fold``. The rows of a transfer
    table (it has a ``genes`` column) name their genes after the model: ``bitro (shared: 37 of 50 genes)``."""
    rows = []
    for (model, level, space, scope), group in table.groupby(GROUP, sort=False):
        folds = group[~group["fold"].isin(NOT_FOLDS)]
        mean = group[group["fold"] == "mean"].iloc[0]
        std = group[group["fold"] == "std"].iloc[0]
        if "genes" in group:
            model = f"{model} ({mean['genes']} genes)"
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


def _ablation_row(model: str, genes: str | None = None) -> tuple[str, str] | None:
    """(type, configuration) of a model name: ``bitro``, ``bitro_transfer_<mode>``, ``bitro_<variant>``;
    ``genes`` names the shared genes a transfer table re-scored the target's own BiTro on (its baselines
    and other models, None, are not ablations)."""
    if genes is not None:
        return ("base", f"standard ({genes} genes)") if model == "bitro" else None
    if model == "bitro":
        return "base", "standard"
    if model.startswith("bitro_transfer_"):
        return f"transfer ({model.removeprefix('bitro_transfer_')})", "standard"
    return "base", model.removeprefix("bitro_")


def ablation_table(cohorts: dict[str, Sequence[str | Path]], out: str | Path) -> pd.DataFrame:
    """Paper Tables 7-8 in their shape: one row per (type, configuration), ``O.`` and ``G.`` per cohort.

    ``cohorts`` maps a cohort to its summary tables (main ``metrics.tsv``, transfer and ablation
    ``metrics.tsv``). A transfer table's BiTro from scratch, re-scored on the transfer's shared genes, is
    the row ``base``, ``standard (shared: 37 of 50 genes)``; its baselines are left out. Cells hold
    ``mean ± std`` over folds of PCC overall (O.) and PCC gene (G.) on spots in log1p counts or slides in
    log1p TPM, or the ``out_of_fold`` value where a K-fold bulk table has one (a fold's two or three test
    slides give no usable per-gene PCC); a configuration a cohort did not run is left empty. Writes
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
                shared = str(mean["genes"]) if mean.get("run") == TARGET_RUN else None
                key = _ablation_row(str(model), shared)
                if key is None:
                    continue
                row = cells.setdefault(key, {})
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
    order = sorted(
        cells, key=lambda key: (key[0] != "base", key[0], not key[1].startswith("standard"), key[1])
    )
    frame = pd.DataFrame(
        [{"type": kind, "configuration": config} | cells[(kind, config)] for kind, config in order],
        columns=["type", "configuration", *columns],
    )
    with atomic_path(out) as tmp:
        frame.to_csv(tmp, sep="\t", index=False)
    return frame
