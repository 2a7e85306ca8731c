"""Training throughput on an ST cohort, and streamed bulk prediction of a 10⁶-cell slide in bounded memory.

Part 1, training (``bitro.train.fit.fit``, the loop ``bitro train`` runs): the demo ST cohort's fold 0
(``results/demo_st``: ``folds.json``, ``genes.txt``, ``fold0/phenotypes.npz`` and the per-sample files, loaded
with ``bitro.folds.inputs.load_fold``), or with ``--synthetic`` (or when ``results/demo_st`` is absent) an
in-memory cohort of the same shape made here, so the script runs on a fresh clone. The model is the paper's
(``BiTroConfig`` defaults, D = 128); training uses the demo's settings (lr 1e-3, λ = 0.1, at most 64 units per
bag) at each of ``--batch-sizes`` bags per step, for ``--epochs`` epochs after one warm-up epoch. Reported
per batch size:

- spots/s and cells/s of the training steps alone (collation, forward, loss, backward, clipping, Adam), and
  spots/s of ``fit`` as a whole (validation pass and checkpoint writes included), from wrappers around
  ``fit``'s own ``evaluate_loss``, ``save_state`` and ``collate`` (nothing in the library is changed);
- the FLOP rate of the training steps, from ``bitro.model.cost.flops_per_cell`` (forward, matrix products
  only) × 3 for forward + backward, summed over the epoch's spots with each spot's own cell count (the
  attention term is quadratic in the unit size, so the sum is exact where a mean would not be); FLOPs of the
  padding that attention also computes are not counted. It is given as a fraction of a dense 2048² matrix
  product's rate measured in the same process just before (fp32 on CPU; bf16 on CUDA, where ``fit``
  autocasts to bf16);
- peak memory: resident set size (psutil, sampled every 20 ms) during ``fit`` and before it (interpreter,
  imports, cohort and model), and on CUDA the peak of allocated GPU memory.

The simple baseline in the same run is the same model trained one bag per step (``--baseline-batch 1``):
the spots/s ratio says what batching buys; the fraction of the matmul peak is the absolute reference. The
authors' way of applying the model (each spot of a batch through the model on its own, one optimiser step
per batch) is the baseline of ``bench_throughput.py``.

Part 2, bulk prediction: a synthetic slide of ``--bulk-cells`` cells (10⁶ by default) in 55 µm square
patches of about 60 cells, kNN graphs (k = 8) within patches from ``bitro.features.graph.knn_graphs``,
128-d features, ``--bulk-genes`` genes, held as a ``bitro.folds.samples.SampleData`` of level ``bulk`` and
predicted with ``bitro.folds.bags.predict_bags``, which streams it through
``bitro.model.streaming.predict_streaming`` in chunks of ``bitro.folds.bags.STREAM_CELLS`` cells (50,000;
``--chunk-cells`` overrides it). Reported: wall time, peak RSS against the 4 GiB target, and the second pass
that yields pseudo-cell profiles (``stream_pseudo_cells``, after a fresh ``predict_streaming`` for its
softmax statistics), with a check that each gene's pseudo-cells sum to the slide's prediction. The baseline
is the non-streamed forward (``BiTro.forward`` on the whole slide as one ``CellBatch``) measured on a slide a
tenth the size in its own process, its working memory (peak RSS over the RSS before the forward) scaled by
10 to the full slide; the same process checks that streaming and the full forward agree.

Every part runs in its own child process (``--child``), so each peak RSS is its own.

Usage: ``.venv/bin/python benchmarks/bench_train.py [--device cpu|cuda] [--quick] [--synthetic]
[--cohort results/demo_st] [--batch-sizes 16,32,64] [--epochs 3] [--bulk-cells 1000000] [--bulk-genes 250]
[--parts train,bulk] [--chunk-cells 50000] [--no-pseudo] [--threads 0] [--out results.json]``.
``--quick`` runs one timed epoch per batch size and, on CPU, a 2·10⁵-cell slide (about 5 minutes on 2 busy
CPU cores; under 2 minutes on a GPU, where the slide keeps 10⁶ cells). Without ``--synthetic`` the full run
also trains on the synthetic cohort when the demo cohort exists. ``--threads 1`` is the right setting on a
CPU shared with other jobs: two intra-op threads on two busy cores made training steps 14× slower here.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "results" / "demo_st"
GIB = 1024**3
MIB = 1024**2
TARGET_BYTES = 4 * GIB
RESULT = "RESULT "


# ------------------------------------------------------------------------------------------ measuring
class RssSampler:
    """Resident set size of this process, sampled in a thread; :meth:`phase` gives a phase's peak."""

    def __init__(self, interval: float = 0.02) -> None:
        import psutil

        self.process = psutil.Process()
        self.interval = interval
        self.peak = self.now()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def now(self) -> int:
        return int(self.process.memory_info().rss)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.now())
            time.sleep(self.interval)

    @contextmanager
    def phase(self, record: dict[str, Any], name: str) -> Iterator[None]:
        """Record ``{name}_rss_before``, ``{name}_rss_peak`` and ``{name}_seconds`` into ``record``."""
        record[f"{name}_rss_before"] = self.peak = self.now()
        start = time.perf_counter()
        yield
        record[f"{name}_seconds"] = time.perf_counter() - start
        record[f"{name}_rss_peak"] = max(self.peak, self.now())

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def synchronize(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_peak(device: str, dtype_name: str, size: int = 2048, seconds: float = 1.5) -> float:
    """FLOP/s of repeated size × size matrix products (the approach of ``bench_encoders.matmul_peak``)."""
    import torch

    dtype = getattr(torch, dtype_name)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    synchronize(device)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        n += 1
    synchronize(device)
    return 2 * size**3 * n / (time.perf_counter() - start)


def max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ------------------------------------------------------------------------------------------ cohorts
def synthetic_st_sample(
    seed: int, *, spots: int, cells: tuple[int, int], genes: int, features: int = 128, k_pheno: int = 8
) -> Any:
    """One ST sample like the demo's: spots 100 µm apart, cells within 27.5 µm of the spot centre.

    Counts follow a hidden read-out of the cells' features (as in ``tests/test_train.py::synthetic_sample``),
    phenotypes are the nearest of ``k_pheno`` fixed centroids.
    """
    from bitro.features.graph import knn_graphs
    from bitro.folds.samples import SampleData

    rng = np.random.default_rng(seed)
    sizes = rng.integers(cells[0], cells[1] + 1, size=spots)
    unit_id = np.repeat(np.arange(spots), sizes)
    side = math.ceil(math.sqrt(spots))
    centres = np.column_stack([np.arange(spots) % side, np.arange(spots) // side]) * 100.0
    angle = rng.uniform(0, 2 * np.pi, len(unit_id))
    radius = 27.5 * np.sqrt(rng.uniform(0, 1, len(unit_id)))
    xy = centres[unit_id] + np.column_stack([np.cos(angle), np.sin(angle)]) * radius[:, None]
    graph = knn_graphs(xy[:, 0], xy[:, 1], unit_id, k=8)
    rows = graph.cell_index.astype(np.int64)
    x = rng.standard_normal((len(unit_id), features), dtype=np.float32)
    fixed = np.random.default_rng(99)
    weights = fixed.normal(size=(features, genes)) / math.sqrt(features)
    centroids = fixed.normal(size=(k_pheno, features)).astype(np.float32)
    rate = np.exp(0.5 + 0.8 * np.tanh(x @ weights))
    per_unit = np.zeros((spots, genes))
    np.add.at(per_unit, unit_id, rate)
    unit_of_cell = np.repeat(np.arange(len(graph.unit_ids)), np.diff(graph.cell_offsets))
    return SampleData(
        sample_id=f"SYN{seed:02d}",
        level="st",
        features=x[rows],
        offsets_um=(xy[rows] - centres[graph.unit_ids][unit_of_cell]).astype(np.float32),
        phenotype=np.argmax(x[rows] @ centroids.T, axis=1).astype(np.int64),
        cell_rows=rows,
        graph=graph,
        unit_xy_um=centres[graph.unit_ids],
        targets=rng.poisson(per_unit).astype(np.float64),
        space="counts",
    )


def load_cohort(spec: dict[str, Any]) -> tuple[list[Any], dict[str, list[Any]], list[str], str]:
    """(samples, bags by role, genes, description) of the demo fold or a synthetic cohort."""
    from bitro.folds.bags import make_bags

    if spec["cohort"] == "synthetic":
        genes = [f"G{i}" for i in range(spec["genes"])]
        roles = {"train": [0, 1], "validation": [2, 3]}
        samples = [
            synthetic_st_sample(
                i,
                spots=spec["spots"] if i < 2 else max(spec["spots"] // 4, 8),
                cells=tuple(spec["spot_cells"]),
                genes=len(genes),
            )
            for i in range(4)
        ]
        bags = {role: [b for i in idx for b in make_bags(samples[i], i)] for role, idx in roles.items()}
        return samples, bags, genes, "synthetic"
    from bitro.features.phenotype import read_phenotypes
    from bitro.folds.inputs import load_fold
    from bitro.folds.splits import read_folds
    from bitro.genes.selection import read_gene_list

    root = Path(spec["cohort"])
    fold = read_folds(root / "folds.json").fold(spec["fold"])
    genes = read_gene_list(root / "genes.txt")
    phenotypes = read_phenotypes(root / spec["fold"] / "phenotypes.npz")
    inputs = load_fold(root / "samples", fold, genes, phenotypes=phenotypes)
    return inputs.samples, inputs.bags, genes, f"{root.name} {spec['fold']}"


def training_flops(bags: list[Any], samples: list[Any], config: Any, max_units: int) -> tuple[float, int]:
    """Forward + backward FLOPs (3 × forward) and cells of one epoch over ``bags``."""
    from bitro.model.cost import flops_per_cell

    total, cells = 0.0, 0
    k = int(samples[0].graph.k)
    for bag in bags:
        sizes = np.diff(samples[bag.sample].graph.cell_offsets)[bag.units].astype(np.float64)
        share = min(1.0, max_units / len(sizes))  # bulk bags: a random subset of max_units units per step
        n = float(sizes.sum()) * share
        per_unit = float((sizes**2).sum() / sizes.sum())  # attention cost per cell grows with its unit's size
        total += n * flops_per_cell(config, cells_per_unit=per_unit, cells_per_bag=n, k=k)["total"]
        cells += round(n)
    return 3.0 * total, cells


# ------------------------------------------------------------------------------------------ children
def child_train(spec: dict[str, Any]) -> dict[str, Any]:
    """Train with ``fit`` for warm-up + ``epochs`` epochs at one batch size; timings of the timed epochs."""
    import torch

    import bitro.train.fit as fit_module
    from bitro.genes.normalise import TargetTransform
    from bitro.model.bitro import BiTro, BiTroConfig
    from bitro.train.config import TrainConfig
    from bitro.train.fit import fit

    device = spec["device"]
    sampler = RssSampler()
    out: dict[str, Any] = {"threads": torch.get_num_threads()}
    samples, bags, genes, name = load_cohort(spec)
    train, validation = bags["train"], bags["validation"]
    rows = np.stack([samples[b.sample].targets[b.target_row] for b in train])
    transform = TargetTransform.fit(rows, genes, zscore=True, space=samples[0].space)
    config = BiTroConfig(n_genes=len(genes), in_dim=samples[0].features.shape[1], output="identity")
    torch.manual_seed(0)
    model = BiTro(config)
    epochs = spec["epochs"] + 1  # the first is warm-up
    steps_per_epoch = -(-len(train) // spec["batch"])
    train_config = TrainConfig(
        lr=1e-3,
        max_steps=epochs * steps_per_epoch,
        patience_steps=(epochs + 1) * steps_per_epoch,
        eval_every_steps=1,  # a check after every epoch, timed apart from the steps
        batch_bags=spec["batch"],
        lambda_cluster=0.1,
        max_units_per_bag=64,
    )
    flops, cells = training_flops(train, samples, config, train_config.max_units_per_bag)
    sizes = [int(np.diff(samples[b.sample].graph.cell_offsets)[b.units].sum()) for b in train]
    dtype = "bfloat16" if device.startswith("cuda") and train_config.bf16 else "float32"
    out |= {
        "cohort": name,
        "batch": spec["batch"],
        "train_spots": len(train),
        "validation_spots": len(validation),
        "train_cells": cells,
        "mean_cells_per_spot": float(np.mean(sizes)),
        "genes": len(genes),
        "parameters": sum(p.numel() for p in model.parameters()),
        "flops_per_epoch": flops,
        "peak_dtype": dtype,
        "matmul_peak": matmul_peak(device, dtype, seconds=spec.get("peak_seconds", 1.5)),
    }

    # Time fit's own pieces by wrapping the names it looks up at call time.
    timers: dict[str, list[float]] = {"evaluate": [], "save": [], "collate": []}
    in_eval = [False]

    def timed(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if name == "collate" and in_eval[0]:  # the validation pass's batches are not training steps
                return fn(*args, **kwargs)
            in_eval[0] = name == "evaluate"
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                synchronize(device)
                timers[name].append(time.perf_counter() - start)
                if name == "evaluate":
                    in_eval[0] = False

        return wrapper

    originals = {n: getattr(fit_module, n) for n in ("evaluate_loss", "save_state", "collate")}
    fit_module.evaluate_loss = timed("evaluate", originals["evaluate_loss"])
    fit_module.save_state = timed("save", originals["save_state"])
    fit_module.collate = timed("collate", originals["collate"])
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    steps_per_epoch = math.ceil(len(train) / spec["batch"])
    try:
        with tempfile.TemporaryDirectory() as folder, sampler.phase(out, "fit"):
            result = fit(
                model,
                train,
                validation,
                samples,
                transform,
                train_config,
                folder,
                device=device,
                progress=False,
            )
    finally:
        for n, fn in originals.items():
            setattr(fit_module, n, fn)
    sampler.stop()
    timed_epochs = result.history[1:]
    evaluate = timers["evaluate"][1:]
    train_seconds = sum(r["seconds"] for r in timed_epochs) - sum(evaluate)
    collate_seconds = sum(timers["collate"][steps_per_epoch:])
    fit_seconds = sum(r["seconds"] for r in timed_epochs) + sum(timers["save"][1:])
    n_epochs = len(timed_epochs)
    out |= {
        "epochs_timed": n_epochs,
        "steps_per_epoch": steps_per_epoch,
        "train_seconds_per_epoch": train_seconds / n_epochs,
        "collate_seconds_per_epoch": collate_seconds / n_epochs,
        "validation_seconds_per_epoch": sum(evaluate) / n_epochs,
        "save_seconds_per_epoch": sum(timers["save"][1:]) / n_epochs,
        "fit_seconds_per_epoch": fit_seconds / n_epochs,
        "spots_per_s": len(train) * n_epochs / train_seconds,
        "cells_per_s": cells * n_epochs / train_seconds,
        "fit_spots_per_s": len(train) * n_epochs / fit_seconds,
        "flop_rate": flops * n_epochs / train_seconds,
        "log_bags_per_s": float(np.mean([r["bags_per_s"] for r in timed_epochs])),
        "final_train_gene_loss": timed_epochs[-1]["train_gene"],
        "max_rss": max_rss_bytes(),
        "gpu_peak": torch.cuda.max_memory_allocated() if device.startswith("cuda") else None,
    }
    return out


def synthetic_bulk_sample(cells: int, genes: int, seed: int = 0, cells_per_unit: float = 60.0) -> Any:
    """A slide of ``cells`` cells in 55 µm patches (~``cells_per_unit`` each) as a bulk ``SampleData``."""
    from bitro.features.graph import knn_graphs
    from bitro.folds.samples import SampleData

    rng = np.random.default_rng(seed)
    n_units = max(1, round(cells / cells_per_unit))
    side = math.ceil(math.sqrt(n_units))
    unit_id = np.sort(rng.integers(0, n_units, cells))
    corner = np.column_stack([unit_id % side, unit_id // side]).astype(np.float64) * 55.0
    xy = corner + rng.uniform(0, 55.0, (cells, 2))
    graph = knn_graphs(xy[:, 0], xy[:, 1], unit_id, k=8)
    del corner
    rows = graph.cell_index.astype(np.int64)
    centres = np.column_stack([graph.unit_ids % side, graph.unit_ids // side]) * 55.0 + 27.5
    unit_of_cell = np.repeat(np.arange(len(graph.unit_ids)), np.diff(graph.cell_offsets))
    features = rng.standard_normal((cells, 128), dtype=np.float32)
    return SampleData(
        sample_id=f"BULK{cells}",
        level="bulk",
        features=features[rows] if not np.array_equal(rows, np.arange(cells)) else features,
        offsets_um=(xy[rows] - centres[unit_of_cell]).astype(np.float32),
        phenotype=rng.integers(0, 8, cells).astype(np.int64),
        cell_rows=rows,
        graph=graph,
        unit_xy_um=centres,
        targets=rng.gamma(2.0, 50.0, (1, genes)),
        space="tpm",
    )


def _bulk_model(genes: int, device: str, slide_context: str = "none") -> Any:
    import torch

    from bitro.model.bitro import BiTro, BiTroConfig

    torch.manual_seed(0)
    config = BiTroConfig(n_genes=genes, in_dim=128, slide_context=slide_context)  # type: ignore[arg-type]
    return BiTro(config).eval().to(device)


def child_bulk(spec: dict[str, Any]) -> dict[str, Any]:
    """Build the slide, predict it with ``predict_bags`` (streamed), then the pseudo-cell pass."""
    import torch

    import bitro.folds.bags as bags_module
    from bitro.folds.bags import make_bags, model_bag, predict_bags
    from bitro.model.batch import iter_chunks
    from bitro.model.streaming import predict_streaming, stream_pseudo_cells

    if spec.get("chunk_cells"):  # predict_bags reads the module's constant at call time
        bags_module.STREAM_CELLS = int(spec["chunk_cells"])
    chunk = bags_module.STREAM_CELLS
    device = spec["device"]
    sampler = RssSampler()
    out: dict[str, Any] = {"threads": torch.get_num_threads(), "chunk_cells": chunk}
    with sampler.phase(out, "build"):
        sample = synthetic_bulk_sample(spec["cells"], spec["genes"])
    (bag,) = make_bags(sample, 0)
    sizes = np.diff(sample.graph.cell_offsets)
    out |= {
        "cells": int(sizes.sum()),
        "units": len(sizes),
        "mean_cells_per_unit": float(sizes.mean()),
        "max_cells_per_unit": int(sizes.max()),
        "edges": int(sample.graph.edges.shape[1]),
        "genes": spec["genes"],
    }
    model = _bulk_model(spec["genes"], device, spec.get("slide_context", "none"))
    out["slide_context"] = spec.get("slide_context", "none")
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    with sampler.phase(out, "predict"):
        prediction = predict_bags(model, [bag], [sample], device=device)
        synchronize(device)
    out["gpu_peak"] = torch.cuda.max_memory_allocated() if device.startswith("cuda") else None
    if spec["pseudo"]:
        piece, _ = model_bag(bag, [sample])
        with sampler.phase(out, "first_pass"):
            streamed = predict_streaming(model, iter_chunks(piece, chunk))
        amounts = torch.expm1(streamed.prediction.float().clamp(max=10.0)).clamp_min(0.0)
        total = torch.zeros_like(amounts, dtype=torch.float64)
        with sampler.phase(out, "pseudo"):
            for cells in stream_pseudo_cells(model, iter_chunks(piece, chunk), streamed.state, amounts):
                total += cells.sum(dim=0).double()
            synchronize(device)
        out["pseudo_sum_rel_error"] = float(((total - amounts) / amounts.clamp_min(1e-12)).abs().max())
        out["prediction_matches_second_run"] = float(
            np.abs(streamed.prediction.float().cpu().numpy() - prediction[0]).max()
        )
    sampler.stop()
    out["max_rss"] = max_rss_bytes()
    return out


def child_full(spec: dict[str, Any]) -> dict[str, Any]:
    """The non-streamed forward on the whole (smaller) slide as one batch, and agreement with streaming."""
    import torch

    from bitro.folds.bags import make_bags, model_bag, predict_bags
    from bitro.model.batch import CellBatch

    device = spec["device"]
    sampler = RssSampler()
    out: dict[str, Any] = {"threads": torch.get_num_threads()}
    sample = synthetic_bulk_sample(spec["cells"], spec["genes"])
    (bag,) = make_bags(sample, 0)
    out["cells"] = int(sample.features.shape[0])
    model = _bulk_model(spec["genes"], device, spec.get("slide_context", "none"))
    piece, _ = model_bag(bag, [sample])
    batch = CellBatch.collate([piece]).to(device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        gpu_before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    with sampler.phase(out, "forward"), torch.no_grad():
        full = model(batch).prediction.float().cpu().numpy()
        synchronize(device)
    if device.startswith("cuda"):
        out["gpu_working"] = torch.cuda.max_memory_allocated() - gpu_before
    del batch
    streamed = predict_bags(model, [bag], [sample], device=device)[0]
    out["max_abs_difference"] = float(np.abs(full[0] - streamed).max())
    sampler.stop()
    return out


CHILDREN: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "train": child_train,
    "bulk": child_bulk,
    "full": child_full,
}


def run_child(spec: dict[str, Any], *, script: str = __file__) -> dict[str, Any]:
    """Run one part of ``script`` (this benchmark, or another with the same ``--child`` protocol) in a
    fresh interpreter; its result is the last ``RESULT`` line of its output."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, script, "--child", json.dumps(spec)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=os.environ | {"PYTHONWARNINGS": "ignore"},
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT)]
    if done.returncode or not lines:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"child {spec} failed with exit status {done.returncode}")
    result = json.loads(lines[-1][len(RESULT) :])
    result["child_seconds"] = time.perf_counter() - started
    return result


# ------------------------------------------------------------------------------------------ report
def mib(value: float | None) -> str:
    return "—" if value is None else f"{value / MIB:,.0f} MiB"


def train_table(runs: list[dict[str, Any]], baseline: dict[str, Any], device: str) -> str:
    gpu = device.startswith("cuda")
    head = [
        "batch (bags)",
        "steps/epoch",
        "spots/s",
        "cells/s",
        "× batch 1",
        "collate share",
        "fit spots/s (with validation + checkpoint)",
        "GFLOP/s",
        "fraction of matmul peak",
        "peak RSS",
    ] + (["GPU peak"] if gpu else [])
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in [baseline, *runs]:
        cells = [
            str(r["batch"]) + (" (baseline)" if r is baseline else ""),
            str(r["steps_per_epoch"]),
            f"{r['spots_per_s']:,.0f}",
            f"{r['cells_per_s']:,.0f}",
            f"{r['spots_per_s'] / baseline['spots_per_s']:.1f}×",
            f"{r['collate_seconds_per_epoch'] / r['train_seconds_per_epoch']:.2f}",
            f"{r['fit_spots_per_s']:,.0f}",
            f"{r['flop_rate'] / 1e9:.1f}",
            f"{r['flop_rate'] / r['matmul_peak']:.3f}",
            mib(r["fit_rss_peak"]),
        ] + ([mib(r["gpu_peak"])] if gpu else [])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def train_notes(runs: list[dict[str, Any]]) -> str:
    r = runs[0]
    peaks = [x["matmul_peak"] / 1e12 for x in runs]
    return (
        f"cohort {r['cohort']}: {r['train_spots']} training spots ({r['train_cells']:,} cells, "
        f"{r['mean_cells_per_spot']:.1f} cells/spot), {r['validation_spots']} validation spots, "
        f"{r['genes']} genes, "
        f"{r['parameters']:,} parameters; {r['epochs_timed']} timed epoch(s) after 1 warm-up; "
        f"{r['flops_per_epoch'] / r['train_spots'] / 1e6:.1f} MFLOP per spot (fwd + bwd); "
        f"matmul peak ({r['peak_dtype']}, 2048², same child) {min(peaks):.3f}–{max(peaks):.3f} TFLOP/s; "
        f"torch threads {r['threads']}; RSS before fit {mib(r['fit_rss_before'])}; "
        f"per epoch at batch {r['batch']}: train {r['train_seconds_per_epoch']:.2f} s, validation "
        f"{r['validation_seconds_per_epoch']:.2f} s, checkpoint {r['save_seconds_per_epoch']:.3f} s; "
        f"train_log.csv bags_per_s {r['log_bags_per_s']:,.0f} (its seconds include validation)"
    )


def bulk_table(stream: dict[str, Any], full: dict[str, Any], device: str) -> str:
    scale = stream["cells"] / full["cells"]
    working = full["forward_rss_peak"] - full["forward_rss_before"]
    estimate = stream["predict_rss_before"] + scale * working
    rows: list[tuple[str, str]] = [
        (
            "slide",
            f"{stream['cells']:,} cells, {stream['units']:,} units of "
            f"{stream['mean_cells_per_unit']:.1f} cells "
            f"(max {stream['max_cells_per_unit']}), {stream['edges']:,} edges, {stream['genes']} genes",
        ),
        (
            "building it (features, kNN graphs): seconds, peak RSS",
            f"{stream['build_seconds']:.1f} s, {mib(stream['build_rss_peak'])}",
        ),
        ("RSS before prediction (slide arrays + model)", mib(stream["predict_rss_before"])),
        (
            f"`predict_bags`, streamed ({stream['chunk_cells']:,}-cell chunks): seconds",
            f"{stream['predict_seconds']:.1f} s",
        ),
        ("cells/s", f"{stream['cells'] / stream['predict_seconds']:,.0f}"),
        (
            "**peak RSS during prediction**",
            f"**{mib(stream['predict_rss_peak'])} = "
            f"{stream['predict_rss_peak'] / TARGET_BYTES:.2f} of the 4 GiB target**",
        ),
        (
            "prediction working memory (peak − before)",
            mib(stream["predict_rss_peak"] - stream["predict_rss_before"]),
        ),
    ]
    if device.startswith("cuda"):
        rows.append(("GPU peak allocated during prediction", mib(stream["gpu_peak"])))
    if "pseudo_seconds" in stream:
        rows += [
            (
                "pass one again (`predict_streaming`, softmax statistics): seconds",
                f"{stream['first_pass_seconds']:.1f} s",
            ),
            (
                "pass two (`stream_pseudo_cells`, every cell's G profiles): seconds, peak RSS",
                f"{stream['pseudo_seconds']:.1f} s, {mib(stream['pseudo_rss_peak'])}",
            ),
            (
                "pseudo-cells summed per gene vs the prediction: max relative error",
                f"{stream['pseudo_sum_rel_error']:.1e}",
            ),
            (
                "`predict_bags` vs this `predict_streaming`: max \\|difference\\|",
                f"{stream['prediction_matches_second_run']:.1e}",
            ),
        ]
    rows += [
        (
            f"baseline, full forward on a {full['cells']:,}-cell slide: seconds, working memory",
            f"{full['forward_seconds']:.1f} s, {mib(working)}",
        ),
        ("streamed vs full forward on that slide: max \\|difference\\|", f"{full['max_abs_difference']:.1e}"),
        (
            f"full forward at {stream['cells']:,} cells, estimated (before + {scale:.0f} × working)",
            f"{mib(estimate)} = {estimate / TARGET_BYTES:.2f} of 4 GiB",
        ),
        ("of which the (N, G) attention alone (fp32)", mib(4.0 * stream["cells"] * stream["genes"])),
        ("**full / streamed peak memory ratio**", f"**{estimate / stream['predict_rss_peak']:.1f}×**"),
    ]
    if device.startswith("cuda") and full.get("gpu_working") is not None:
        rows.append(("full forward GPU working memory, scaled", mib(scale * full["gpu_working"])))
    lines = ["| figure | value |", "| --- | --- |"] + [f"| {a} | {b} |" for a, b in rows]
    return "\n".join(lines)


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(device)
    return f"CPU ({os.cpu_count()} cores)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--synthetic", action="store_true", help="train on the synthetic cohort only")
    parser.add_argument("--cohort", type=Path, default=DEMO)
    parser.add_argument("--fold", default="fold0")
    parser.add_argument("--batch-sizes", default="16,32,64")
    parser.add_argument("--baseline-batch", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=None, help="timed epochs after one warm-up")
    parser.add_argument("--spots", type=int, default=None, help="synthetic: spots per training sample")
    parser.add_argument("--spot-cells", default="4,24", help="synthetic: min,max cells per spot")
    parser.add_argument("--genes", type=int, default=50, help="synthetic cohort genes")
    parser.add_argument("--bulk-cells", type=int, default=None)
    parser.add_argument("--bulk-genes", type=int, default=250)
    parser.add_argument("--no-pseudo", action="store_true", help="skip the pseudo-cell pass")
    parser.add_argument(
        "--chunk-cells",
        type=int,
        default=0,
        help="cells per streamed chunk (0: bitro.folds.bags.STREAM_CELLS)",
    )
    parser.add_argument(
        "--slide-context",
        default="none",
        choices=("none", "patch_tokens"),
        help="bulk: the model's slide_context (BiTroConfig)",
    )
    parser.add_argument("--parts", default="train,bulk")
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads in each child (0: torch's default)"
    )
    parser.add_argument("--out", type=Path, default=None, help="also write every figure to this JSON file")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        if spec.get("threads"):
            import torch

            torch.set_num_threads(int(spec["threads"]))
        print(RESULT + json.dumps(CHILDREN[spec.pop("part")](spec)), flush=True)
        return

    gpu = args.device.startswith("cuda")
    epochs = args.epochs or (1 if args.quick else 3)
    parts = set(args.parts.split(","))
    record: dict[str, Any] = {"device": device_name(args.device), "argv": sys.argv[1:]}
    print(f"# bench_train on {device_name(args.device)}, {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}\n")
    if "train" in parts:
        cohorts: list[dict[str, Any]] = []
        demo = (args.cohort / "folds.json").is_file()
        if demo and not args.synthetic:
            cohorts.append({"cohort": str(args.cohort), "fold": args.fold})
        if args.synthetic or not demo or not args.quick:
            spots = args.spots or (200 if args.quick else 800)
            cells = [int(v) for v in args.spot_cells.split(",")]
            cohorts.append({"cohort": "synthetic", "spots": spots, "spot_cells": cells, "genes": args.genes})
        for cohort in cohorts:
            base = {
                "part": "train",
                "device": args.device,
                "epochs": epochs,
                "threads": args.threads,
            } | cohort
            baseline = run_child(base | {"batch": args.baseline_batch, "epochs": 1})
            runs = [run_child(base | {"batch": int(b)}) for b in args.batch_sizes.split(",")]
            record.setdefault("train", []).append({"baseline": baseline, "runs": runs})
            print(f"## Training throughput, {runs[0]['cohort']} ({args.device})\n")
            print(train_table(runs, baseline, args.device))
            print("\n" + train_notes(runs) + "\n", flush=True)
    if "bulk" in parts:
        cells = args.bulk_cells or (1_000_000 if (gpu or not args.quick) else 200_000)
        spec = {
            "device": args.device,
            "genes": args.bulk_genes,
            "threads": args.threads,
            "slide_context": args.slide_context,
        }
        stream = run_child(
            spec
            | {"part": "bulk", "cells": cells, "pseudo": not args.no_pseudo, "chunk_cells": args.chunk_cells}
        )
        full = run_child(spec | {"part": "full", "cells": max(cells // 10, 1000)})
        record["bulk"] = {"streamed": stream, "full": full}
        print(f"## Bulk prediction of a {stream['cells']:,}-cell slide ({args.device})\n")
        print(bulk_table(stream, full, args.device))
        print(
            f"\nchild wall seconds: streamed {stream['child_seconds']:.0f}, full {full['child_seconds']:.0f}"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
