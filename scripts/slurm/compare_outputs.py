"""Check that two ``results/`` trees hold the same files with the same content.

Usage: ``python scripts/slurm/compare_outputs.py A/results B/results [--ignore logs] [--ignore-key seconds]``.
Files equal byte for byte pass; otherwise they are compared by content where the format may differ in
bytes between two writes of the same data (HDF5 and Parquet metadata, JSON key order): h5ad, h5,
parquet, npz/npy, json/geojson. ``--ignore`` skips a top-level folder, ``--ignore-key`` a JSON key at
any depth (timings such as the demo manifest's ``seconds``). Prints one line per difference and exits
1 if there is any.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np


def files(root: Path, ignore: set[str]) -> set[str]:
    return {
        path.relative_to(root).as_posix()
        for path in root.rglob("*")
        if path.is_file() and path.relative_to(root).parts[0] not in ignore
    }


def _arrays_equal(a: object, b: object) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype.kind in "fc":
        return bool(np.array_equal(a, b, equal_nan=True))
    return bool(np.array_equal(a, b))


def _nested_equal(a: object, b: object) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_nested_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_nested_equal(x, y) for x, y in zip(a, b, strict=True))
    if hasattr(a, "equals"):  # pandas objects
        return type(a) is type(b) and bool(a.equals(b))
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return _arrays_equal(a, b)
    return a == b or (a != a and b != b)  # NaN == NaN


IGNORED_KEYS: set[str] = set()


def _drop_keys(value: object) -> object:
    if isinstance(value, dict):
        return {k: _drop_keys(v) for k, v in value.items() if k not in IGNORED_KEYS}
    if isinstance(value, list):
        return [_drop_keys(v) for v in value]
    return value


def same_json(a: Path, b: Path) -> bool:
    return _drop_keys(json.loads(a.read_text())) == _drop_keys(json.loads(b.read_text()))


def same_npz(a: Path, b: Path) -> bool:
    if a.suffix == ".npy":
        return _arrays_equal(np.load(a, allow_pickle=False), np.load(b, allow_pickle=False))
    with np.load(a, allow_pickle=False) as x, np.load(b, allow_pickle=False) as y:
        return set(x.files) == set(y.files) and all(_arrays_equal(x[k], y[k]) for k in x.files)


def same_parquet(a: Path, b: Path) -> bool:
    import pyarrow.parquet as pq

    return pq.read_table(a).equals(pq.read_table(b), check_metadata=True)


def _h5_items(group: object, prefix: str = "") -> Iterator[tuple[str, object]]:
    import h5py

    for key, value in group.attrs.items():
        yield f"{prefix}@{key}", value
    for key in group:
        item = group[key]
        if isinstance(item, h5py.Group):
            yield from _h5_items(item, f"{prefix}/{key}")
        else:
            yield f"{prefix}/{key}", item[()]
            for attr, value in item.attrs.items():
                yield f"{prefix}/{key}@{attr}", value


def same_h5(a: Path, b: Path) -> bool:
    """HDF5 files (h5ad included) hold the same groups, datasets and attributes."""
    import h5py

    with h5py.File(a, "r") as x, h5py.File(b, "r") as y:
        left, right = dict(_h5_items(x)), dict(_h5_items(y))
        return left.keys() == right.keys() and all(_nested_equal(left[k], right[k]) for k in left)


COMPARERS: dict[str, Callable[[Path, Path], bool]] = {
    ".json": same_json,
    ".geojson": same_json,
    ".npz": same_npz,
    ".npy": same_npz,
    ".parquet": same_parquet,
    ".h5ad": same_h5,
    ".h5": same_h5,
}


def compare(left: Path, right: Path, ignore: set[str]) -> list[str]:
    """Return the differences between two trees, as lines (empty when they agree)."""
    a, b = files(left, ignore), files(right, ignore)
    problems = [f"only in {left}: {name}" for name in sorted(a - b)]
    problems += [f"only in {right}: {name}" for name in sorted(b - a)]
    for name in sorted(a & b):
        x, y = left / name, right / name
        if x.read_bytes() == y.read_bytes():
            continue
        comparer = COMPARERS.get(x.suffix.lower())
        if comparer is None or not comparer(x, y):
            problems.append(f"differs: {name}")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("left", type=Path)
    parser.add_argument("right", type=Path)
    parser.add_argument("--ignore", action="append", default=[], help="top-level folder to skip")
    parser.add_argument("--ignore-key", action="append", default=[], help="JSON key to skip at any depth")
    args = parser.parse_args()
    IGNORED_KEYS.update(args.ignore_key)
    problems = compare(args.left, args.right, set(args.ignore))
    n = len(files(args.left, set(args.ignore)))
    for line in problems:
        print(line)
    if problems or n == 0:
        sys.exit(f"{len(problems)} difference(s) in {n} file(s)" if n else f"no files under {args.left}")
    print(f"{n} files agree between {args.left} and {args.right}")


if __name__ == "__main__":
    main()
