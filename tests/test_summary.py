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
from bitro.evaluate.summary import (
    ablation_table,
    demo_summary,
    out_of_fold_rows,
    summarise_cohort,
    summarise_transfer,
)
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


TARGET_GENES = [f"T{g}" for g in range(6)]
#: The transfer's genes: half of the target's, in another order (genes are matched by name).
SHARED = ["T4", "T1", "T2"]


def spot_fold(folder: Path, fold: str, samples: dict[str, int], rng: np.random.Generator) -> dict:
    """A target fold as predict and baselines write it, and a transfer's predictions of the same units.

    The target's files hold the units in another order and one more unit than the transfer scored; shared
    gene ``T2`` is constant in the first sample's truth (undefined there for every model).
    """
    folder.mkdir(parents=True)
    names = [f"{s}:{i}" for s, n in samples.items() for i in range(n)]
    groups = np.array([s for s, n in samples.items() for _ in range(n)])
    truth = rng.gamma(2.0, 5.0, (len(names), len(TARGET_GENES)))
    truth[groups == next(iter(samples)), TARGET_GENES.index("T2")] = 4.0
    models = {m: truth * rng.lognormal(0, s, truth.shape) for m, s in (("bitro", 0.3), ("mlp", 0.5))}
    # One value per gene for every unit, like the training mean: no per-gene PCC, a PCC overall.
    models["training_mean"] = np.tile(rng.gamma(2.0, 5.0, len(TARGET_GENES)), (len(names), 1))
    extra = rng.gamma(2.0, 5.0, (1, len(TARGET_GENES)))
    order = np.arange(len(names) + 1)[::-1]  # the extra unit first, then the units reversed

    def target_file(values: dict[str, np.ndarray]) -> ad.AnnData:
        obs = pd.DataFrame({"sample_id": [*groups, groups[0]]}, index=[*names, "extra:0"]).iloc[order]
        stacked = {k: np.vstack([v, extra])[order] for k, v in values.items()}
        return ad.AnnData(X=stacked.pop("X"), obs=obs, var=pd.DataFrame(index=TARGET_GENES), layers=stacked)

    bitro = target_file({"X": models["bitro"], "truth": truth})
    bitro.obs["scored"] = True
    bitro.uns["bitro"] = {"metrics": {"model": ["bitro"], "level": ["spot"], "space": ["log1p counts"]}}
    bitro.uns["bitro"]["params"] = {"fold": fold}
    bitro.write_h5ad(folder / "predictions.h5ad")
    base = target_file(
        {"X": truth, "truth": truth, "mlp": models["mlp"], "training_mean": models["training_mean"]}
    )
    base.uns["bitro"] = {
        "fold": fold,
        "level": "spot",
        "spaces": ["log1p counts"],
        "models": ["mlp", "training_mean"],
    }
    base.write_h5ad(folder / "baselines.h5ad")

    columns = [TARGET_GENES.index(g) for g in SHARED]
    transfer = truth[:, columns] * rng.lognormal(0, 0.6, (len(names), len(SHARED)))
    obs = pd.DataFrame({"sample_id": groups, "scored": True}, index=names)
    out = folder / "transfer"
    out.mkdir()
    adata = ad.AnnData(
        X=transfer, obs=obs, var=pd.DataFrame(index=SHARED), layers={"truth": truth[:, columns]}
    )
    rows = metric_rows(
        truth[:, columns], transfer, SHARED, groups, level="spot", spaces=["log1p counts"],
        model="bitro_transfer_lora", fold=fold,
    )  # fmt: skip
    adata.uns["bitro"] = {
        "metrics": pd.DataFrame(rows).astype(str).to_dict(orient="list"),
        "params": {"fold": fold},
    }
    adata.write_h5ad(out / "predictions.h5ad")
    pd.DataFrame(rows).to_csv(out / "metrics.tsv", sep="\t", index=False)
    return {"truth": truth, "groups": groups, "models": models, "dir": folder}


def pcc(a: np.ndarray, b: np.ndarray) -> float:
    return float("nan") if np.ptp(a) == 0 or np.ptp(b) == 0 else float(stats.pearsonr(a, b)[0])


def by_hand(truth: np.ndarray, prediction: np.ndarray, groups: np.ndarray) -> dict[str, float]:
    """Per-sample PCC gene, PCC overall and RMSE (log1p) on the shared genes, scipy and numpy only."""
    columns = [TARGET_GENES.index(g) for g in SHARED]
    t, p = np.log1p(truth[:, columns]), np.log1p(prediction[:, columns])
    per_sample: dict[str, list[float]] = {"pcc_gene": [], "pcc_overall": [], "rmse": []}
    for sample in dict.fromkeys(groups):
        rows = groups == sample
        genes = [pcc(t[rows, g], p[rows, g]) for g in range(len(SHARED))]
        units = [pcc(t[u], p[u]) for u in np.flatnonzero(rows)]
        per_sample["pcc_gene"].append(np.nanmean(genes) if np.isfinite(genes).any() else np.nan)
        per_sample["pcc_overall"].append(np.nanmean(units))
        per_sample["rmse"].append(np.sqrt(np.mean((t[rows] - p[rows]) ** 2)))
    return {k: float(np.nanmean(v)) if np.isfinite(v).any() else np.nan for k, v in per_sample.items()}


def transfer_case(tmp_path: Path) -> list[dict]:
    rng = np.random.default_rng(11)
    return [
        spot_fold(tmp_path / "fold0", "fold0", {"A": 9, "B": 7}, rng),
        spot_fold(tmp_path / "fold1", "fold1", {"C": 8}, rng),
    ]


def test_transfer_table_scores_the_target_models_on_the_shared_genes(tmp_path: Path) -> None:
    folds = transfer_case(tmp_path)
    table = summarise_transfer(
        [f["dir"] / "transfer" / "metrics.tsv" for f in folds],
        tmp_path / "metrics.tsv",
        predictions=[f["dir"] / "transfer" / "predictions.h5ad" for f in folds],
        references=[f["dir"] / name for f in folds for name in ("predictions.h5ad", "baselines.h5ad")],
    )
    assert table.columns[:7].tolist() == ["fold", "model", "level", "space", "scope", "run", "genes"]
    assert (table["genes"] == "shared: 3 of 6").all()
    runs = table.groupby("model", sort=False)["run"].first().to_dict()
    assert runs == {
        "bitro_transfer_lora": "transfer",
        "bitro": "target cohort",
        "mlp": "target cohort",
        "training_mean": "target cohort",
    }
    indexed = table.set_index(["model", "fold"])
    for model in ("bitro", "mlp", "training_mean"):
        for k, fold in enumerate(folds):
            expected = by_hand(fold["truth"], fold["models"][model], fold["groups"])
            row = indexed.loc[(model, f"fold{k}")]
            assert row["n_units"] == len(fold["groups"])  # the transfer's units, not the extra one
            for column, value in expected.items():
                assert np.isclose(row[column], value, equal_nan=True), (model, k, column)
        means = [by_hand(f["truth"], f["models"][model], f["groups"])["pcc_overall"] for f in folds]
        assert np.isclose(indexed.loc[(model, "mean"), "pcc_overall"], np.mean(means))
        assert np.isclose(indexed.loc[(model, "std"), "pcc_overall"], np.std(means, ddof=1))
    # The transfer's own rows are its folds' tables, untouched.
    fold0 = pd.read_csv(folds[0]["dir"] / "transfer" / "metrics.tsv", sep="\t").iloc[0]
    assert indexed.loc[("bitro_transfer_lora", "fold0"), "pcc_gene"] == fold0["pcc_gene"]
    assert pd.read_csv(tmp_path / "metrics.tsv", sep="\t").shape == table.shape
    # A K-fold bulk target pools the folds: the target's models get their out_of_fold rows on those genes.
    pooled = summarise_transfer(
        [f["dir"] / "transfer" / "metrics.tsv" for f in folds],
        tmp_path / "pooled.tsv",
        predictions=[f["dir"] / "transfer" / "predictions.h5ad" for f in folds],
        references=[f["dir"] / name for f in folds for name in ("predictions.h5ad", "baselines.h5ad")],
        pooled=True,
    ).set_index(["model", "fold"])
    assert {m for m, fold in pooled.index if fold == "out_of_fold"} == set(runs)
    stacked = [np.concatenate([f[key] for f in folds]) for key in ("truth", "groups")]
    everything = by_hand(stacked[0], np.concatenate([f["models"]["mlp"] for f in folds]), stacked[1])
    assert np.isclose(pooled.loc[("mlp", "out_of_fold"), "rmse"], everything["rmse"])


def test_transfer_rows_and_target_rows_name_the_same_genes(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folds = transfer_case(tmp_path)
    out = tmp_path / "metrics.tsv"
    argv = ["transfer-summary", "--metrics", *(str(f["dir"] / "transfer" / "metrics.tsv") for f in folds)]
    argv += ["--predictions", *(str(f["dir"] / "transfer" / "predictions.h5ad") for f in folds)]
    references = [str(f["dir"] / name) for f in folds for name in ("predictions.h5ad", "baselines.h5ad")]
    assert main([*argv, "--reference", *references, "--out", str(out)]) == 0
    table = pd.read_csv(out, sep="\t", keep_default_na=False)
    fold_rows = table[table["fold"].isin(["fold0", "fold1"])]
    assert (fold_rows["n_genes"] == len(SHARED)).all()
    # T2, constant in one test sample, is the one undefined gene of every model but the constant one: the
    # transfer and the target's models were scored on the very same names.
    fold0 = fold_rows[(fold_rows["fold"] == "fold0") & (fold_rows["model"] != "training_mean")]
    assert set(fold0["undefined_genes"]) == {"T2"} and len(fold0) == 3
    assert set(table.loc[table["model"] == "training_mean", "undefined_genes"]) == {";".join(SHARED)}
    # The demo summary and the ablation table say which genes each row of a transfer table is scored on.
    headline = demo_summary({"st": ("leave-one-out", [out])}, tmp_path / "s.tsv")
    assert headline["model"].tolist() == [
        f"{m} (shared: 3 of 6 genes)" for m in ("bitro_transfer_lora", "bitro", "mlp", "training_mean")
    ]
    ablation = ablation_table({"st": [out]}, tmp_path / "table.tsv")
    assert list(zip(ablation["type"], ablation["configuration"], strict=True)) == [
        ("base", "standard (shared: 3 of 6 genes)"),
        ("transfer (lora)", "standard"),
    ]
    # A target file without a shared gene cannot be compared.
    short = ad.read_h5ad(references[1])[:, ["T0", "T1", "T2"]].copy()
    short.write_h5ad(tmp_path / "short.h5ad")
    with pytest.raises(InputError, match="lacks shared genes"):
        summarise_transfer(
            [f["dir"] / "transfer" / "metrics.tsv" for f in folds],
            tmp_path / "t.tsv",
            predictions=[f["dir"] / "transfer" / "predictions.h5ad" for f in folds],
            references=[tmp_path / "short.h5ad"],
        )
