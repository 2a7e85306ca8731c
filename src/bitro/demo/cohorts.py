"""Write the demo cohorts in the HEST-1k, TCGA and Xenium layouts (see docs/formats.md), and the
unlabelled slide in the ``slides`` layout: the slide jobs of every section (:mod:`bitro.demo.sections`),
then one writer per layout (:mod:`bitro.demo.hest`, ``tcga``, ``xenium``, ``unlabelled``, mirroring
:mod:`bitro.io`)."""

from __future__ import annotations

import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from bitro.demo.config import DemoConfig
from bitro.demo.expression import (
    build_expression_model,
)
from bitro.demo.hest import _write_hest
from bitro.demo.sections import SlideJob, _patient_effects, _run_jobs, _tcga_layout, demo_sample_ids
from bitro.demo.tcga import _write_tcga
from bitro.demo.tissue import (
    TissueParams,
    draw_patient_params,
    jitter_section_params,
)
from bitro.demo.unlabelled import UNLABELLED_DIR, UNLABELLED_IDS, _write_unlabelled, unlabelled_jobs
from bitro.demo.xenium import _write_xenium
from bitro.layout import (
    HEST_SLIDE_DIR,
    XENIUM_HE_IMAGE,
    hest_slides,
    tcga_slides_dir,
)

__all__ = ["demo_sample_ids", "generate_demo"]


def generate_demo(
    outdir: str | os.PathLike[str],
    *,
    config: DemoConfig | None = None,
    progress: bool = True,
    unlabelled: bool = True,
) -> dict:
    """Write the demo cohorts (HEST-1k, TCGA, Xenium) under ``outdir``, and the unlabelled slide
    (``slides/``, :mod:`bitro.demo.unlabelled`).

    Everything is first written to a hidden temporary directory inside ``outdir`` and then moved into
    place cohort by cohort (replacing earlier ``hest/``, ``tcga/``, ``xenium/``), so a killed run leaves
    no half-written cohort.

    Parameters
    ----------
    outdir
        Output directory (created).
    config
        Demo configuration (default :class:`DemoConfig`).
    progress
        Show tqdm progress bars.
    unlabelled
        Also write the unlabelled slide (its own seeds: the other cohorts are the same without it).

    Returns
    -------
    dict
        ``{"root", "seconds", "ids": demo_sample_ids, "paths": {"hest", "tcga", "xenium": [...]},
        "slides": {slide: {path, n_cells, …}}}``, and with ``unlabelled`` ``"unlabelled": {"root", "ids"}``
        (the ``slides`` cohort, apart from ``ids``: it has no expression).
    """
    t0 = time.perf_counter()
    cfg = config or DemoConfig()
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".demo-tmp-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()
    try:
        ids = demo_sample_ids(cfg)
        model = build_expression_model(np.random.default_rng([cfg.seed, 50]), cfg.n_genes, cfg.cell_library)
        jobs: list[SlideJob] = []
        hest_pat: dict[str, tuple[TissueParams, dict[str, float]]] = {}
        (tmp / "hest" / HEST_SLIDE_DIR).mkdir(parents=True)
        for p in range(cfg.n_hest_patients):
            name = f"P{p + 1}"
            prng = np.random.default_rng([cfg.seed, 10, p])
            hest_pat[name] = (draw_patient_params(prng), _patient_effects(prng))
        for i, sid in enumerate(ids["hest"]):
            pname = f"P{i // cfg.hest_sections_per_patient + 1}"
            sparams = jitter_section_params(np.random.default_rng([cfg.seed, 11, i]), hest_pat[pname][0])
            w, h = cfg.st_size_um
            tif = hest_slides(tmp / "hest", sid)[0]
            jobs.append(
                SlideJob(sid, "hest", pname, w, h, sparams, [cfg.seed, 1, i], tif, cfg.mpp, cfg.jpeg_quality)
            )
        tcga_slides_dir(tmp / "tcga").mkdir(parents=True)
        tcga_pat: dict[str, tuple[TissueParams, dict[str, float]]] = {}
        k = 0
        for p, (pat, slides) in enumerate(_tcga_layout(cfg)):
            prng = np.random.default_rng([cfg.seed, 20, p])
            tcga_pat[pat] = (draw_patient_params(prng), _patient_effects(prng))
            for sid in slides:
                srng = np.random.default_rng([cfg.seed, 21, k])
                sparams = jitter_section_params(srng, tcga_pat[pat][0])
                uid = uuid.UUID(bytes=srng.bytes(16), version=4)
                w, h = cfg.bulk_size_um
                tif = tcga_slides_dir(tmp / "tcga") / f"{sid}.{uid}.tif"
                jobs.append(
                    SlideJob(
                        sid, "tcga", pat, w, h, sparams, [cfg.seed, 2, k], tif, cfg.mpp, cfg.jpeg_quality
                    )
                )
                k += 1
        xen_eff: dict[str, dict[str, float]] = {}
        for i, sid in enumerate(ids["xenium"]):
            (tmp / "xenium" / sid).mkdir(parents=True)
            prng = np.random.default_rng([cfg.seed, 30, i])
            xp = draw_patient_params(prng)
            xen_eff[sid] = _patient_effects(prng)
            w, h = cfg.xenium_size_um
            tif = tmp / "xenium" / sid / XENIUM_HE_IMAGE
            jobs.append(
                SlideJob(
                    sid, "xenium", f"X{i + 1}", w, h, xp, [cfg.seed, 3, i], tif, cfg.mpp, cfg.jpeg_quality
                )
            )
        if unlabelled:
            (tmp / UNLABELLED_DIR).mkdir()
            new_jobs, new_patients = unlabelled_jobs(tmp / UNLABELLED_DIR, cfg)
            jobs += new_jobs
        results = _run_jobs(jobs, cfg.workers, progress)
        if ids["hest"]:
            hp: dict[str, Any] = {"slides": {}, "patients": _patients_json(hest_pat)}
            _write_hest(tmp / "hest", cfg, model, results, hest_pat, hp)
        if ids["tcga"]:
            tp: dict[str, Any] = {"slides": {}, "aliquots": {}, "patients": _patients_json(tcga_pat)}
            _write_tcga(tmp / "tcga", cfg, model, results, tcga_pat, tp)
        for i, sid in enumerate(ids["xenium"]):
            xpar: dict[str, Any] = {"slides": {}, "patient_effects": xen_eff[sid]}
            _write_xenium(tmp / "xenium" / sid, sid, cfg, model, results[sid], xen_eff[sid], i, xpar)
        if unlabelled:
            _write_unlabelled(tmp / UNLABELLED_DIR, cfg, model, results, new_patients)
        cohorts = [c for c in ("hest", "tcga", "xenium") if ids[c]] + ([UNLABELLED_DIR] if unlabelled else [])
        for c in cohorts:
            target = out / c
            if target.exists():
                shutil.rmtree(target)
            (tmp / c).replace(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    summary: dict[str, Any] = {
        "root": str(out),
        "seconds": time.perf_counter() - t0,
        "ids": ids,
        "paths": {
            "hest": str(out / "hest"),
            "tcga": str(out / "tcga"),
            "xenium": [str(out / "xenium" / s) for s in ids["xenium"]],
        },
        "slides": {
            sid: {
                "path": str(out / r.job.kind / r.job.tif_path.relative_to(tmp / r.job.kind)),
                "n_cells": len(r.cells),
                "width_px": r.width_px,
                "height_px": r.height_px,
                "seconds": r.seconds,
            }
            for sid, r in results.items()
        },
    }
    if unlabelled:
        summary["unlabelled"] = {"root": str(out / UNLABELLED_DIR), "ids": list(UNLABELLED_IDS)}
    return summary


def _patients_json(p: dict[str, tuple[TissueParams, dict[str, float]]]) -> dict[str, Any]:
    return {k: {"tissue": v[0].to_dict(), "effects": v[1]} for k, v in p.items()}
