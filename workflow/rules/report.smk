# The report (issue 7): `bitro plot` writes each cohort's figures and tables into results/{cohort}/figures/,
# marked here for `snakemake --report report.html` (or report.zip): one category per cohort, one
# subcategory per kind of figure, captions in workflow/report/. One plot rule per cohort, since a cohort's
# figures depend on its number of folds.

from bitro.layout import figure_kind, figure_names

# Kind of figure (bitro.layout.figure_kind) -> (subcategory, caption, what the file shows).
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
    """What `bitro plot` writes for a cohort (bitro.layout.figure_names): output name -> path."""
    names = figure_names(COHORTS[cohort]["level"], fold_names(cohort))
    return {key: layout.figures_dir(cohort) / name for key, name in names.items()}


def plot_outputs(cohort):
    """plot_files(cohort), each marked for the report with its category, subcategory and caption."""
    outputs = {}
    for key, path in plot_files(cohort).items():
        kind, fold = figure_kind(key)
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
        "metrics": layout.cohort_dir(cohort) / CohortFile.METRICS,
        "baselines": layout.cohort_dir(cohort) / CohortFile.BASELINES,
        "folds": layout.cohort_dir(cohort) / CohortFile.FOLDS,
    }
    for name in (FoldFile.PREDICTIONS, FoldFile.CELL_PREDICTIONS, FoldFile.TRAIN_LOG):
        inputs[name.split(".")[0]] = fold_files(cohort, name)
    return inputs


for plot_cohort in EVALUATED:

    rule:
        name:
            f"plot_{plot_cohort}"
        input:
            **plot_inputs(plot_cohort),
        output:
            **plot_outputs(plot_cohort),
        log:
            LOGS / "plot" / f"{plot_cohort}.log",
        benchmark:
            BENCHMARKS / "plot" / f"{plot_cohort}.tsv"
        conda:
            "../../envs/bitro.yaml"
        threads: 1
        resources:
            mem_mb=16000,
            runtime=60,
        params:
            cohort=plot_cohort,
            level=COHORTS[plot_cohort]["level"],
            cohort_dir=layout.cohort_dir(plot_cohort),
            out_dir=layout.figures_dir(plot_cohort),
            folds=" ".join(fold_names(plot_cohort)),
            # the slides, for spot maps drawn over the H&E (read by the preprocessing, so already there)
            slides=f"--format {COHORTS[plot_cohort]['format']} --root {shlex.quote(str(COHORTS[plot_cohort]['root']))}",
        shell:
            "bitro plot --cohort-dir {params.cohort_dir} --out-dir {params.out_dir} --cohort {params.cohort} "
            "--level {params.level} --folds {params.folds} {params.slides} --threads {threads} > {log} 2>&1"
