"""Training and prediction throughput of bitro's vectorised batches against the per-spot loop.

The setting of issue 19: synthetic ST spots (``bench_train.synthetic_st_sample``: 4–20 cells per spot,
128-d features, kNN graphs with k = 8 within spots, 50 genes), 16 spots per batch, the library's default
model (``BiTroConfig(n_genes=50)``: D = 128, ``pooled_norm`` on) and the training settings of the demo
(lr 1e-3, λ = 0.1). Two ways of applying the same model, each with its own copy of the same initial
weights and its own Adam:

- **per spot** (the baseline): each spot of a batch is collated and passed through the whole model on its
  own (PyG's sparse ``GATConv``, projection, position codes, Transformer, gene-query MIL and readout, no
  padding: ``per_spot_encode``), the batch's
  loss is computed from the spots' outputs gathered together (gene MSE + λ · cluster loss, as ``fit``
  computes it), then one backward, clipping and one Adam step per batch. This is how the authors' code
  applies the model. Prediction: ``predict_bags(..., batch_bags=1)``, one spot per forward. (With
  ``pooled_norm`` the running moments then move once per spot instead of once per batch: the same
  arithmetic, a slightly different update.)
- **vectorised** (bitro): ``bitro.train.fit.train_step``, the step ``fit`` runs (one collated batch of 16
  spots, padded attention within spots). Prediction: ``predict_bags(..., batch_bags=16)``.

The two paths run in interleaved rounds (their order alternating from round to round), so that a ratio
measured in one round saw the same machine load; reported are the median rate over rounds and its range.
Before timing, the two prediction paths are checked to give the same outputs (eval mode).

After the rounds, the matrix products' own time in vectorised steps (``matrix_products``) is set against
the per-spot loop's step: the ratio a step would reach if it spent nothing outside its matrix products.

``--batch`` changes the spots per batch (16 in the issue's setting). ``--profile`` instead profiles
vectorised training steps with ``torch.profiler`` and prints the time of each phase (collation, forward by
block, loss, backward, clipping, Adam) and the busiest operators. ``--compile`` adds a third path, the
vectorised step with the model wrapped in ``torch.compile`` (compilation time reported separately).

Usage: ``.venv/bin/python benchmarks/bench_throughput.py [--quick] [--threads 1] [--rounds 7] [--batches
8] [--batch 16] [--profile] [--compile] [--out results.json]``. Run it with ``--threads 1`` on a shared
machine (``bench_train.py`` explains why).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import synthetic_st_sample

#: Spots per batch in the issue's setting (``--batch`` to see how the ratio grows with it).
BATCH = 16
GENES = 50
CELLS = (4, 20)


class Setting:
    """The spots, batches, target transform and training settings shared by every path."""

    def __init__(self, n_batches: int, seed: int = 0, batch: int = BATCH) -> None:
        from bitro.folds.bags import make_bags
        from bitro.genes.normalise import TargetTransform
        from bitro.train.config import TrainConfig
        from bitro.train.fit import CountSpace

        self.batch = batch
        sample = synthetic_st_sample(seed, spots=n_batches * batch, cells=CELLS, genes=GENES)
        self.samples = [sample]
        bags = make_bags(sample, 0)
        self.batches = [bags[i : i + batch] for i in range(0, len(bags), batch)]
        self.cells = int(sample.features.shape[0])
        self.spots = len(bags)
        genes = [f"G{i}" for i in range(GENES)]
        self.transform = TargetTransform.fit(sample.targets, genes, zscore=True, space="counts")
        self.counts = CountSpace(self.transform, "cpu")
        self.config = TrainConfig(lr=1e-3, lambda_cluster=0.1, max_units_per_bag=64, batch_bags=batch)


class Runner:
    """One way of applying the model: its own copy of the weights and optimiser."""

    def __init__(self, name: str, model: Any, setting: Setting) -> None:
        import torch

        self.name = name
        self.model = model
        self.setting = setting
        self.trainable = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(self.trainable, lr=setting.config.lr)  # torch's defaults

    def train_batch(self, bags: list[Any]) -> float:
        raise NotImplementedError

    def predict_batch(self, bags: list[Any]) -> np.ndarray:
        raise NotImplementedError


class Vectorised(Runner):
    def __init__(self, name: str, model: Any, setting: Setting, forward: Any = None) -> None:
        from bitro.train.fit import adam

        super().__init__(name, model, setting)
        self.optimizer = adam(self.trainable, setting.config)  # fit's optimiser
        # ``forward``: a compiled wrapper of ``model`` (the optimiser still holds the model's parameters).
        self.forward = forward

    def train_batch(self, bags: list[Any]) -> float:
        from bitro.train.fit import train_step

        s = self.setting
        self.model.train()
        step_model = self.forward if self.forward is not None else self.model
        parts = train_step(
            step_model,
            self.optimizer,
            self.trainable,
            bags,
            s.samples,
            s.transform,
            s.counts,
            s.config,
            device="cpu",
            rng=None,
        )
        return parts["total"]

    def predict_batch(self, bags: list[Any]) -> np.ndarray:
        from bitro.folds.bags import predict_bags

        model = self.forward if self.forward is not None else self.model
        return predict_bags(model, bags, self.setting.samples, batch_bags=self.setting.batch)


def per_spot_encode(model: Any, batch: Any) -> Any:
    """``BiTro.encode`` in the authors' form: PyG's ``GATConv`` on the spot's edge list (no dense form), then
    the Transformer (one spot: no padding)."""
    h = model.gat(batch.features, batch.edge_index)
    return model.transformer(h, batch.offsets_um, batch.unit_ptr)


class PerSpot(Runner):
    def __init__(self, name: str, model: Any, setting: Setting) -> None:
        super().__init__(name, model, setting)
        model.encode = lambda batch: per_spot_encode(model, batch)

    def train_batch(self, bags: list[Any]) -> float:
        import torch

        from bitro.folds.bags import collate
        from bitro.model.losses import cluster_loss, gene_loss
        from bitro.model.pseudocells import pseudo_cells

        s = self.setting
        self.model.train()
        predictions, attentions, phenotypes, raws, sizes = [], [], [], [], []
        for bag in bags:
            batch, raw, _ = collate([bag], s.samples, max_units=s.config.max_units_per_bag)
            out = self.model(batch)
            predictions.append(out.prediction)
            attentions.append(out.attention)
            phenotypes.append(batch.phenotype)
            raws.append(raw)
            sizes.append(batch.n_cells)
        prediction = torch.cat(predictions).float()
        target = torch.as_tensor(s.transform.forward(np.concatenate(raws)), dtype=torch.float32)
        cell_bag = torch.repeat_interleave(torch.arange(len(bags)), torch.tensor(sizes))
        cells = pseudo_cells(torch.cat(attentions).float(), s.counts(prediction), cell_bag)
        cluster = cluster_loss(cells, torch.cat(phenotypes), gene_scale=s.counts.gene_scale)
        loss = gene_loss(prediction, target) + s.config.lambda_cluster * cluster
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.trainable, s.config.clip_norm)
        self.optimizer.step()
        return float(loss.detach())

    def predict_batch(self, bags: list[Any]) -> np.ndarray:
        from bitro.folds.bags import predict_bags

        return predict_bags(self.model, bags, self.setting.samples, batch_bags=1)


def make_model(seed: int = 0) -> Any:
    import torch

    from bitro.model.bitro import BiTro, BiTroConfig

    torch.manual_seed(seed)
    return BiTro(BiTroConfig(n_genes=GENES, in_dim=128))


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(paths: list[Runner], setting: Setting, rounds: int) -> dict[str, dict[str, list[float]]]:
    """Spots/s of training and prediction of every path in each of ``rounds`` interleaved rounds."""
    rates: dict[str, dict[str, list[float]]] = {p.name: {"train": [], "predict": []} for p in paths}
    batches = setting.batches
    for round_ in range(rounds):
        order = paths if round_ % 2 == 0 else paths[::-1]
        for path in order:
            seconds = timed(lambda p=path: [p.train_batch(b) for b in batches])
            rates[path.name]["train"].append(setting.spots / seconds)
        for path in order:
            seconds = timed(lambda p=path: [p.predict_batch(b) for b in batches])
            rates[path.name]["predict"].append(setting.spots / seconds)
        line = ", ".join(
            f"{p.name} train {rates[p.name]['train'][-1]:.0f} predict {rates[p.name]['predict'][-1]:.0f}"
            for p in paths
        )
        print(f"round {round_ + 1}/{rounds}: {line} spots/s", file=sys.stderr, flush=True)
    return rates


def table(rates: dict[str, dict[str, list[float]]], baseline: str) -> str:
    head = "| path | training spots/s | × per spot | prediction spots/s | × per spot |"
    lines = [head, "| --- | --- | --- | --- | --- |"]
    base = {kind: statistics.median(rates[baseline][kind]) for kind in ("train", "predict")}
    for name, r in rates.items():
        cells = [name]
        for kind in ("train", "predict"):
            median = statistics.median(r[kind])
            cells.append(f"{median:,.0f} ({min(r[kind]):,.0f}–{max(r[kind]):,.0f})")
            # The ratio of each round's rates (both paths saw the same load), median over rounds.
            ratios = [a / b for a, b in zip(r[kind], rates[baseline][kind], strict=True)]
            cells.append(f"{statistics.median(ratios):.2f}× (× {median / base[kind]:.2f} of medians)")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the matrix products' share
#: The operators of a step that do the model's matrix products (linear layers, attention, GAT).
PRODUCTS = ("aten::mm", "aten::addmm", "aten::bmm")


def matrix_products(setting: Setting, steps: int = 8) -> dict[str, float]:
    """The matrix products of vectorised training steps: their own time within the steps (the profiler's
    self time of mm, addmm and bmm), what a step would cost if everything else (elementwise work,
    indexing, dropout masks, the optimiser, Python) were free. The per-spot loop's step time over it
    bounds the ratio that any implementation doing these products with this BLAS can reach.

    Returns ms, GFLOP (``torch.utils.flop_counter``) and calls per step.
    """
    from torch.profiler import profile as torch_profile
    from torch.utils.flop_counter import FlopCounterMode

    path = Vectorised("vectorised", make_model(), setting)
    batches = [setting.batches[i % len(setting.batches)] for i in range(steps)]
    path.train_batch(batches[0])
    with torch_profile() as prof:
        for bags in batches:
            path.train_batch(bags)
    with FlopCounterMode(display=False) as counter:
        for bags in batches:
            path.train_batch(bags)
    products = [e for e in prof.key_averages() if e.key in PRODUCTS]
    return {
        "ms_per_step": sum(e.self_cpu_time_total for e in products) / steps / 1e3,
        "gflop_per_step": counter.get_total_flops() / steps / 1e9,
        "calls_per_step": sum(e.count for e in products) / steps,
    }


# ------------------------------------------------------------------------------------------ profile
@contextmanager
def labelled_blocks(model: Any) -> Iterator[None]:
    """Label the forward of the model's blocks in the profile (``forward:gat`` etc.)."""
    import torch

    handles: list[Any] = []
    open_: dict[str, Any] = {}

    def enter(name: str) -> Callable[..., None]:
        def hook(*_: Any) -> None:
            open_[name] = torch.profiler.record_function(f"forward:{name}")
            open_[name].__enter__()

        return hook

    def leave(name: str) -> Callable[..., None]:
        def hook(*_: Any) -> None:
            open_.pop(name).__exit__(None, None, None)

        return hook

    for name in ("gat", "transformer", "mil"):
        block = getattr(model, name)
        handles.append(block.register_forward_pre_hook(enter(name)))
        handles.append(block.register_forward_hook(leave(name)))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def profiled_step(path: Vectorised, bags: list[Any]) -> None:
    """``bitro.train.fit.train_step`` spelled out with a profiler label on each phase."""
    import torch
    from torch.profiler import record_function

    from bitro.folds.bags import collate
    from bitro.model.losses import cluster_loss, gene_loss
    from bitro.model.pseudocells import pseudo_cells

    s = path.setting
    path.model.train()
    with record_function("phase:collate"):
        batch, raw, _ = collate(bags, s.samples, max_units=s.config.max_units_per_bag)
        target = torch.as_tensor(s.transform.forward(raw), dtype=torch.float32)
    with record_function("phase:forward"):
        out = path.model(batch)
    with record_function("phase:loss"):
        prediction = out.prediction.float()
        cells = pseudo_cells(out.attention.float(), s.counts(prediction), batch.cell_bag)
        loss = gene_loss(prediction, target) + s.config.lambda_cluster * cluster_loss(
            cells, batch.phenotype, gene_scale=s.counts.gene_scale
        )
        float(loss.detach())
    with record_function("phase:backward"):
        path.optimizer.zero_grad(set_to_none=True)
        loss.backward()
    with record_function("phase:clip"):
        torch.nn.utils.clip_grad_norm_(path.trainable, s.config.clip_norm, foreach=True)
    with record_function("phase:adam"):
        path.optimizer.step()


def profile(setting: Setting, steps: int) -> str:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    path = Vectorised("vectorised", make_model(), setting)
    for bags in setting.batches[:2]:
        profiled_step(path, bags)
    batches = [setting.batches[i % len(setting.batches)] for i in range(steps)]
    with ExitStack() as stack:
        prof = stack.enter_context(torch_profile(activities=[ProfilerActivity.CPU]))
        stack.enter_context(labelled_blocks(path.model))
        start = time.perf_counter()
        for bags in batches:
            profiled_step(path, bags)
        wall = time.perf_counter() - start
    events = prof.key_averages()
    labels = sorted(
        (e for e in events if e.key.startswith(("phase:", "forward:"))),
        key=lambda e: (not e.key.startswith("phase:"), -e.cpu_time_total),
    )
    lines = [
        f"{steps} profiled steps of {setting.batch} spots: "
        f"{wall / steps * 1e3:.1f} ms per step under the profiler",
        "",
        "| phase | ms per step | share of step |",
        "| --- | --- | --- |",
    ]
    total = sum(e.cpu_time_total for e in labels if e.key.startswith("phase:"))
    for e in labels:
        ms = e.cpu_time_total / 1e3 / steps
        lines.append(f"| {e.key} | {ms:.2f} | {e.cpu_time_total / total:.2f} |")
    n_ops = sum(e.count for e in events if not e.key.startswith(("phase:", "forward:")))
    lines += ["", f"operator calls per step (all levels): {n_ops / steps:,.0f}", ""]
    lines.append(events.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=50))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds of 4 batches")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--batches", type=int, default=None, help="batches per round and path")
    parser.add_argument("--batch", type=int, default=BATCH, help="spots per batch (the issue's setting: 16)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    parser.add_argument("--profile", action="store_true", help="profile vectorised steps instead")
    parser.add_argument("--profile-steps", type=int, default=20)
    parser.add_argument("--compile", action="store_true", help="also time the step under torch.compile")
    parser.add_argument("--out", type=Path, default=None, help="also write the rates to this JSON file")
    args = parser.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    rounds = args.rounds or (3 if args.quick else 7)
    n_batches = args.batches or (4 if args.quick else 8)
    setting = Setting(n_batches, batch=args.batch)
    print(f"# bench_throughput, {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(
        f"{setting.spots} spots ({setting.cells:,} cells, {setting.cells / setting.spots:.1f} per spot) in "
        f"{len(setting.batches)} batches of {setting.batch}, {GENES} genes, "
        f"torch threads {torch.get_num_threads()}, "
        f"torch {torch.__version__}\n"
    )
    if args.profile:
        print(profile(setting, args.profile_steps))
        return

    model = make_model()
    paths: list[Runner] = [
        PerSpot("per spot (baseline)", copy.deepcopy(model), setting),
        Vectorised("vectorised (bitro)", copy.deepcopy(model), setting),
    ]
    if args.compile:
        compiled_model = copy.deepcopy(model)
        compiled = Vectorised(
            "vectorised + torch.compile", compiled_model, setting, torch.compile(compiled_model, dynamic=True)
        )
        start = time.perf_counter()
        compiled.train_batch(setting.batches[0])
        compiled.predict_batch(setting.batches[0])
        print(f"torch.compile: first training + prediction batch {time.perf_counter() - start:.1f} s")
        paths.append(compiled)
    differences = [
        float(np.abs(paths[0].predict_batch(b) - paths[1].predict_batch(b)).max()) for b in setting.batches
    ]
    print(f"per-spot vs vectorised predictions, same weights: max |difference| {max(differences):.1e}")
    for path in paths:  # warm-up: one batch each
        path.train_batch(setting.batches[0])
        path.predict_batch(setting.batches[0])
    rates = measure(paths, setting, rounds)
    print(f"\n{rounds} interleaved rounds of {setting.spots} spots per path; median (range) over rounds\n")
    print(table(rates, paths[0].name))
    products = matrix_products(setting)
    per_spot_ms = setting.batch / statistics.median(rates[paths[0].name]["train"]) * 1e3
    print(
        f"\nthe matrix products of a vectorised step alone: {products['ms_per_step']:.1f} ms per step "
        f"({products['gflop_per_step']:.2f} GFLOP, {products['calls_per_step']:.0f} calls; profiler self "
        f"time); the per-spot loop's median step {per_spot_ms:.1f} ms: a step that did nothing but "
        f"these products would be {per_spot_ms / products['ms_per_step']:.1f}× the per-spot loop"
    )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"rates": rates, "matrix_products": products}, indent=1))


if __name__ == "__main__":
    main()
