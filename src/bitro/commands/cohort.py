"""Cohort verbs: ``genes``, ``folds``, ``cohort-pca`` and ``phenotypes`` (one fold at a time)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np

from bitro.options import GROUP_BY, LEVELS

log = logging.getLogger("bitro")


def sample_dirs(samples_dir: str | Path, samples: list[str]) -> dict[str, Path]:
    """``samples_dir/<sample>`` for each sample."""
    return {s: Path(samples_dir) / s for s in samples}


def _cmd_genes(args: argparse.Namespace) -> None:
    import anndata as ad

    from bitro.errors import ConfigError, InputError
    from bitro.genes.selection import read_gene_list, select_genes, write_gene_list
    from bitro.io.validate import require_file

    adatas = []
    for path in args.targets:
        adata = ad.read_h5ad(require_file(path, "targets"))
        if args.level == "st" and "in_tissue" in adata.obs:
            adata = adata[adata.obs["in_tissue"].to_numpy().astype(bool)]  # spots outside tissue: left out
        if adata.n_obs == 0:
            raise InputError(path, "holds no units in tissue (an empty sample): it cannot take part")
        adatas.append(adata)
    where = Path(args.targets[0]).parent.parent if len(args.targets) > 1 else Path(args.targets[0])
    if args.gene_list:
        genes = read_gene_list(args.gene_list)
        measured = set.intersection(*(set(a.var_names.astype(str)) for a in adatas))
        missing = [g for g in genes if g not in measured]
        if missing:
            log.warning(
                "%d listed genes are not measured in every sample and are dropped: %s",
                len(missing),
                missing[:10],
            )
        genes = sorted(g for g in genes if g in measured)
        if not genes:
            raise InputError(args.gene_list, "none of its genes is measured in every sample")
    else:
        try:
            genes = select_genes(
                adatas, n_genes=args.n_genes, n_hvg=args.n_hvg, per_sample_hvg=args.level != "bulk"
            )
        except ValueError as exc:
            raise InputError(where, str(exc)) from exc
        if len(genes) < args.n_genes:
            text = (
                f"{len(genes)} candidate genes (highly variable, measured in every sample, not "
                f"mitochondrial, ribosomal or control) for --n-genes {args.n_genes}"
            )
            if not args.up_to:
                raise ConfigError(
                    where,
                    f"{text}: lower genes.n_genes, give a gene list, or set genes.up_to: true "
                    "(--up-to) to keep up to that many",
                )
            log.warning("%s: %s; keeping all %d (genes.up_to)", where, text, len(genes))
    if not genes:
        raise InputError(where, "no gene left to predict")
    write_gene_list(genes, args.out)
    log.info("%d genes -> %s", len(genes), args.out)


def read_sample_sheet(path: str | Path, *, level: str | None = None) -> tuple[list[str], list[str] | None]:
    """The sample ids of a sheet and its patient ids (``None`` without a ``patient_id`` column).

    An empty patient id stands for the sample itself. For bulk (TCGA) cohorts a sample id that is a TCGA
    barcode must agree with its patient id (the barcode's first 12 characters), so that two slides of one
    patient can never be split apart.

    Raises
    ------
    InputError
        The sheet is missing, unreadable, lacks ``sample_id``, has empty or duplicated sample ids, or
        contradicts the TCGA barcodes.
    """
    import pandas as pd

    from bitro.errors import InputError
    from bitro.io.validate import require_file

    path = require_file(path, "sample sheet")
    try:
        sheet = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise InputError(path, f"not a readable TSV sample sheet ({exc})") from exc
    if "sample_id" not in sheet.columns:
        raise InputError(path, "missing column 'sample_id'")
    samples = sheet["sample_id"].str.strip().tolist()
    if not samples:
        raise InputError(path, "lists no samples")
    if any(not s for s in samples):
        raise InputError(path, "a row has an empty sample_id")
    dupes = sorted({s for s in samples if samples.count(s) > 1})
    if dupes:
        raise InputError(path, f"duplicated sample_id {dupes}")
    if "patient_id" not in sheet.columns:
        return samples, None
    patients = [p.strip() or s for s, p in zip(samples, sheet["patient_id"], strict=True)]
    if level in (None, "bulk"):
        from bitro.io.tcga import barcode_contradictions

        contradictions = barcode_contradictions(samples, patients)
        if contradictions:
            raise InputError(path, contradictions)
    return samples, patients


def _cell_extents(samples_dir: Path, samples: list[str]) -> dict[str, tuple[float, float]]:
    """Each sample's x range (µm) over its cells, the last cell inside (strips are half-open)."""
    from bitro.errors import InputError
    from bitro.preprocess.cells import read_cells

    if samples_dir is None:
        raise InputError("--samples-dir", "strips are cut from the cells' extent: give --samples-dir")
    extents = {}
    for sample, folder in sample_dirs(samples_dir, samples).items():
        x = read_cells(folder / "cells.parquet", geometry=False)["x_um"].to_numpy()
        if len(x) == 0:
            raise InputError(folder / "cells.parquet", "holds no cells: the sample cannot be cut into strips")
        extents[sample] = (float(x.min()), float(np.nextafter(x.max(), np.inf)))
    return extents


def _cmd_folds(args: argparse.Namespace) -> None:
    from bitro.errors import ConfigError, InputError
    from bitro.folds.splits import leave_one_out, patient_split, spatial_strips, write_folds

    samples, patients = read_sample_sheet(args.sample_sheet, level=args.level)
    try:
        if args.level == "st":
            groups = patients if args.group_by == "patient" else None
            # Two groups leave none to validate on: each fold validates on a strip of its training group.
            two = len(set(groups or samples)) == 2
            extents = _cell_extents(args.samples_dir, samples) if two else None
            folds = leave_one_out(
                args.cohort, samples, patients=groups, extents=extents, n_strips=args.n_strips
            )
        elif args.level == "bulk":
            if patients is None:
                raise InputError(args.sample_sheet, "a bulk split needs a patient_id column")
            folds = patient_split(
                args.cohort,
                samples,
                patients,
                test_fraction=args.test_fraction,
                n_folds=args.bulk_folds,
                seed=args.seed,
            )
        else:
            extents = _cell_extents(args.samples_dir, samples)
            folds = spatial_strips(args.cohort, extents, n_strips=args.n_strips)
    except ValueError as exc:
        raise ConfigError(args.sample_sheet, str(exc)) from exc
    write_folds(folds, args.out)
    log.info("%s: %d %s folds -> %s", args.cohort, len(folds.folds), folds.protocol, args.out)


def _cmd_final_fold(args: argparse.Namespace) -> None:
    from bitro.folds.splits import final_fold, read_folds, write_folds

    folds = final_fold(read_folds(args.folds))
    write_folds(folds, args.out)
    fold = folds.folds[0]
    log.info(
        "%s final model: %d samples train, %d validate (as %s) -> %s",
        folds.cohort,
        len(fold.train),
        len(fold.validation),
        folds.params["from_fold"],
        args.out,
    )


def _fold_embeddings(args: argparse.Namespace, samples: list[str]) -> dict[str, np.ndarray]:
    from bitro.features.embeddings import read_embeddings

    return {
        s: read_embeddings(p / "embeddings.npy")[0] for s, p in sample_dirs(args.samples_dir, samples).items()
    }


def _cmd_cohort_pca(args: argparse.Namespace) -> None:
    from bitro.features.reduce import fit_cohort_pca, write_basis
    from bitro.folds.splits import read_folds

    fold = read_folds(args.folds).fold(args.fold)
    embeddings = _fold_embeddings(args, fold.train)
    basis = fit_cohort_pca(list(embeddings.values()), n_components=args.n_components, seed=args.seed)
    write_basis(basis, args.out)
    log.info("%s: cohort PCA on %d training samples -> %s", args.fold, len(fold.train), args.out)


def _cmd_phenotypes(args: argparse.Namespace) -> None:
    from bitro.features.phenotype import fit_phenotypes, write_phenotypes
    from bitro.features.reduce import read_basis
    from bitro.folds.splits import read_folds

    fold = read_folds(args.folds).fold(args.fold)
    if args.basis:
        basis = read_basis(args.basis)
        features = {s: basis.transform(x) for s, x in _fold_embeddings(args, fold.train).items()}
    else:
        features = {
            s: np.load(p / "features.npy") for s, p in sample_dirs(args.samples_dir, fold.train).items()
        }
    phenotypes = fit_phenotypes(features, fold.train, k=args.k, seed=args.seed)
    write_phenotypes(phenotypes, args.out)
    log.info(
        "%s: %d phenotypes from %s cells -> %s", args.fold, args.k, phenotypes.info["n_train_cells"], args.out
    )


def _add_fold_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--folds", required=True, help="folds.json")
    parser.add_argument("--fold", required=True, help="fold name, e.g. fold0")
    parser.add_argument("--samples-dir", required=True, help="results/<cohort>/samples")
    parser.add_argument("--seed", type=int, default=0)


def register(verbs: argparse._SubParsersAction) -> None:
    """Add the cohort verbs to the ``bitro`` parser."""
    genes = verbs.add_parser(
        "genes", help="choose the cohort's genes (HVG, top-K mean ∩ top-K std, or a list)"
    )
    genes.add_argument("--targets", nargs="+", required=True, help="every sample's targets.h5ad")
    genes.add_argument("--level", choices=LEVELS, required=True)
    genes.add_argument("--n-genes", type=int, default=250)
    genes.add_argument("--n-hvg", type=int, default=1000, help="top HVGs per sample in the candidate pool")
    genes.add_argument("--gene-list", help="use these genes (text, one per line, or a TSV's first column)")
    genes.add_argument(
        "--up-to",
        action="store_true",
        help="keep up to --n-genes when fewer candidates exist (default: that is an error)",
    )
    genes.add_argument("--out", required=True, help="genes.txt")
    genes.set_defaults(func=_cmd_genes)

    folds = verbs.add_parser(
        "folds", help="write folds.json: loo (ST), patient split or K-fold (bulk), strips (Xenium)"
    )
    folds.add_argument("--cohort", required=True)
    folds.add_argument("--level", choices=LEVELS, required=True)
    folds.add_argument("--sample-sheet", required=True)
    folds.add_argument("--group-by", choices=GROUP_BY, default="sample")
    folds.add_argument("--test-fraction", type=float, default=0.2, help="bulk, one split: patients tested")
    folds.add_argument(
        "--bulk-folds", type=int, default=1, help="bulk: 1 = one seeded split; K >= 2 = K-fold over patients"
    )
    folds.add_argument("--n-strips", type=int, default=5)
    folds.add_argument("--samples-dir", help="results/<cohort>/samples (Xenium: the cells give each extent)")
    folds.add_argument("--seed", type=int, default=0)
    folds.add_argument("--out", required=True)
    folds.set_defaults(func=_cmd_folds)

    final = verbs.add_parser(
        "final-fold", help="the final model's fold: fold 0 with its test side trained on, nothing tested"
    )
    final.add_argument("--folds", required=True, help="the cohort's folds.json")
    final.add_argument("--out", required=True, help="results/<cohort>/final/folds.json")
    final.set_defaults(func=_cmd_final_fold)

    pca = verbs.add_parser("cohort-pca", help="one PCA basis on a fold's training samples: pca.npz")
    _add_fold_args(pca)
    pca.add_argument("--n-components", type=int, default=128)
    pca.add_argument("--out", required=True)
    pca.set_defaults(func=_cmd_cohort_pca)

    pheno = verbs.add_parser("phenotypes", help="K-means phenotypes on a fold's training cells")
    _add_fold_args(pheno)
    pheno.add_argument("--basis", help="the fold's pca.npz (cohort scope); per-sample features.npy otherwise")
    pheno.add_argument("--k", type=int, default=8)
    pheno.add_argument("--out", required=True)
    pheno.set_defaults(func=_cmd_phenotypes)
