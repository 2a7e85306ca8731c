"""Smoke test of benchmarks/bench_throughput.py: both paths train and predict a batch; rates; a profile."""

from __future__ import annotations

import copy
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_throughput.py"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(PATH.parent))
    spec = importlib.util.spec_from_file_location("bench_throughput", PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_throughput"] = module
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield module
    torch.set_num_threads(threads)
    sys.path.remove(str(PATH.parent))


def test_both_paths_train_and_predict_alike(bench) -> None:
    setting = bench.Setting(1)
    assert setting.spots == 16 and len(setting.batches) == 1
    model = bench.make_model()
    per_spot = bench.PerSpot("per spot", copy.deepcopy(model), setting)
    vectorised = bench.Vectorised("vectorised", copy.deepcopy(model), setting)
    bags = setting.batches[0]
    np.testing.assert_allclose(per_spot.predict_batch(bags), vectorised.predict_batch(bags), atol=1e-5)
    # not the same loss: per spot, pooled_norm's running moments move 16 times in a step instead of once
    assert np.isfinite(per_spot.train_batch(bags)) and np.isfinite(vectorised.train_batch(bags))
    rates = bench.measure([per_spot, vectorised], setting, rounds=1)
    assert all(r["train"][0] > 0 and r["predict"][0] > 0 for r in rates.values())
    assert bench.table(rates, "per spot").count("\n") == 3


def test_profile_reports_every_phase(bench) -> None:
    report = bench.profile(bench.Setting(1), steps=2)
    for phase in ("collate", "forward", "loss", "backward", "clip", "adam"):
        assert f"phase:{phase}" in report
    assert "forward:gat" in report and "operator calls per step" in report


def test_matrix_products_are_part_of_the_step(bench) -> None:
    setting = bench.Setting(1, batch=4)
    assert setting.spots == 4 and len(setting.batches[0]) == 4
    products = bench.matrix_products(setting, steps=2)
    assert products["calls_per_step"] > 10 and products["gflop_per_step"] > 0
    # on one thread the products take part of a whole step, never more
    path = bench.Vectorised("vectorised", bench.make_model(), setting)
    path.train_batch(setting.batches[0])
    step_ms = min(bench.timed(lambda: path.train_batch(setting.batches[0])) for _ in range(3)) * 1e3
    assert 0 < products["ms_per_step"] < 2 * step_ms
