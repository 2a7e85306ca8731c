"""Cohort summaries, the demo summary and the paper-shaped ablation table, against hand computations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bitro.cli import main
from bitro.errors import InputError
from bitro.evaluate.summary import ablation_table, demo_summary, summarise_cohort

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
