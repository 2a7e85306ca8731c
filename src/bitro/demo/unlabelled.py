"""Write the demo's unlabelled slide in the prediction-only ``slides`` layout
(:func:`bitro.layout.slides_files`): one more section rendered like the ST sections, from a new patient
the ST model never trained on, and no expression; :mod:`bitro.io.unlabelled` reads it.

``{outdir}/slides/DEMO_NEW01.tif`` is a pyramidal BigTIFF with its pixel size in the resolution tags (the
same writer as every demo slide); ``config/samples/demo_slides.tsv`` is its sample sheet. What was planted
stays beside it in ``slides/truth/`` (``DEMO_NEW01_cells.h5ad``: each cell's simulated counts and position,
so that predictions can be scored on any units later; ``params.json``), which no reader takes as input.

Every draw comes from its own seeds (``[seed, 40, i]`` patient, ``[seed, 41, i]`` section, ``[seed, 4, i]``
slide, ``[seed, 60, 4, i]`` counts), so writing it changes no byte of the other demo cohorts.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from bitro.demo.config import DemoConfig
from bitro.demo.expression import ExpressionModel, build_expression_model
from bitro.demo.sections import (
    SlideJob,
    SlideResult,
    _counts_for,
    _patient_effects,
    _run_jobs,
    _slide_params,
    _write_params,
    _write_truth,
)
from bitro.demo.tissue import TissueParams, draw_patient_params, jitter_section_params
from bitro.layout import slides_slide

#: The folder of the demo's unlabelled slides in the demo's output directory (the cohort's ``root``).
UNLABELLED_DIR = "slides"
#: The demo's unlabelled sections (sample ids), each from its own new patient.
UNLABELLED_IDS: tuple[str, ...] = ("DEMO_NEW01",)


def unlabelled_patient(sample_id: str) -> str:
    """The patient of an unlabelled demo section (``DEMO_NEW01`` → ``PNEW01``): none of the ST cohort's."""
    return "P" + sample_id.removeprefix("DEMO_")


def unlabelled_jobs(
    root: Path, cfg: DemoConfig
) -> tuple[list[SlideJob], dict[str, tuple[TissueParams, dict[str, float]]]]:
    """The slide jobs of the unlabelled sections (written to ``root/{id}.tif``), ST-sized, and their
    patients' tissue parameters and expression effects."""
    jobs = []
    patients: dict[str, tuple[TissueParams, dict[str, float]]] = {}
    for i, sid in enumerate(UNLABELLED_IDS):
        prng = np.random.default_rng([cfg.seed, 40, i])
        patient = unlabelled_patient(sid)
        patients[patient] = (draw_patient_params(prng), _patient_effects(prng))
        sparams = jitter_section_params(np.random.default_rng([cfg.seed, 41, i]), patients[patient][0])
        w, h = cfg.st_size_um
        tif = slides_slide(root, sid, f"{sid}.tif")
        seed, quality = [cfg.seed, 4, i], cfg.jpeg_quality
        jobs.append(SlideJob(sid, UNLABELLED_DIR, patient, w, h, sparams, seed, tif, cfg.mpp, quality))
    return jobs, patients


def _write_unlabelled(
    root: Path,
    cfg: DemoConfig,
    model: ExpressionModel,
    results: dict[str, SlideResult],
    patients: dict[str, tuple[TissueParams, dict[str, float]]],
) -> None:
    """The truth of the rendered unlabelled sections (their slides are already in ``root``)."""
    (root / "truth").mkdir(parents=True, exist_ok=True)
    params: dict[str, Any] = {
        "slides": {},
        "patients": {k: {"tissue": v[0].to_dict(), "effects": v[1]} for k, v in patients.items()},
    }
    for i, sid in enumerate(UNLABELLED_IDS):
        res = results[sid]
        counts = _counts_for(cfg, model, res, patients[res.job.patient][1], [4, i])
        _write_truth(root / "truth", sid, res, model, counts, {})
        params["slides"][sid] = _slide_params(res)
    _write_params(root, cfg, model, params)


def write_unlabelled_demo(
    outdir: str | os.PathLike[str], *, config: DemoConfig | None = None, progress: bool = False
) -> dict[str, Any]:
    """Write only the demo's unlabelled slides to ``outdir/slides/`` (replacing it), e.g. beside demo
    cohorts written earlier; :func:`bitro.demo.generate_demo` writes them with the others.

    Written to a hidden temporary folder first and moved into place, so a killed run leaves no half slide.

    Returns
    -------
    dict
        ``{"root", "ids", "slides": {id: path}, "seconds"}``.
    """
    t0 = time.perf_counter()
    cfg = config or DemoConfig()
    out = Path(outdir)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / f".demo-tmp-{uuid.uuid4().hex[:12]}"
    try:
        (tmp / UNLABELLED_DIR).mkdir(parents=True)
        jobs, patients = unlabelled_jobs(tmp / UNLABELLED_DIR, cfg)
        results = _run_jobs(jobs, cfg.workers, progress)
        model = build_expression_model(np.random.default_rng([cfg.seed, 50]), cfg.n_genes, cfg.cell_library)
        _write_unlabelled(tmp / UNLABELLED_DIR, cfg, model, results, patients)
        target = out / UNLABELLED_DIR
        if target.exists():
            shutil.rmtree(target)
        (tmp / UNLABELLED_DIR).replace(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "root": str(out / UNLABELLED_DIR),
        "ids": list(UNLABELLED_IDS),
        "slides": {sid: str(out / UNLABELLED_DIR / f"{sid}.tif") for sid in UNLABELLED_IDS},
        "seconds": time.perf_counter() - t0,
    }
