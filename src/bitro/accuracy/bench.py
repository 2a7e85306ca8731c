"""Run the accuracy benchmark from its config: tuning on validation, every model on identical folds.

1. **Tuning** (each cohort of ``tuning.cohorts``, its first fold, one seed): BiTro and the MLP each try
   the same grid of learning rates and dropouts; each keeps the setting of lowest *validation* MSE
   (log1p, the fold's validation samples). The test side never steers anything.
2. **Runs**: every model of the config on every fold, with every seed for the trained models (one run
   for the deterministic baselines), each cached under ``out/runs/`` so that a rerun resumes.
3. **Report** (:mod:`bitro.accuracy.report`): tables per effect and model, paired intervals, the
   diagnostics, a figure.

Runs go to a pool of worker processes, one torch thread each (short jobs on a small machine gain more
from running side by side than from threads).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from itertools import product
from pathlib import Path
from typing import Any

from bitro.accuracy.runs import (
    DETERMINISTIC,
    MLP_MODELS,
    VARIANTS,
    CohortSpec,
    RunResult,
    cohort,
    cohort_fingerprint,
    configs_record,
    folds,
    load_run,
    resolved_configs,
    run_baseline,
    run_bitro,
    save_run,
)
from bitro.accuracy.transfer import (
    PRETRAIN,
    TRANSFERS,
    pretrain_name,
    pretrain_source,
    run_transfer,
    weights_path,
)
from bitro.errors import ConfigError
from bitro.train.transfer import transfer_genes

log = logging.getLogger("bitro")


@dataclass(frozen=True)
class Job:
    """One cached run: a model on a fold of a cohort with a seed and its settings."""

    spec: CohortSpec
    fold: int
    model: str
    seed: int
    settings: dict[str, Any] = field(hash=False, compare=False)
    path: Path = field(compare=False)

    def provenance(self) -> dict[str, Any]:
        """What the run is made from beyond its settings: the fingerprint of each cohort it reads and,
        for a BiTro run, the resolved model and training configs (library defaults included), so that a
        cached run made from other data or under another default is made again."""
        out: dict[str, Any] = {"cohort": cohort_fingerprint(self.spec)}
        if self.model in VARIANTS:
            out["configs"] = configs_record(
                *resolved_configs(self.spec, self.model, self.seed, self.settings)
            )
        elif self.model.startswith(PRETRAIN):
            variant = self.model.removeprefix(PRETRAIN)
            bitro = self.settings["bitro"]
            out["configs"] = configs_record(*resolved_configs(self.spec, variant, self.seed, bitro))
        elif self.model in TRANSFERS:
            pretrain = self.settings["pretrain"]
            source = cohort_spec(pretrain["level"], pretrain["cohort"], self.spec.seed)
            genes = transfer_genes(cohort(source).genes, cohort(self.spec).genes)
            variant = pretrain["variant"]
            out["source_cohort"] = cohort_fingerprint(source)
            out["pretrain_configs"] = configs_record(
                *resolved_configs(source, variant, self.seed, pretrain["bitro"])
            )
            out["configs"] = configs_record(
                *resolved_configs(self.spec, variant, self.seed, self.settings["target"], n_genes=len(genes))
            )
        return out

    def cached(self) -> RunResult | None:
        """The job's finished run, or None (:func:`~bitro.accuracy.runs.load_run`)."""
        return load_run(self.path, self.settings, self.provenance())

    def save(self, result: RunResult) -> None:
        save_run(result, self.path, self.settings, self.provenance())


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)
    logging.getLogger("bitro").setLevel(logging.WARNING)


def execute(job: Job) -> tuple[Job, float]:
    """Run ``job`` unless its result is cached; returns it with the seconds it took."""
    started = time.perf_counter()
    if job.cached() is None:
        fold = folds(job.spec)[job.fold] if job.fold >= 0 else None
        result: RunResult
        work = job.path.parent / f".{job.path.name}.work"
        if job.model.startswith(PRETRAIN):
            variant = job.model.removeprefix(PRETRAIN)
            result = pretrain_source(
                job.spec, variant, job.seed, job.settings["bitro"], work, weights_path(job.path)
            )
            job.save(result)
            shutil.rmtree(work, ignore_errors=True)
        elif job.model in TRANSFERS:
            pretrained = job.path.parent.parent / "pretrain" / job.settings["pretrain_run"]
            result = run_transfer(job.spec, fold, job.model, job.seed, job.settings, work, pretrained)
            job.save(result)
            shutil.rmtree(work, ignore_errors=True)
        elif job.model in VARIANTS:
            result = run_bitro(job.spec, fold, job.model, job.seed, job.settings, work)
            job.save(result)
            shutil.rmtree(work, ignore_errors=True)
        else:
            baseline = run_baseline(job.spec, fold, job.model, job.seed, job.settings)
            job.save(baseline)
    return job, time.perf_counter() - started


def _log_done(i: int, n: int, job: Job, seconds: float) -> None:
    log.info(
        "[%d/%d] %s %s fold%d seed %d: %.0f s", i, n, job.spec.level, job.model, job.fold, job.seed, seconds
    )


def run_jobs(jobs: Iterable[Job], workers: int) -> None:
    """Execute ``jobs`` on ``workers`` processes (in this process when 0), logging progress."""
    pending = [j for j in jobs if j.cached() is None]
    if not pending:
        return
    log.info("%d runs to do", len(pending))
    if workers == 0:
        _worker_init()
        for i, job in enumerate(pending, 1):
            _, seconds = execute(job)
            _log_done(i, len(pending), job, seconds)
        return
    with ProcessPoolExecutor(max_workers=workers, initializer=_worker_init) as pool:
        futures = [pool.submit(execute, job) for job in pending]
        for i, future in enumerate(as_completed(futures), 1):
            job, seconds = future.result()
            _log_done(i, len(pending), job, seconds)


def cohort_spec(level: str, options: dict[str, Any], seed: int) -> CohortSpec:
    options = dict(options)
    return CohortSpec(
        level=level,
        n_patients=int(options.pop("n_patients")),
        grid=tuple(options.pop("grid")),
        n_folds=int(options.pop("n_folds")),
        validation_fraction=float(options.pop("validation_fraction")),
        sections_per_patient=int(options.pop("sections_per_patient", 1)),
        seed=seed,
        generator=dict(options.pop("generator", {})),
    )


def bitro_settings(config: dict[str, Any], level: str, lr: float, dropout: float) -> dict[str, Any]:
    """BiTro's settings for ``level`` with a tuned learning rate and dropout."""
    return {
        "model": dict(config.get("model", {})) | {"dropout": dropout},
        "training": dict(config["training"][level]) | {"lr": lr},
        "phenotypes_k": int(config.get("phenotypes_k", 8)),
    }


def transfer_settings(
    config: dict[str, Any],
    level: str,
    model: str,
    chosen_by_level: dict[str, dict[str, dict[str, float]]],
) -> dict[str, Any]:
    """A transfer model's settings on the target ``level``: the target's BiTro settings (its tuned lr and
    dropout) for the fine-tuning, and the pretraining's (``pretrain``: the source cohort, the variant of
    ``transfer.variant``, the source's tuned settings), which name the pretraining run it starts from.

    Raises :class:`~bitro.errors.ConfigError` when the source cohort is not defined or not tuned.
    """
    source, _ = TRANSFERS[model]
    cohorts = config.get("all_cohorts", config["cohorts"])
    if source not in cohorts or source not in chosen_by_level:
        raise ConfigError("models", f"{model} pretrains on the {source} cohort, not defined or not tuned")
    if source == level:
        raise ConfigError("models", f"{model} transfers from {source} to itself")
    options = config.get("transfer", {})
    variant = str(options.get("variant", "bitro"))
    chosen = {lv: chosen_by_level[lv]["bitro"] for lv in (source, level)}
    pretrain = {
        "level": source,
        "cohort": dict(cohorts[source]),
        "variant": variant,
        "bitro": bitro_settings(config, source, chosen[source]["lr"], chosen[source]["dropout"]),
    }
    return {
        "target": bitro_settings(config, level, chosen[level]["lr"], chosen[level]["dropout"]),
        "pretrain": pretrain,
        "lora": dict(options.get("lora", {})),
    }


def with_pretraining(jobs: Sequence[Job], config: dict[str, Any], out: Path) -> list[Job]:
    """Name each transfer job's pretraining run (``settings["pretrain_run"]``) and return the pretraining
    jobs they need, one per source cohort, variant and seed (``out/runs/pretrain/``)."""
    needed: dict[Path, Job] = {}
    for job in jobs:
        if job.model not in TRANSFERS:
            continue
        pretrain = job.settings["pretrain"]
        name = pretrain_name(pretrain["level"], pretrain["variant"], job.seed)
        job.settings["pretrain_run"] = name
        spec = cohort_spec(pretrain["level"], pretrain["cohort"], int(config.get("seed", 0)))
        path = out / "runs" / "pretrain" / name
        needed[path] = Job(spec, -1, PRETRAIN + pretrain["variant"], job.seed, pretrain, path)
    return list(needed.values())


def tuning_grid(config: dict[str, Any], level: str) -> dict[str, Any]:
    """The tuning grid of ``level``: ``tuning`` with the cohort's ``tuning.grid_of[level]`` over it (a
    smaller grid for a cohort whose runs are long; BiTro and the MLP always share it)."""
    grid = {k: v for k, v in config["tuning"].items() if k != "grid_of"}
    return grid | dict(config["tuning"].get("grid_of", {}).get(level, {}))


def restrict(config: dict[str, Any], levels: Sequence[str]) -> dict[str, Any]:
    """``config`` with only the cohorts ``levels`` (their tuning, models and learning curve).

    Raises :class:`~bitro.errors.ConfigError` for a level the config does not define.
    """
    unknown = sorted(set(levels) - set(config["cohorts"]))
    if unknown:
        raise ConfigError("cohorts", f"{unknown} not among the config's cohorts {sorted(config['cohorts'])}")
    out = dict(config)
    out["cohorts"] = {k: v for k, v in config["cohorts"].items() if k in levels}
    out["models"] = {k: v for k, v in config["models"].items() if k in levels}
    out["all_cohorts"] = config.get("all_cohorts", config["cohorts"])  # transfer sources
    out["tuning"] = dict(config["tuning"]) | {
        "cohorts": [c for c in config["tuning"].get("cohorts", ["st"]) if c in levels]
    }
    return out


def tune(config: dict[str, Any], spec: CohortSpec, out: Path, workers: int) -> dict[str, dict[str, float]]:
    """The grid for BiTro and the MLP on the tuning fold of ``spec``'s cohort; the setting of lowest
    validation MSE of each (``out/tuning.json`` keeps every cohort's grid and choice)."""
    grid = tuning_grid(config, spec.level)
    fold, seed = int(grid.get("fold", 0)), int(grid.get("seed", 0))
    prefix = "" if spec.level == "st" else f"{spec.level}_"
    jobs = []
    for lr, dropout in product(grid["lr"], grid["dropout"]):
        tag = f"{prefix}lr{lr:g}_do{dropout:g}"
        jobs.append(
            Job(
                spec,
                fold,
                "bitro",
                seed,
                bitro_settings(config, spec.level, lr, dropout),
                out / "tuning" / f"bitro_{tag}",
            )
        )
        mlp = dict(config.get("mlp", {})) | {"lr": lr, "dropout": dropout}
        jobs.append(Job(spec, fold, "mlp", seed, mlp, out / "tuning" / f"mlp_{tag}"))
    run_jobs(jobs, workers)
    rows, best = [], {}
    for job in jobs:
        result = job.cached()
        assert result is not None
        lr = job.settings["training"]["lr"] if job.model == "bitro" else job.settings["lr"]
        dropout = job.settings["model"]["dropout"] if job.model == "bitro" else job.settings["dropout"]
        rows.append(
            {"model": job.model, "lr": lr, "dropout": dropout, "validation_mse": result.validation_mse}
        )
        if job.model not in best or result.validation_mse < best[job.model]["validation_mse"]:
            best[job.model] = rows[-1]
    record = json.loads((out / "tuning.json").read_text()) if (out / "tuning.json").is_file() else {}
    record[spec.level] = {"grid": rows, "chosen": best}
    (out / "tuning.json").write_text(json.dumps(record, indent=1))
    return best


def benchmark_jobs(
    config: dict[str, Any], out: Path, chosen_by_level: dict[str, dict[str, dict[str, float]]]
) -> list[Job]:
    """Every model × fold × seed of the config, with each cohort's tuned settings (a cohort not tuned
    on its own takes the ST cohort's): each model's runs on both
    cohorts before the next model's, in the order the config lists them, so that a benchmark cut short
    has the first models complete."""
    seeds = [int(s) for s in config["seeds"]]
    jobs = []
    for level, options in config["cohorts"].items():
        spec = cohort_spec(level, options, int(config.get("seed", 0)))
        n_folds = len(folds(spec))
        chosen = chosen_by_level[level] if level in chosen_by_level else chosen_by_level["st"]
        bitro = bitro_settings(config, level, chosen["bitro"]["lr"], chosen["bitro"]["dropout"])
        mlp = dict(config.get("mlp", {})) | {"lr": chosen["mlp"]["lr"], "dropout": chosen["mlp"]["dropout"]}
        fewer = config.get("seeds_of" if level == "st" else f"seeds_of_{level}", {})
        for model in config["models"][level]:
            model_seeds = seeds[:1] if model in DETERMINISTIC else seeds[: int(fewer.get(model, len(seeds)))]
            settings = bitro if model in VARIANTS else mlp if model in MLP_MODELS else {}
            if model in TRANSFERS:
                settings = transfer_settings(config, level, model, chosen_by_level)
            for fold, seed in product(range(n_folds), model_seeds):
                jobs.append(
                    Job(
                        spec,
                        fold,
                        model,
                        seed,
                        dict(settings),
                        out / "runs" / level / f"{model}_fold{fold}_s{seed}",
                    )
                )
    listed = dict.fromkeys(m for models in config["models"].values() for m in models)
    order = {model: i for i, model in enumerate(listed)}
    return sorted(jobs, key=lambda job: order[job.model])


def curve_jobs(
    config: dict[str, Any], out: Path, chosen_by_level: dict[str, dict[str, dict[str, float]]]
) -> dict[int, list[Job]]:
    """The learning curve's runs (config ``learning_curve``), by number of patients N: the curve's models
    on folds whose training is cut to N patients' worth (:func:`bitro.accuracy.runs.subsample_fold`),
    with the cohort's tuned settings. At the cohort's full size a point is the benchmark's own runs
    (the same paths, so they run once). Empty when the config has no curve or its cohort is not run.
    """
    curve = config.get("learning_curve")
    if not curve or curve["cohort"] not in config["cohorts"]:
        return {}
    level = curve["cohort"]
    full = cohort_spec(level, config["cohorts"][level], int(config.get("seed", 0)))
    chosen = chosen_by_level[level] if level in chosen_by_level else chosen_by_level["st"]
    bitro = bitro_settings(config, level, chosen["bitro"]["lr"], chosen["bitro"]["dropout"])
    mlp = dict(config.get("mlp", {})) | {"lr": chosen["mlp"]["lr"], "dropout": chosen["mlp"]["dropout"]}
    seeds = [int(s) for s in config["seeds"]]
    fewer = curve.get("seeds_of", {})
    points: dict[int, list[Job]] = {}
    for n in sorted(int(n) for n in curve["patients"]):
        at_full = n >= full.n_patients
        spec = full if at_full else replace(full, train_patients=n)
        folder = out / "runs" / (level if at_full else f"{level}_n{n}")
        jobs = []
        for model in curve["models"]:
            model_seeds = seeds[:1] if model in DETERMINISTIC else seeds[: int(fewer.get(model, len(seeds)))]
            settings = bitro if model in VARIANTS else mlp if model in MLP_MODELS else {}
            if model in TRANSFERS:
                settings = transfer_settings(config, level, model, chosen_by_level)
            for fold, seed in product(range(full.n_folds), model_seeds):
                jobs.append(
                    Job(spec, fold, model, seed, dict(settings), folder / f"{model}_fold{fold}_s{seed}")
                )
        points[n] = jobs
    return points


def run_benchmark(
    config: dict[str, Any], out: str | os.PathLike[str], *, workers: int = 2, report_only: bool = False
) -> dict[str, Any]:
    """Tune, run every job and write the report under ``out``; returns the report's tables.

    ``report_only`` writes the report from the runs finished so far (a model counts once all its folds
    of a seed are done) and runs nothing.
    """
    from bitro.accuracy.report import write_report

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    levels = config["tuning"].get("cohorts", ["st"])
    if report_only:
        chosen = {
            level: record["chosen"] for level, record in json.loads((out / "tuning.json").read_text()).items()
        }
    else:
        chosen = {}
        for level in levels:
            spec = cohort_spec(level, config["cohorts"][level], int(config.get("seed", 0)))
            chosen[level] = tune(config, spec, out, workers)
            log.info("%s tuned on validation: %s", level, json.dumps(chosen[level]))
    # A transfer's source cohort may have been tuned by an earlier invocation (--cohorts).
    if (out / "tuning.json").is_file():
        recorded = json.loads((out / "tuning.json").read_text())
        chosen = {level: record["chosen"] for level, record in recorded.items()} | chosen
    jobs = benchmark_jobs(config, out, chosen)
    points = curve_jobs(config, out, chosen)
    pretraining = with_pretraining([*jobs, *(j for p in points.values() for j in p)], config, out)
    if not report_only:
        run_jobs(pretraining, workers)  # before any fine-tuning starts from them
        run_jobs(jobs, workers)
        # The largest points first: a curve cut short still has its best-powered end.
        run_jobs([job for n in sorted(points, reverse=True) for job in points[n]], workers)
    return write_report(config, jobs, out, seconds=time.perf_counter() - started, curve=points)
