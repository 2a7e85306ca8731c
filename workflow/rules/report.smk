# The report (issue 7): `bitro plot` writes each cohort's figures and tables into results/{cohort}/figures/,
# marked here for `snakemake --report report.html` (or report.zip): one category per cohort, one
# subcategory per kind of figure, captions in workflow/report/. One plot rule per cohort, since a cohort's
# figures depend on its number of folds.

# Output name prefix -> (subcategory, caption, what the file shows).
REPORT_KINDS = {
    "spatial": ("Spot maps", "spatial.rst", "spot maps"),
    "cells": ("Cell maps", "cells.rst", "cell maps"),
    "pcc_genes": ("Per-gene PCC", "pcc_genes.rst", "distribution"),
    "pcc_table": ("Per-gene PCC", "pcc_table.rst", "table"),
    "baselines": ("BiTro and the baselines", "baselines.rst", "bar chart"),
    "training": ("Training curves", "training.rst", "loss per epoch"),
    "summary": ("Metric tables", "summary.rst", "mean ± std over folds"),
    "metrics": ("Metric tables", "metrics.rst", "every fold"),
}


def plot_files(cohort):
    """What `bitro plot` writes for a cohort, as bitro.plot.cohort.figure_names: output name -> path."""
    level = COHORTS[cohort]["level"]
    names = {}
    for fold in fold_names(cohort):
        if level in ("st", "xenium"):
            names[f"spatial_{fold}"] = f"{fold}_spatial.png"
        if level in ("xenium", "bulk"):
            names[f"cells_{fold}"] = f"{fold}_cells.png"
    names |= {
        "pcc_genes": "pcc_genes.png",
        "pcc_table": "pcc_genes.tsv",
        "baselines": "baselines.png",
        "training": "training.png",
        "summary": "summary.tsv",
        "metrics": "metrics_by_fold.tsv",
    }
    return {key: RESULTS / cohort / "figures" / name for key, name in names.items()}


def plot_outputs(cohort):
    """plot_files(cohort), each marked for the report with its category, subcategory and caption."""
    outputs = {}
    for key, path in plot_files(cohort).items():
        kind, fold = (
            key.split("_", 1)
            if key.startswith(("spatial_", "cells_"))
            else (key, "all")
        )
        subcategory, caption, content = REPORT_KINDS[kind]
        outputs[key] = report(
            path,
            caption=f"../report/{caption}",
            category=cohort,
            subcategory=subcategory,
            labels={"fold": fold, "content": content},
        )
    return outputs


def plot_inputs(cohort):
    inputs = {
        "metrics": RESULTS / cohort / "metrics.tsv",
        "baselines": RESULTS / cohort / "baselines.tsv",
        "folds": RESULTS / cohort / "folds.json",
    }
    for name in ("predictions.h5ad", "cells_pred.h5ad", "train_log.csv"):
        inputs[name.split(".")[0]] = fold_files(cohort, name)
    return inputs


for plot_cohort in COHORTS:

    rule:
        name:
            f"plot_{plot_cohort}"
        input:
            **plot_inputs(plot_cohort),
        output:
            **plot_outputs(plot_cohort),
        log:
            LOGS / "plot" / f"{plot_cohort}.log",
        conda:
            "../../envs/bitro.yaml"
        threads: 1
        resources:
            mem_mb=16000,
            runtime=60,
        params:
            cohort=plot_cohort,
            level=COHORTS[plot_cohort]["level"],
            cohort_dir=RESULTS / plot_cohort,
            out_dir=RESULTS / plot_cohort / "figures",
            folds=" ".join(fold_names(plot_cohort)),
        shell:
            "bitro plot --cohort-dir {params.cohort_dir} --out-dir {params.out_dir} --cohort {params.cohort} "
            "--level {params.level} --folds {params.folds} --threads {threads} > {log} 2>&1"
