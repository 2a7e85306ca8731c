"""Cell graphs on 10⁶ cells, and PCA + K-means phenotypes on 2·10⁵ × 1024 embeddings.

Each part runs in its own child process so its peak resident memory is its own, and each is timed
against a simple baseline in the same run:

- kNN graphs (k = 8 within 55 µm patches): one vectorised KD-tree query against a loop that builds one
  KD-tree per unit;
- PCA to 128 (randomised SVD) + phenotypes (MiniBatch K-means, K = 8) against exact PCA (full SVD) +
  Lloyd K-means with one initialisation.

Targets (issue 4): graphs for 10⁶ cells ≤ 10 s; PCA + K-means on 2·10⁵ × 1024 ≤ 60 s and ≤ 8 GiB.

Usage: ``.venv/bin/python benchmarks/bench_features.py [--cells 1000000] [--embeddings 200000]``
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

GRAPH = r"""
import json, resource, sys, time
import numpy as np
from scipy.spatial import cKDTree
from bitro.features.graph import knn_graphs
n = int(sys.argv[1])
rng = np.random.default_rng(0)
side = np.sqrt(n * 250.0)  # ~250 µm² per cell, as in tissue
x, y = rng.uniform(0, side, n), rng.uniform(0, side, n)
unit = (np.floor(x / 55) + np.floor(y / 55) * np.ceil(side / 55)).astype(np.int64)
t = time.perf_counter(); graphs = knn_graphs(x, y, unit, k=8); ours = time.perf_counter() - t
t = time.perf_counter()
order = np.argsort(unit, kind="stable"); bounds = np.searchsorted(unit[order], np.unique(unit))
for rows in np.split(order, bounds[1:]):
    if len(rows) > 8:
        cKDTree(np.column_stack([x[rows], y[rows]])).query(np.column_stack([x[rows], y[rows]]), k=9)
loop = time.perf_counter() - t
print(json.dumps({"cells": n, "units": len(graphs.unit_ids), "edges": graphs.edges.shape[1],
                  "seconds": ours, "baseline_seconds": loop,
                  "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""

REDUCE = r"""
import json, resource, sys, time
import numpy as np
mode, n = sys.argv[1], int(sys.argv[2])
rng = np.random.default_rng(0)
centres = rng.normal(0, 1, size=(8, 1024)).astype(np.float32)
x = centres[rng.integers(0, 8, n)] + rng.normal(0, 1.0, size=(n, 1024)).astype(np.float32)
t = time.perf_counter()
if mode == "ours":
    from bitro.features.phenotype import fit_phenotypes
    from bitro.features.reduce import fit_pca
    basis = fit_pca(x, n_components=128)
    features = basis.transform(x)
    t_pca = time.perf_counter() - t
    phenotypes = fit_phenotypes({"s": features}, ["s"], k=8)
    labels = phenotypes.assign(features)
else:
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    features = PCA(n_components=128, svd_solver="full").fit_transform(x)
    t_pca = time.perf_counter() - t
    labels = KMeans(n_clusters=8, n_init=1, random_state=0).fit_predict(features)
total = time.perf_counter() - t
print(json.dumps({"mode": mode, "n": n, "seconds": total, "pca_seconds": t_pca,
                  "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}))
"""


def child(code: str, *args: object) -> dict:
    done = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(done.stderr)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, default=1_000_000)
    parser.add_argument("--embeddings", type=int, default=200_000)
    args = parser.parse_args()
    graph = child(GRAPH, args.cells)
    ours = child(REDUCE, "ours", args.embeddings)
    base = child(REDUCE, "baseline", args.embeddings)
    rows = [
        (f"kNN graphs, {graph['cells']:,} cells in {graph['units']:,} units: s", graph["seconds"]),
        ("  one KD-tree per unit (baseline): s", graph["baseline_seconds"]),
        ("  speed-up", graph["baseline_seconds"] / graph["seconds"]),
        ("  peak RSS, MiB", graph["peak_rss_bytes"] / 2**20),
        (f"PCA 1024→128 + K-means (K = 8), {args.embeddings:,} cells: s", ours["seconds"]),
        ("  of which PCA: s", ours["pca_seconds"]),
        ("  peak RSS, MiB", ours["peak_rss_bytes"] / 2**20),
        ("  exact PCA + Lloyd K-means (baseline): s", base["seconds"]),
        ("  baseline peak RSS, MiB", base["peak_rss_bytes"] / 2**20),
        ("  speed-up", base["seconds"] / ours["seconds"]),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value:,.2f}")


if __name__ == "__main__":
    main()
