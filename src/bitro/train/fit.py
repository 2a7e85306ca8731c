"""The training loop (paper Appendix C.2): Adam, clipping, early stopping on a validation split, resume.

- Adam (lr 1e-4 by default), gradient norm clipped to 1.0.
- Loss: MSE on z-scored targets + λ · cluster loss on pseudo-cell profiles in count space (eq. 11–13).
- The budget and early stopping count **optimiser steps**, not epochs: an epoch of a cohort of 60 spots
  is 2 steps at batch 32 and one of 6,000 spots is 190, so a patience of "6 epochs" stops the small
  cohort after a dozen steps, near its initialisation. Training runs in *rounds* of whole epochs, each
  at least ``eval_every_steps`` steps long; after each round the *validation* loss (gene MSE) is
  measured, and training stops after ``max_steps`` steps or when ``patience_steps`` steps have passed
  since the best round. Validation bags come from the fold's validation samples, carved from its
  training samples (docs/methods.md), and the weights of the best round are the result. A best round
  that is the first one is logged as a warning and recorded (``TrainResult.best_at_first_check``).
- Every round writes the resume state; a run killed after round n and started again continues from n
  and ends with the same weights as an uninterrupted run, because each epoch's shuffling and dropout
  are seeded from ``(seed, epoch)`` rather than from a stream carried across epochs.
- Each round appends a row to ``train_log.csv`` (epoch, step, losses, throughput).
"""

from __future__ import annotations

import csv
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from bitro.folds.bags import Bag, collate
from bitro.folds.samples import SampleData
from bitro.genes.normalise import TargetTransform
from bitro.model.bitro import BiTro
from bitro.model.losses import cluster_loss, gene_loss
from bitro.model.pseudocells import pseudo_cells
from bitro.train.config import TrainConfig, TrainResult
from bitro.train.state import load_state, save_state, saved_fingerprint

log = logging.getLogger("bitro")


def _seed_everything(seed: int) -> None:
    torch.manual_seed(seed)


class CountSpace:
    """Differentiable inverse of a :class:`TargetTransform` (z-scores → counts or TPM), on a device."""

    def __init__(self, transform: TargetTransform, device: torch.device | str) -> None:
        self.mean = torch.as_tensor(transform.mean, dtype=torch.float32, device=device)
        self.scale = torch.as_tensor(transform.scale, dtype=torch.float32, device=device)
        self.zscore = transform.zscore
        # Genes differ by orders of magnitude in counts: the cluster loss divides each by its typical
        # training amount so that every gene weighs alike, as the z-score does for the gene loss.
        self.gene_scale = torch.expm1(self.mean).clamp_min(1e-3)

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        logged = z * self.scale + self.mean if self.zscore else z
        return torch.expm1(logged.clamp(max=30.0)).clamp_min(0.0)


def _targets(transform: TargetTransform, raw: np.ndarray, device: torch.device | str) -> torch.Tensor:
    return torch.as_tensor(transform.forward(raw), dtype=torch.float32, device=device)


def batch_loss(
    model: BiTro,
    bags: Sequence[Bag],
    samples: Sequence[SampleData],
    transform: TargetTransform,
    counts: CountSpace,
    config: TrainConfig,
    *,
    device: torch.device | str,
    rng: np.random.Generator | None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Loss of one batch of bags and its parts."""
    batch, raw, _ = collate(bags, samples, max_units=config.max_units_per_bag, rng=rng)
    batch = batch.to(device)
    target = _targets(transform, raw, device)
    use_bf16 = config.bf16 and str(device).startswith("cuda")
    with torch.autocast(device_type=str(device).split(":")[0], dtype=torch.bfloat16, enabled=use_bf16):
        out = model(batch)
    prediction = out.prediction.float()
    loss_gene = gene_loss(prediction, target)
    parts = {"gene": float(loss_gene.detach())}
    loss = loss_gene
    if config.lambda_cluster > 0:
        cells = pseudo_cells(out.attention.float(), counts(prediction), batch.cell_bag)
        loss_cluster = cluster_loss(cells, batch.phenotype, gene_scale=counts.gene_scale)
        loss = loss + config.lambda_cluster * loss_cluster
        parts["cluster"] = float(loss_cluster.detach())
    parts["total"] = float(loss.detach())
    return loss, parts


def adam(trainable: Sequence[torch.nn.Parameter], config: TrainConfig) -> torch.optim.Adam:
    """The optimiser of :func:`fit`.

    ``fused``: one kernel per parameter tensor for the whole update instead of a Python loop of about ten
    operations per tensor (torch's default on CPU): 1.1 ms instead of 4.3 ms per step for the default
    model's 60 tensors on one CPU thread. It rounds differently from the loop at the 1e-9 level.
    """
    return torch.optim.Adam(trainable, lr=config.lr, weight_decay=config.weight_decay, fused=True)


def train_step(
    model: BiTro,
    optimizer: torch.optim.Optimizer,
    trainable: Sequence[torch.nn.Parameter],
    bags: Sequence[Bag],
    samples: Sequence[SampleData],
    transform: TargetTransform,
    counts: CountSpace,
    config: TrainConfig,
    *,
    device: torch.device | str,
    rng: np.random.Generator | None,
) -> dict[str, float]:
    """One optimiser step on one batch of bags (loss, backward, clipping, Adam); the loss parts."""
    loss, parts = batch_loss(model, bags, samples, transform, counts, config, device=device, rng=rng)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(trainable, config.clip_norm, foreach=True)
    optimizer.step()
    return parts


def _batches(bags: Sequence[Bag], size: int, rng: np.random.Generator | None) -> list[list[Bag]]:
    order = np.arange(len(bags)) if rng is None else rng.permutation(len(bags))
    return [[bags[i] for i in order[s : s + size]] for s in range(0, len(order), size)]


@torch.no_grad()
def evaluate_loss(
    model: BiTro,
    bags: Sequence[Bag],
    samples: Sequence[SampleData],
    transform: TargetTransform,
    counts: CountSpace,
    config: TrainConfig,
    *,
    device: torch.device | str,
) -> dict[str, float]:
    """Mean loss parts over ``bags`` in eval mode (bulk bags use a fixed subset of patches)."""
    model.eval()
    totals: dict[str, float] = {}
    n = 0
    rng = np.random.default_rng([config.seed, 7919])
    for chunk in _batches(bags, config.batch_bags, None):
        _, parts = batch_loss(model, chunk, samples, transform, counts, config, device=device, rng=rng)
        for key, value in parts.items():
            totals[key] = totals.get(key, 0.0) + value * len(chunk)
        n += len(chunk)
    return {key: value / max(n, 1) for key, value in totals.items()}


def fit(
    model: BiTro,
    train_bags: Sequence[Bag],
    validation_bags: Sequence[Bag],
    samples: Sequence[SampleData],
    transform: TargetTransform,
    config: TrainConfig,
    out_dir: str | Path,
    *,
    device: str = "cpu",
    progress: bool = True,
    stop_after: int | None = None,
    parameters: Callable[[], list[torch.nn.Parameter]] | None = None,
    fingerprint: dict[str, Any] | None = None,
) -> TrainResult:
    """Train ``model`` in place and leave it holding the best validation weights.

    Writes ``out_dir/train_log.csv`` and ``out_dir/checkpoint/state.*``. ``stop_after`` ends the run at
    the first check at or after that many steps, as a kill right after that checkpoint would (used by
    the resume test). ``parameters`` chooses what is trained (LoRA fine-tuning passes the adapters), all
    parameters that require grad by default. ``fingerprint`` (:func:`bitro.train.state.fingerprint`)
    describes the inputs (data, genes, settings, starting weights): a saved state is resumed only when it
    was made with the same one, so a rerun after an input changed starts afresh instead of resuming.
    """
    if not train_bags:
        raise ValueError("no training bags: every training unit is empty")
    if not validation_bags:
        raise ValueError("no validation bags: the validation samples hold no cells")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.to(device)
    counts = CountSpace(transform, device)
    trainable = parameters() if parameters is not None else [p for p in model.parameters() if p.requires_grad]
    optimizer = adam(trainable, config)
    log_path = out_dir / "train_log.csv"
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    restored = None
    saved, made_with = saved_fingerprint(out_dir / "checkpoint")
    if saved and made_with != fingerprint:  # the stale-resume rule (bitro.train.state)
        log.info("%s: the saved state was made from other inputs; training afresh", out_dir)
    elif saved:
        restored = load_state(out_dir / "checkpoint", model=model, optimizer=optimizer)
        for group in optimizer.param_groups:  # a state saved before ``adam`` chose the fused update
            group.update(foreach=None, fused=True)
            for param in group["params"]:  # the fused update keeps its step counts beside the weights
                state = optimizer.state.get(param, {})
                if isinstance(state.get("step"), torch.Tensor):
                    state["step"] = state["step"].to(param.device, torch.float32)
    if restored is None:
        best = initial
        info: dict[str, Any] = {
            "epoch": 0,
            "step": 0,
            "best_epoch": 0,
            "best_step": 0,
            "best_val": math.inf,
            "history": [],
            "fingerprint": fingerprint,
        }
    else:
        best, info = restored
        log.info("%s: resuming after step %d of at most %d", out_dir, info["step"], config.max_steps)
    # The log always matches the state it resumes from (a rerun may have deleted it).
    log_path.unlink(missing_ok=True)
    for row in info["history"]:
        _append_log(log_path, row)
    history: list[dict[str, float]] = info["history"]
    slides = all(samples[bag.sample].level == "bulk" for bag in train_bags)
    batch_size = config.slide_batch_bags if slides else config.batch_bags
    steps_per_epoch = math.ceil(len(train_bags) / batch_size)
    epochs_per_round = max(1, math.ceil(config.eval_every_steps / steps_per_epoch))

    def stale() -> bool:
        return bool(history) and info["step"] - info["best_step"] >= config.patience_steps

    completed = True
    bar = tqdm(
        total=config.max_steps,
        desc="steps",
        disable=not progress,
        initial=min(info["step"], config.max_steps),
    )
    while info["step"] < config.max_steps and not stale():
        if stop_after is not None and info["step"] >= stop_after:
            completed = False
            break
        started = time.perf_counter()
        sums: dict[str, float] = {}
        n_bags = 0
        for _ in range(epochs_per_round):
            if info["step"] >= config.max_steps:
                break
            epoch = info["epoch"]
            _seed_everything(config.seed * 100_003 + epoch)
            rng = np.random.default_rng([config.seed, epoch])
            model.train()
            for chunk in _batches(train_bags, batch_size, rng):
                parts = train_step(
                    model,
                    optimizer,
                    trainable,
                    chunk,
                    samples,
                    transform,
                    counts,
                    config,
                    device=device,
                    rng=rng,
                )
                for key, value in parts.items():
                    sums[key] = sums.get(key, 0.0) + value * len(chunk)
                n_bags += len(chunk)
            info["epoch"] += 1
            info["step"] += steps_per_epoch
            bar.update(min(steps_per_epoch, config.max_steps - bar.n))
        seconds = time.perf_counter() - started
        val = evaluate_loss(model, validation_bags, samples, transform, counts, config, device=device)
        # Throughput of the training steps alone; validation time is logged on its own.
        row = {
            "epoch": info["epoch"],
            "step": info["step"],
            "seconds": seconds,
            "bags_per_s": n_bags / max(seconds, 1e-9),
        }
        row["val_seconds"] = time.perf_counter() - started - seconds
        row |= {f"train_{k}": v / max(n_bags, 1) for k, v in sums.items()}
        row |= {f"val_{k}": v for k, v in val.items()}
        history.append(row)
        if val["gene"] < info["best_val"]:
            best = {k: v.detach().clone() for k, v in model.state_dict().items()}
            info.update(best_val=val["gene"], best_epoch=info["epoch"], best_step=info["step"])
        info["history"] = history
        save_state(out_dir / "checkpoint", model=model, best=best, optimizer=optimizer, info=info)
        _append_log(log_path, row)
        bar.set_postfix(train=f"{row['train_gene']:.3f}", val=f"{val['gene']:.3f}")
    bar.close()
    model.load_state_dict(best)
    model.eval()
    result = TrainResult(
        best_epoch=int(info["best_epoch"]),
        best_step=int(info["best_step"]),
        best_val_loss=float(info["best_val"]),
        epochs_run=int(info["epoch"]),
        steps_run=int(info["step"]),
        history=history,
        stopped_early=stale(),
        completed=completed,
    )
    if completed and result.best_at_first_check and len(history) > 1:
        log.warning(
            "%s: the best validation loss came at the first check (step %d of %d run): the kept model is "
            "barely trained. Raise patience_steps, lower eval_every_steps or check the learning rate.",
            out_dir,
            result.best_step,
            result.steps_run,
        )
    return result


def _append_log(path: Path, row: dict[str, float]) -> None:
    new = not path.is_file()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)
