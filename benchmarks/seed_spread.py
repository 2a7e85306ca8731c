"""How much a cohort's out-of-fold result moves with the training seed alone.

Run it in a project whose workflow has finished (after `make demo`):

    .venv/bin/python benchmarks/seed_spread.py --cohort demo_bulk --seeds 1 2 3 4 [--workers 2]

For every fold of the cohort it trains BiTro again with each seed, on the same inputs and settings as the
workflow's run (the fold's ``model.json``: features, PCA basis, phenotypes, training settings), predicts the
fold's test samples, and scores each seed's predictions pooled over the folds (the ``out_of_fold`` rows of
``bitro summarise``). It prints those beside the workflow's own run (seed 0) and the baselines
(``baselines.h5ad``), and the mean ± std over the seeds: the baseline to read a difference against. The
extra runs go to ``results/seed_spread/{cohort}/seed{s}/{fold}/``; folds of a seed already there are
reused.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

from bitro.evaluate.summary import out_of_fold_rows
from bitro.folds.splits import read_folds


def train_and_predict(cohort_dir: Path, fold: str, seed: int, out: Path) -> Path:
    """Train one fold with ``seed`` and the workflow's settings; return its ``predictions.h5ad``."""
    if (out / "predictions.h5ad").is_file():
        return out / "predictions.h5ad"
    meta = json.loads((cohort_dir / fold / "model.json").read_text())
    # n_genes and in_dim follow from the genes and features; the rest is the run's architecture.
    model = {k: v for k, v in meta["model_config"].items() if k not in ("n_genes", "in_dim")}
    settings = {"model": model, "training": meta["train"] | {"seed": seed}}
    scope = meta["features"]["scope"]
    common = ["--samples-dir", str(cohort_dir / "samples"), "--folds", str(cohort_dir / "folds.json")]
    command = ["bitro", "train", *common, "--fold", fold, "--genes", str(cohort_dir / "genes.txt")]
    command += ["--phenotypes", str(cohort_dir / fold / f"phenotypes_{scope}.npz"), "--scope", scope]
    if meta["features"]["basis"]:
        command += ["--basis", meta["features"]["basis"]]
    if not meta["transform"]["zscore"]:
        command.append("--no-zscore")
    command += ["--params-json", json.dumps(settings), "--quiet", "--threads", "1", "--out-dir", str(out)]
    out.mkdir(parents=True, exist_ok=True)
    with (out / "run.log").open("w") as log:
        subprocess.run(command, check=True, stdout=log, stderr=subprocess.STDOUT)
        predict = ["bitro", "predict", *common, "--model-dir", str(out), "--fold", fold, "--threads", "1"]
        subprocess.run([*predict, "--out-dir", str(out)], check=True, stdout=log, stderr=subprocess.STDOUT)
    return out / "predictions.h5ad"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--project", type=Path, default=Path())
    parser.add_argument("--cohort", default="demo_bulk")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--workers", type=int, default=2, help="training runs side by side (one thread each)")
    parser.add_argument("--space", default="log1p TPM")
    args = parser.parse_args()
    cohort_dir = args.project / "results" / args.cohort
    folds = read_folds(cohort_dir / "folds.json").names
    jobs = {
        (seed, fold): args.project / "results" / "seed_spread" / args.cohort / f"seed{seed}" / fold
        for seed in args.seeds
        for fold in folds
    }
    with ThreadPoolExecutor(args.workers) as pool:
        done = {
            (seed, fold): pool.submit(train_and_predict, cohort_dir, fold, seed, out)
            for (seed, fold), out in jobs.items()
        }
        paths = {key: future.result() for key, future in done.items()}
    tables = [out_of_fold_rows([cohort_dir / fold / "baselines.h5ad" for fold in folds])]
    tables.append(out_of_fold_rows([cohort_dir / fold / "predictions.h5ad" for fold in folds]).assign(seed=0))
    for seed in args.seeds:
        tables.append(out_of_fold_rows([paths[(seed, fold)] for fold in folds]).assign(seed=seed))
    table = pd.concat(tables, ignore_index=True)
    table = table[table["space"] == args.space].astype({"seed": "Int64"})
    columns = ["model", "seed", "pcc_overall", "pcc_gene", "rmse"]
    print(table[[c for c in columns if c in table]].to_string(index=False, float_format="%.3f"))
    runs = table[table["model"] == "bitro"]
    for metric in ("pcc_overall", "pcc_gene", "rmse"):
        print(f"bitro over {len(runs)} seeds: {metric} {runs[metric].mean():.3f} ± {runs[metric].std():.3f}")


if __name__ == "__main__":
    sys.exit(main())
