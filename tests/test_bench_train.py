"""Smoke test of benchmarks/bench_train.py: its parts run in-process on tiny inputs, with sane figures."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_train.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_train", PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_train"] = module
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is fastest, and immune to a busy machine
    yield module
    torch.set_num_threads(threads)


def test_training_part_reports_throughput_and_flops(bench) -> None:
    import bitro.train.fit as fit_module

    before = fit_module.collate
    cohort = {"cohort": "synthetic", "spots": 16, "spot_cells": [3, 9], "genes": 5}
    out = bench.child_train({"device": "cpu", "epochs": 1, "batch": 8, "peak_seconds": 0.2} | cohort)
    assert fit_module.collate is before  # the timing wrappers are removed again
    assert out["train_spots"] == 32 and out["steps_per_epoch"] == 4
    assert out["spots_per_s"] > 0 and out["fit_spots_per_s"] <= out["spots_per_s"]
    assert 0 < out["flop_rate"] < out["matmul_peak"] * 10
    assert out["fit_rss_peak"] >= out["fit_rss_before"] > 0
    table = bench.train_table([out], out, "cpu")
    assert table.count("\n") == 3


def test_bulk_parts_agree_and_report_memory(bench) -> None:
    stream = bench.child_bulk({"device": "cpu", "cells": 3000, "genes": 7, "pseudo": True})
    full = bench.child_full({"device": "cpu", "cells": 1500, "genes": 7})
    assert stream["cells"] == 3000 and stream["units"] == 50
    assert stream["pseudo_sum_rel_error"] < 1e-4
    assert stream["prediction_matches_second_run"] < 1e-5
    assert full["max_abs_difference"] < 1e-4
    assert "4 GiB" in bench.bulk_table(stream, full, "cpu")
