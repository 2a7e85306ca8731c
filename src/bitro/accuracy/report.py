"""The benchmark's tables, paired intervals, diagnostics and figure (``results/accuracy/``).

Written: ``scores.tsv`` (model × seed × effect × space), ``summary.tsv`` (mean ± std over seeds),
``paired.tsv`` (differences with bootstrap 95 % intervals), ``diagnostics.tsv`` (per BiTro variant:
steps, best step, attention entropy, cluster-loss share, gradient norms), ``effects.png`` and
``report.md`` (the same tables in Markdown, as ``benchmarks/RESULTS.md`` quotes them); with a learning
curve, :mod:`bitro.accuracy.curve`'s ``curve.tsv``, ``curve_paired.tsv`` and ``curve.png``.

ST: per-gene PCC within each test section, averaged over the cohort's sections (every section is tested
once, in the fold that holds its patient out), in log1p counts and in log1p counts per 10⁴. Bulk: the
out-of-fold predictions of every patient pooled; per-gene PCC across patients and RMSE, in log1p TPM.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from bitro.accuracy.curve import curve_figure, curve_markdown, curve_tables
from bitro.accuracy.runs import VARIANTS, cohort, folds, truth
from bitro.accuracy.stats import (
    bootstrap_rows,
    normalised_log1p,
    paired_difference,
    pcc_columns,
    pcc_gene_by_sample,
)
from bitro.accuracy.transfer import TRANSFERS
from bitro.demo.virtual import EFFECTS

if TYPE_CHECKING:
    from bitro.accuracy.bench import Job

#: Pairs whose paired difference the report gives (first − second), where both were run.
PAIRS = (
    ("bitro", "mlp"),
    ("bitro", "mlp_count"),
    ("bitro", "hest_probe"),
    ("bitro", "paper_readout"),
    ("bitro", "training_mean"),
    ("bitro_context", "bitro"),
    ("bitro_context", "training_mean"),
    ("bitro", "no_pooled_norm"),
    ("no_pooled_norm", "training_mean"),
    ("no_pooled_norm", "mlp"),
    ("no_pooled_norm", "mlp_count"),
    ("bitro_long", "bitro"),
    ("bitro_long", "mlp"),
    ("bitro_long", "mlp_count"),
    ("no_gat", "mlp_count"),
    ("no_transformer", "mlp_count"),
    # Transfer (bitro.accuracy.transfer) against the target's own models on the same units and genes.
    *(
        (transfer, second)
        for transfer in ("from_st_lora", "from_st_full", "from_bulk_lora", "from_bulk_full")
        for second in ("bitro", "no_pooled_norm", "mlp", "mlp_count", "training_mean")
    ),
    ("from_st_lora", "from_st_full"),
    ("from_bulk_lora", "from_bulk_full"),
)


def shared_columns(*predictions: np.ndarray) -> np.ndarray:
    """Genes every prediction gives (a transfer predicts NaN for a target gene its source lacks)."""
    return np.logical_and.reduce([np.isfinite(p).all(axis=0) for p in predictions])


def _collect(
    jobs: Sequence[Job], level: str
) -> tuple[np.ndarray, np.ndarray, dict[str, dict[int, np.ndarray]], list[dict[str, Any]]]:
    """All test units of all folds (truth, sample of each unit) and each model's seeds' predictions."""
    level_jobs = [j for j in jobs if j.spec.level == level]
    spec = level_jobs[0].spec
    parts = [truth(spec, fold) for fold in folds(spec)]
    y = np.concatenate([p[0] for p in parts])
    groups = np.concatenate([p[1] for p in parts])
    by_model: dict[str, dict[int, list[np.ndarray | None]]] = defaultdict(
        lambda: defaultdict(lambda: [None] * len(parts))
    )
    infos = []
    for job in level_jobs:
        result = job.cached()
        if result is None:
            continue
        by_model[job.model][job.seed][job.fold] = result.prediction
        if job.model in VARIANTS or job.model in TRANSFERS:
            infos.append(
                {
                    "model": job.model,
                    "fold": job.fold,
                    "seed": job.seed,
                    "validation_mse": result.validation_mse,
                    **result.info,
                }
            )
    predictions = {
        model: {seed: np.concatenate(p) for seed, p in seeds.items() if all(x is not None for x in p)}
        for model, seeds in by_model.items()
    }
    return y, groups, predictions, infos


def _effect_masks(level: str, jobs: Sequence[Job]) -> dict[str, np.ndarray]:
    spec = next(j.spec for j in jobs if j.spec.level == level)
    vc = cohort(spec)
    effects = np.array([vc.effect_of_gene[g] for g in vc.genes])
    masks = {e: effects == e for e in EFFECTS if (effects == e).any()}
    return masks | {"all": np.ones(len(effects), dtype=bool)}


def _scores(level: str, y: np.ndarray, groups: np.ndarray, prediction: np.ndarray) -> dict[str, np.ndarray]:
    """Per-gene PCC in each space of one seed's out-of-fold prediction; NaN for a gene it does not
    predict (the per-10⁴ scale is then taken over the genes it predicts, in truth and prediction)."""
    keep = shared_columns(prediction)
    y, prediction = y[:, keep], prediction[:, keep]
    if level == "bulk":
        scores = {"log1p": pcc_columns(y, prediction)}
    else:
        scores = {
            "log1p": pcc_gene_by_sample(y, prediction, groups),
            "log1p_cp10k": pcc_gene_by_sample(normalised_log1p(y), normalised_log1p(prediction), groups),
        }
    out = {}
    for space, values in scores.items():
        out[space] = np.full(len(keep), np.nan)
        out[space][keep] = values
    return out


def _rmse_interval(
    y: np.ndarray, first: list[np.ndarray], second: list[np.ndarray], n_boot: int
) -> tuple[float, float, float]:
    def rmse(rows: np.ndarray, p: list[np.ndarray]) -> float:
        return float(np.mean([np.sqrt(((q[rows] - y[rows]) ** 2).mean()) for q in p]))

    point = rmse(np.arange(len(y)), first) - rmse(np.arange(len(y)), second)
    draws = [rmse(r, first) - rmse(r, second) for r in bootstrap_rows(np.zeros(len(y)), n_boot, 0)]
    low, high = np.percentile(draws, [2.5, 97.5])
    return point, float(low), float(high)


def _markdown(table: pd.DataFrame) -> str:
    header = "| " + " | ".join(table.columns) + " |"
    rule = "| " + " | ".join("---" for _ in table.columns) + " |"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def write_report(
    config: dict[str, Any],
    jobs: Sequence[Job],
    out: Path,
    *,
    seconds: float,
    curve: dict[int, list[Job]] | None = None,
) -> dict[str, Any]:
    """Score every finished run and write the files of the module docstring; with ``curve`` (points of
    the learning curve, :func:`bitro.accuracy.bench.curve_jobs`) also :mod:`bitro.accuracy.curve`'s."""
    n_boot = int(config.get("bootstrap", 1000))
    score_rows, paired_rows, diagnostic_rows = [], [], []
    for level in sorted({j.spec.level for j in jobs}):
        y, groups, predictions, infos = _collect(jobs, level)
        masks = _effect_masks(level, jobs)
        for model, seeds in predictions.items():
            for seed, prediction in seeds.items():
                for space, per_gene in _scores(level, y, groups, prediction).items():
                    for effect, mask in masks.items():
                        score_rows.append(
                            {
                                "level": level,
                                "model": model,
                                "seed": seed,
                                "space": space,
                                "effect": effect,
                                "metric": "pcc_gene",
                                "value": float(np.nanmean(per_gene[mask])),
                            }
                        )
                if level == "bulk":
                    keep = shared_columns(prediction)
                    rmse = float(np.sqrt(((prediction[:, keep] - y[:, keep]) ** 2).mean()))
                    score_rows.append(
                        {
                            "level": level,
                            "model": model,
                            "seed": seed,
                            "space": "log1p",
                            "effect": "all",
                            "metric": "rmse",
                            "value": rmse,
                        }
                    )
        for first, second in PAIRS:
            if first not in predictions or second not in predictions:
                continue
            a, b = list(predictions[first].values()), list(predictions[second].values())
            # Both models on the genes both predict (all of them unless one is a transfer).
            keep = shared_columns(*a, *b)
            a, b = [p[:, keep] for p in a], [p[:, keep] for p in b]
            y_pair = y[:, keep]
            pair_masks = {effect: mask[keep] for effect, mask in masks.items()}
            spaces = {"log1p": (y_pair, a, b)}
            if level != "bulk":
                spaces["log1p_cp10k"] = (
                    normalised_log1p(y_pair),
                    [normalised_log1p(p) for p in a],
                    [normalised_log1p(p) for p in b],
                )
            pooled_groups = np.zeros(len(y)) if level == "bulk" else groups
            # A constant predictor has no PCC gene: against the training mean only RMSE is compared.
            for space, (t, pa, pb) in spaces.items() if second != "training_mean" else ():
                differences = paired_difference(
                    t, pa, pb, pooled_groups, pair_masks, n_boot=n_boot, pooled=level == "bulk"
                )
                for effect, (point, low, high) in differences.items():
                    paired_rows.append(
                        {
                            "level": level,
                            "first": first,
                            "second": second,
                            "space": space,
                            "effect": effect,
                            "metric": "pcc_gene",
                            "difference": point,
                            "low": low,
                            "high": high,
                        }
                    )
            if level == "bulk":
                point, low, high = _rmse_interval(y_pair, a, b, n_boot)
                paired_rows.append(
                    {
                        "level": level,
                        "first": first,
                        "second": second,
                        "space": "log1p",
                        "effect": "all",
                        "metric": "rmse",
                        "difference": point,
                        "low": low,
                        "high": high,
                    }
                )
        for info in infos:
            norms = info.get("gradient_norms", {})
            diagnostic_rows.append(
                {
                    "level": level,
                    "model": info["model"],
                    "fold": info["fold"],
                    "seed": info["seed"],
                    "validation_mse": info["validation_mse"],
                    "validation_pcc_gene": info.get("validation_pcc_gene"),
                    "steps_run": info["train"]["steps_run"],
                    "best_step": info["train"]["best_step"],
                    "best_at_first_check": info["train"]["best_at_first_check"],
                    "attention_entropy": info["attention_entropy"],
                    "cluster_share": info["cluster_share"],
                    "grad_queries": norms.get("mil.queries"),
                    "grad_readout": norms.get("mil.readout"),
                    "grad_gat": norms.get("gat.layers"),
                    "grad_transformer": norms.get("transformer.blocks"),
                    "train_seconds": info["seconds"],
                }
            )
    scores = pd.DataFrame(score_rows)
    summary = (
        scores.groupby(["level", "metric", "space", "effect", "model"])["value"]
        .agg(["mean", "std", "count"])
        .reset_index()
        .rename(columns={"count": "seeds"})
    )
    paired = pd.DataFrame(paired_rows)
    diagnostics = pd.DataFrame(diagnostic_rows)
    scores.to_csv(out / "scores.tsv", sep="\t", index=False)
    summary.to_csv(out / "summary.tsv", sep="\t", index=False)
    paired.to_csv(out / "paired.tsv", sep="\t", index=False)
    diagnostics.to_csv(out / "diagnostics.tsv", sep="\t", index=False)
    _figure(summary, out / "effects.png")
    markdown = _report_markdown(config, summary, paired, diagnostics, seconds)
    tables = {"summary": summary, "paired": paired, "diagnostics": diagnostics}
    if curve:
        curve_table, curve_paired = curve_tables(curve, n_boot)
        curve_table.to_csv(out / "curve.tsv", sep="\t", index=False)
        curve_paired.to_csv(out / "curve_paired.tsv", sep="\t", index=False)
        curve_figure(curve_table, out / "curve.png")
        markdown += "\n".join(["", *curve_markdown(curve_table, curve_paired)]) + "\n"
        tables |= {"curve": curve_table, "curve_paired": curve_paired}
    (out / "report.md").write_text(markdown)
    return tables


def _wide(summary: pd.DataFrame, level: str, metric: str, space: str) -> pd.DataFrame:
    part = summary[(summary.level == level) & (summary.metric == metric) & (summary.space == space)]
    if part.empty:
        return part
    cell = part.apply(lambda r: f"{r['mean']:.3f} ± {0.0 if np.isnan(r['std']) else r['std']:.3f}", axis=1)
    wide = part.assign(cell=cell).pivot(index="model", columns="effect", values="cell")
    order = [e for e in [*EFFECTS, "all"] if e in wide.columns]
    return wide[order].reset_index()


def _report_markdown(
    config: dict[str, Any],
    summary: pd.DataFrame,
    paired: pd.DataFrame,
    diagnostics: pd.DataFrame,
    seconds: float,
) -> str:
    lines = [
        f"Accuracy benchmark: {seconds / 60:.1f} min; seeds {config['seeds']}; "
        f"bootstrap {config.get('bootstrap', 1000)}.",
        "",
    ]
    for level in sorted(summary.level.unique()):
        for metric, space in (("pcc_gene", "log1p"), ("pcc_gene", "log1p_cp10k"), ("rmse", "log1p")):
            wide = _wide(summary, level, metric, space)
            if not wide.empty:
                lines += [
                    f"**{level}: {metric} ({space}), mean ± std over seeds, by planted effect**",
                    "",
                    _markdown(wide),
                    "",
                ]
        part = paired[paired.level == level] if not paired.empty else paired
        if not part.empty:
            shown = part.assign(
                interval=part.apply(
                    lambda r: f"{r['difference']:+.3f} [{r['low']:+.3f}, {r['high']:+.3f}]", axis=1
                )
            )
            wide = shown.pivot_table(
                index=["first", "second", "metric", "space"],
                columns="effect",
                values="interval",
                aggfunc="first",
            )
            order = [e for e in [*EFFECTS, "all"] if e in wide.columns]
            lines += [
                f"**{level}: paired differences (first − second), bootstrap 95 % interval**",
                "",
                _markdown(wide[order].reset_index()),
                "",
            ]
    if not diagnostics.empty:
        numeric = (
            diagnostics.drop(columns=["fold", "seed"])
            .groupby(["level", "model"])
            .mean(numeric_only=True)
            .round(4)
        )
        lines += ["**Diagnostics (mean over folds and seeds)**", "", _markdown(numeric.reset_index()), ""]
    return "\n".join(lines) + "\n"


def _figure(summary: pd.DataFrame, out: Path) -> None:
    from bitro.plot._figure import new_figure, save_png

    part = summary[(summary.metric == "pcc_gene") & (summary.space == "log1p")]
    levels = sorted(part.level.unique())
    if not levels:
        return
    figure = new_figure(6.0 * len(levels), 3.8)
    axes = figure.subplots(1, len(levels), squeeze=False)[0]
    for ax, level in zip(axes, levels, strict=True):
        sub = part[part.level == level]
        models = sorted(sub.model.unique())
        effects = [e for e in [*EFFECTS, "all"] if e in set(sub.effect)]
        width = 0.8 / max(len(models), 1)
        for i, model in enumerate(models):
            rows = sub[sub.model == model].set_index("effect").reindex(effects)
            ax.bar(
                np.arange(len(effects)) + i * width,
                rows["mean"],
                width,
                yerr=rows["std"].fillna(0),
                label=model,
            )
        ax.set_xticks(np.arange(len(effects)) + 0.4 - width / 2, effects, rotation=30, fontsize=7)
        ax.set_ylabel("PCC gene (log1p)")
        ax.set_title(f"{level}: per planted effect", fontsize=9)
        ax.legend(fontsize=5, loc="lower left", ncols=3)  # each panel its own models
    save_png(figure, out)
