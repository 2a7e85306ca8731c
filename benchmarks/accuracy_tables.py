"""The accuracy benchmark's tables for chosen models and pairs, from its cached runs, with fewer resamples.

``bitro accuracy --report-only`` scores every model and every pair of ``bitro.accuracy.report.PAIRS``
with the config's 1,000 resamples; on a shared machine that takes longer than the runs. This script
scores the models named (summary per effect and space: the report's own functions), the pairs named
(the report's paired bootstrap, ``--boot`` resamples) and, with ``--figure``, draws the report's
per-effect figure from every model of the config. Nothing is run; unfinished models are left out.

Usage: ``nice -n 19 .venv/bin/python benchmarks/accuracy_tables.py --level st --models bitro mlp
--pairs bitro:mlp_count --boot 200``
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from bitro.accuracy.bench import benchmark_jobs, with_pretraining
from bitro.accuracy.report import _collect, _effect_masks, _figure, _scores, _wide, shared_columns
from bitro.accuracy.stats import normalised_log1p, paired_difference
from bitro.demo.virtual import EFFECTS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="config/accuracy.yaml")
    parser.add_argument("--out", default="results/accuracy")
    parser.add_argument("--level", required=True)
    parser.add_argument("--models", nargs="*", default=[])
    parser.add_argument("--pairs", nargs="*", default=[], help="first:second")
    parser.add_argument("--boot", type=int, default=200)
    parser.add_argument("--figure", help="write the per-effect figure of every finished model here")
    args = parser.parse_args()
    config = yaml.safe_load(Path(args.config).read_text())
    out = Path(args.out)
    chosen = {k: v["chosen"] for k, v in json.loads((out / "tuning.json").read_text()).items()}
    jobs = benchmark_jobs(config, out, chosen)
    with_pretraining(jobs, config, out)
    rows = []
    levels = [args.level] if not args.figure else sorted(config["cohorts"])
    for level in levels:
        y, groups, predictions, _ = _collect(jobs, level)
        masks = _effect_masks(level, jobs)
        for model, seeds in predictions.items():
            if level == args.level and args.models and model not in args.models and not args.figure:
                continue
            for seed, prediction in seeds.items():
                for space, per_gene in _scores(level, y, groups, prediction).items():
                    for effect, mask in masks.items():
                        value = float(np.nanmean(per_gene[mask]))
                        rows.append((level, model, seed, space, effect, "pcc_gene", value))
                if level == "bulk":
                    keep = shared_columns(prediction)
                    rmse = float(np.sqrt(((prediction[:, keep] - y[:, keep]) ** 2).mean()))
                    rows.append((level, model, seed, "log1p", "all", "rmse", rmse))
    scores = pd.DataFrame(rows, columns=["level", "model", "seed", "space", "effect", "metric", "value"])
    summary = (
        scores.groupby(["level", "metric", "space", "effect", "model"])["value"]
        .agg(["mean", "std", "count"])
        .reset_index()
        .rename(columns={"count": "seeds"})
    )
    if args.figure:
        _figure(summary, Path(args.figure))
    shown = summary[summary.level == args.level]
    if args.models:
        shown = shown[shown.model.isin(args.models)]
    for metric, space in (("pcc_gene", "log1p"), ("pcc_gene", "log1p_cp10k"), ("rmse", "log1p")):
        wide = _wide(shown, args.level, metric, space)
        if not wide.empty:
            seeds = shown[(shown.metric == metric) & (shown.space == space)].groupby("model")["seeds"].max()
            wide.insert(1, "seeds", wide["model"].map(seeds))
            print(f"\n**{args.level}: {metric} ({space}), mean ± std over seeds**\n")
            print(wide.to_markdown(index=False))
    y, groups, predictions, _ = _collect(jobs, args.level)
    masks = _effect_masks(args.level, jobs)
    lines = []
    for pair in args.pairs:
        first, second = pair.split(":")
        if first not in predictions or second not in predictions:
            continue
        a, b = list(predictions[first].values()), list(predictions[second].values())
        keep = shared_columns(*a, *b)
        a, b, t = [p[:, keep] for p in a], [p[:, keep] for p in b], y[:, keep]
        pair_masks = {e: m[keep] for e, m in masks.items()}
        spaces = {"log1p": (t, a, b)}
        if args.level != "bulk":
            spaces["log1p_cp10k"] = (
                normalised_log1p(t),
                [normalised_log1p(p) for p in a],
                [normalised_log1p(p) for p in b],
            )
        pooled_groups = np.zeros(len(y)) if args.level == "bulk" else groups
        for space, (tt, pa, pb) in spaces.items():
            diff = paired_difference(
                tt, pa, pb, pooled_groups, pair_masks, n_boot=args.boot, pooled=args.level == "bulk"
            )
            cells = [f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]" for d, lo, hi in diff.values()]
            lines.append(f"| {first} | {second} | {space} | " + " | ".join(cells) + " |")
        if args.level == "bulk":
            from bitro.accuracy.report import _rmse_interval

            point, low, high = _rmse_interval(t, a, b, args.boot)
            lines.append(f"| {first} | {second} | RMSE | {point:+.3f} [{low:+.3f}, {high:+.3f}] |")
    if lines:
        names = [e for e in [*EFFECTS, "all"] if e in masks]
        title = f"{args.level}: paired differences (first − second), {args.boot} resamples, 95 % interval"
        print(f"\n**{title}**\n")
        print("| first | second | space | " + " | ".join(names) + " |")
        print("| --- | --- | --- |" + " --- |" * len(names))
        print("\n".join(lines))


if __name__ == "__main__":
    main()
