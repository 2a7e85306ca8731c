"""Cohort summaries, the demo summary and the paper-shaped ablation table, against hand computations."""

from __future__ import annotations

from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from bitro.cli import main
from bitro.errors import InputError
from bitro.evaluate.summary import ablation_table, demo_summary, out_of_fold_rows, summarise_cohort
from bitro.metrics import metric_rows

RNG = np.random.default_rng(7)


def fold_table(
    path: Path, fold: str, model: str, *, level: str = "spot", space: str = "log1p counts"
) -> dict:
    values = {
        "pcc_overall": RNG.uniform(0.5, 0.9),
        "pcc_gene": RNG.uniform(0.1, 0.7),
        "rmse": RNG.uniform(0.5, 1),
    }
    row = {"fold": fold, "model": model, "level": level, "space": space, "scope": "per_sample"} | values
    pd.DataFrame([row]).to_csv(path, sep="\t", index=False)
    return values


def cohort_tables(
    folder: Path, models: list[str], *, n_folds: int, level: str, space: str
) -> dict[str, Path]:
    """Per model: fold tables summarised into ``<model>.tsv``; returns the summary paths."""
    out = {}
    for model in models:
        folds = [folder / f"{model}_fold{k}.tsv" for k in range(n_folds)]
        for k, path in enumerate(folds):
            fold_table(path, f"fold{k}", model, level=level, space=space)
        out[model] = folder / f"{model}.tsv"
        summarise_cohort(folds, out[model])
    return out


def test_cohort_summary_is_the_folds_then_mean_and_sample_std(tmp_path: Path) -> None:
    values = [fold_table(tmp_path / f"f{k}.tsv", f"fold{k}", "bitro") for k in range(3)]
    table = summarise_cohort([tmp_path / f"f{k}.tsv" for k in range(3)], tmp_path / "metrics.tsv")
    assert table["fold"].tolist() == ["fold0", "fold1", "fold2", "mean", "std"]
    for column in ("pcc_overall", "pcc_gene", "rmse"):
        column_values = [v[column] for v in values]
        mean = table.loc[table["fold"] == "mean", column].item()
        std = table.loc[table["fold"] == "std", column].item()
        assert np.isclose(mean, np.mean(column_values)) and np.isclose(std, np.std(column_values, ddof=1))
    assert pd.read_csv(tmp_path / "metrics.tsv", sep="\t")["fold"].tolist()[-2:] == ["mean", "std"]


def test_ablation_table_has_the_papers_shape_and_the_fold_means(tmp_path: Path) -> None:
    st = cohort_tables(
        tmp_path,
        ["bitro", "bitro_transfer_lora", "bitro_no_cluster", "bitro_no_norm"],
        n_folds=3,
        level="spot",
        space="log1p counts",
    )
    bulk_dir = tmp_path / "bulk"
    bulk_dir.mkdir()
    bulk = cohort_tables(bulk_dir, ["bitro", "bitro_no_cluster"], n_folds=2, level="slide", space="log1p TPM")
    # A bulk table in linear TPM is not what the ablation compares: it must be ignored.
    fold_table(bulk_dir / "tpm_fold0.tsv", "fold0", "bitro_no_norm", level="slide", space="TPM")
    summarise_cohort([bulk_dir / "tpm_fold0.tsv"], bulk_dir / "tpm.tsv")

    table = ablation_table(
        {"st": list(st.values()), "bulk": [*bulk.values(), bulk_dir / "tpm.tsv"]}, tmp_path / "table.tsv"
    )
    assert table.columns.tolist() == ["type", "configuration", "st O.", "st G.", "bulk O.", "bulk G."]
    assert list(zip(table["type"], table["configuration"], strict=True)) == [
        ("base", "standard"),
        ("base", "no_cluster"),
        ("base", "no_norm"),
        ("transfer (lora)", "standard"),
    ]
    summary = pd.read_csv(st["bitro_no_cluster"], sep="\t").set_index("fold")
    expected = f"{summary.loc['mean', 'pcc_gene']:.3f} ± {summary.loc['std', 'pcc_gene']:.3f}"
    assert table.loc[1, "st G."] == expected
    # Configurations a cohort did not run stay empty, not zero.
    row = table[table["configuration"] == "no_norm"].iloc[0]
    assert pd.isna(row["bulk O."]) and isinstance(row["st O."], str)
    assert pd.read_csv(tmp_path / "table.tsv", sep="\t").shape == table.shape


def test_ablation_table_verb_and_demo_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    st = cohort_tables(tmp_path, ["bitro", "bitro_no_cluster"], n_folds=2, level="spot", space="log1p counts")
    spec = ",".join(["st", *(str(p) for p in st.values())])
    assert main(["ablation-table", "--cohort", spec, "--out", str(tmp_path / "t.tsv")]) == 0
    assert "no_cluster" in capsys.readouterr().out
    summary = demo_summary({"st": ("leave-one-out", list(st.values()))}, tmp_path / "s.tsv")
    assert set(summary["model"]) == {"bitro", "bitro_no_cluster"}
    assert (summary["protocol"] == "leave-one-out").all() and (summary["n_folds"] == 2).all()


def test_ablation_table_without_comparable_rows_is_an_error(tmp_path: Path) -> None:
    fold_table(tmp_path / "f.tsv", "fold0", "bitro", level="cell", space="log1p counts")
    summarise_cohort([tmp_path / "f.tsv"], tmp_path / "cells.tsv")
    with pytest.raises(InputError, match="no spot or slide rows"):
        ablation_table({"x": [tmp_path / "cells.tsv"]}, tmp_path / "table.tsv")
    assert not (tmp_path / "table.tsv").exists()


GENES = [f"G{g}" for g in range(6)]


def bulk_fold_files(folder: Path, fold: int, slides: list[str], truth: np.ndarray, models: dict) -> tuple:
    """One K-fold bulk fold as predict and baselines write it: predictions.h5ad, baselines.h5ad, tables."""
    folder.mkdir(parents=True, exist_ok=True)
    obs = pd.DataFrame({"sample_id": slides, "scored": True}, index=slides)
    bitro = ad.AnnData(X=models["bitro"], obs=obs, var=pd.DataFrame(index=GENES), layers={"truth": truth})
    rows = metric_rows(
        truth, models["bitro"], GENES, np.array(slides), level="slide", spaces=["log1p TPM", "TPM"],
        model="bitro", fold=f"fold{fold}",
    )  # fmt: skip
    bitro.uns["bitro"] = {
        "metrics": pd.DataFrame(rows).drop(columns="undefined_genes").to_dict(orient="list")
    }
    bitro.write_h5ad(folder / "predictions.h5ad")
    pd.DataFrame(rows).to_csv(folder / "metrics.tsv", sep="\t", index=False)
    base = ad.AnnData(
        X=truth,
        obs=obs[["sample_id"]],
        var=pd.DataFrame(index=GENES),
        layers={"truth": truth, "training_mean": models["training_mean"]},
    )
    base.uns["bitro"] = {
        "fold": f"fold{fold}",
        "level": "slide",
        "spaces": ["log1p TPM"],
        "models": ["training_mean"],
    }
    base.write_h5ad(folder / "baselines.h5ad")
    rows = metric_rows(
        truth, models["training_mean"], GENES, np.array(slides), level="slide", spaces=["log1p TPM"],
        model="training_mean", fold=f"fold{fold}",
    )  # fmt: skip
    pd.DataFrame(rows).to_csv(folder / "baselines.tsv", sep="\t", index=False)
    return folder / "predictions.h5ad", folder / "baselines.h5ad"


def test_out_of_fold_rows_score_the_pooled_test_slides(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    slides = [[f"S{k}{i}" for i in range(n)] for k, n in enumerate((2, 3, 2))]
    truths = [rng.gamma(2.0, 50.0, (len(s), len(GENES))) for s in slides]
    predicted = [t * rng.lognormal(0, 0.3, t.shape) for t in truths]
    means = [np.full_like(t, 80.0) for t in truths]
    files = [
        bulk_fold_files(tmp_path / f"fold{k}", k, s, t, {"bitro": p, "training_mean": m})
        for k, (s, t, p, m) in enumerate(zip(slides, truths, predicted, means, strict=True))
    ]
    table = summarise_cohort(
        [tmp_path / f"fold{k}" / "metrics.tsv" for k in range(3)],
        tmp_path / "metrics.tsv",
        baselines=[tmp_path / f"fold{k}" / "baselines.tsv" for k in range(3)],
        baselines_out=tmp_path / "baselines.tsv",
        predictions=[f[0] for f in files],
        baseline_predictions=[f[1] for f in files],
    )
    log1p = table[table["space"] == "log1p TPM"].set_index("fold")
    assert log1p.index.tolist() == ["fold0", "fold1", "fold2", "mean", "std", "out_of_fold"]
    # By hand: every slide once, log1p TPM, one PCC per gene over the 7 slides (scipy), RMSE over all.
    t, p = np.log1p(np.concatenate(truths)), np.log1p(np.concatenate(predicted))
    per_gene = [stats.pearsonr(t[:, g], p[:, g])[0] for g in range(len(GENES))]
    per_slide = [stats.pearsonr(t[i], p[i])[0] for i in range(len(t))]
    row = log1p.loc["out_of_fold"]
    assert row["n_units"] == 7 and row["scope"] == "pooled"
    assert np.isclose(row["pcc_gene"], np.mean(per_gene)) and np.isclose(
        row["pcc_overall"], np.mean(per_slide)
    )
    assert np.isclose(row["rmse"], np.sqrt(np.mean((t - p) ** 2)))
    # mean and std are over the folds only.
    folds = log1p.loc[["fold0", "fold1", "fold2"], "rmse"].to_numpy(float)
    assert np.isclose(log1p.loc["mean", "rmse"], folds.mean())
    # A constant prediction has no per-gene PCC: counted as undefined, not scored as 0.
    base = pd.read_csv(tmp_path / "baselines.tsv", sep="\t").set_index("fold")
    assert base.loc["out_of_fold", "n_undefined_genes"] == len(GENES)
    headline = demo_summary({"bulk": ("patient 3-fold", [tmp_path / "metrics.tsv"])}, tmp_path / "s.tsv")
    pooled = headline[(headline["scope"] == "out_of_fold") & (headline["space"] == "log1p TPM")]
    assert len(pooled) == 1 and pooled["rmse"].item() == f"{row['rmse']:.3f}"
    assert (headline.loc[headline["scope"] != "out_of_fold", "n_folds"] == 3).all()
    # The ablation table takes the pooled numbers where a K-fold bulk table has them.
    ablation = ablation_table({"bulk": [tmp_path / "metrics.tsv"]}, tmp_path / "table.tsv")
    assert ablation.loc[0, "bulk G."] == f"{row['pcc_gene']:.3f}"
    # A slide tested by two folds is not an out-of-fold prediction.
    with pytest.raises(InputError, match="each unit tested once"):
        out_of_fold_rows([files[0][0], files[0][0]])
