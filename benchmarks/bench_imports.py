"""Start-up cost of every ``bitro`` verb: what a workflow job pays before the verb does any work.

Snakemake runs each verb as its own process, so the imports a verb needs are paid once per job. For every
verb of the ``bitro`` parser (read from :func:`bitro.cli.build_parser`, not listed here), the benchmark
collects the import statements its handler runs (the ``import`` and ``from … import`` lines in the
handler's body and in the ``bitro.commands`` helpers it calls, conditional ones included, plus the handler's
own module) and runs them in fresh interpreters:

- wall: seconds of ``python -c "<those imports>"``, interpreter start included (median of the repeats);
- import: the summed cumulative time of the top-level imports under ``python -X importtime`` (median);
- which heavy libraries ended up in ``sys.modules``.

The baseline, measured in the same run and interleaved with the verb's own runs: the same imports followed
by ``import torch_geometric``, which is what every verb that imported the model paid while
``bitro.model.gat`` imported ``torch_geometric`` with the module, and what a verb that builds a BiTro still
pays when it builds its first GAT layer. Reference rows time the interpreter alone, the parser
(``bitro --help``), torch, torch_geometric, and each reader of :mod:`bitro.io` (a verb that reads a sample
imports its layout's reader at run time).

Imports done later, at first use (a sample reader, the GAT), are not in a verb's own figures: they are the
part of the start-up a verb pays only when it needs it.

Usage: ``.venv/bin/python benchmarks/bench_imports.py [--repeats 3] [--quick] [--verbs tissue,train]
[--no-baseline]`` (``--quick``: one repeat; ``--no-baseline``: without the baseline runs, the slowest).
``PYTHONPATH`` chooses the ``bitro`` measured, so the same script measures another checkout:
``PYTHONPATH=../other/src .venv/bin/python benchmarks/bench_imports.py``.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import pkgutil
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

#: Libraries whose presence in ``sys.modules`` the table reports.
HEAVY: tuple[str, ...] = (
    "torch_geometric",
    "torch",
    "sklearn",
    "matplotlib",
    "anndata",
    "geopandas",
    "shapely",
    "zarr",
    "skimage",
    "pandas",
)
SHORT = {"torch_geometric": "pyg", "matplotlib": "mpl", "geopandas": "gpd", "skimage": "ski"}
BASELINE = "import torch_geometric"


def verb_handlers() -> dict[str, Callable[..., Any]]:
    """Every verb of the ``bitro`` parser and the function it runs."""
    from bitro.cli import build_parser

    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return {name: sub.get_default("func") for name, sub in action.choices.items()}
    raise SystemExit("bitro.cli.build_parser has no sub-commands")


def handler_imports(func: Callable[..., Any], seen: set[Callable[..., Any]] | None = None) -> Iterator[str]:
    """The import statements ``func`` runs: those in its body, and those of the ``bitro.commands``
    functions it names (``read_args_sample``, ``set_threads``, …), each function read once."""
    seen = set() if seen is None else seen
    if func in seen:
        return
    seen.add(func)
    module = sys.modules[func.__module__]
    yield f"import {func.__module__}"
    for node in ast.walk(ast.parse(textwrap.dedent(inspect.getsource(func)))):
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield ast.unparse(node)
        elif isinstance(node, ast.Name):
            called = getattr(module, node.id, None)
            if inspect.isfunction(called) and called.__module__.startswith("bitro.commands"):
                yield from handler_imports(called, seen)


@dataclass
class Row:
    """One measured row: a verb or a reference, its import code and the figures of each repeat."""

    name: str
    code: str
    baseline: bool = True
    wall: list[float] = field(default_factory=list)
    imports: list[float] = field(default_factory=list)
    base_wall: list[float] = field(default_factory=list)
    base_imports: list[float] = field(default_factory=list)
    loaded: set[str] = field(default_factory=set)


def run(code: str, importtime: bool) -> tuple[float, float, set[str]]:
    """Wall seconds, summed top-level import seconds (0 without ``importtime``) and the heavy libraries
    loaded, for ``python -c code`` in a fresh interpreter."""
    report = f"\nprint('LOADED', *[m for m in {HEAVY!r} if m in __import__('sys').modules])"
    argv = [sys.executable, *(["-X", "importtime"] if importtime else []), "-c", code + report]
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{code!r} failed:\n{done.stderr[-2000:]}")
    loaded = next(line for line in done.stdout.splitlines() if line.startswith("LOADED")).split()[1:]
    return wall, import_seconds(done.stderr), set(loaded)


def import_seconds(stderr: str) -> float:
    """The summed cumulative time of the top-level imports in ``-X importtime`` output."""
    total = 0
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _, cumulative, name = line[len("import time:") :].split("|")
        if not name.startswith("  "):  # one space after the bar: a top-level import
            total += int(cumulative)
    return total / 1e6


def rows_to_measure(verbs: list[str] | None, references: bool) -> list[Row]:
    rows = []
    if references:
        import bitro.io

        rows += [
            Row("(interpreter only)", "pass", baseline=False),
            Row("(parser: bitro --help)", "import bitro.cli", baseline=False),
            Row("(import torch)", "import torch", baseline=False),
            Row("(import torch_geometric)", BASELINE, baseline=False),
        ]
        for info in pkgutil.iter_modules(bitro.io.__path__):
            rows.append(
                Row(f"(reader: bitro.io.{info.name})", f"import bitro.io.{info.name}", baseline=False)
            )
    for name, func in verb_handlers().items():
        if verbs is None or name in verbs:
            rows.append(Row(name, "\n".join(dict.fromkeys(handler_imports(func)))))
    return rows


def measure(rows: list[Row], repeats: int, baseline: bool = True) -> None:
    for repeat in range(repeats):
        for row in rows:
            row.wall.append(run(row.code, importtime=False)[0])
            _, seconds, row.loaded = run(row.code, importtime=True)
            row.imports.append(seconds)
            if row.baseline and baseline:
                wall, seconds, _ = run(row.code + "\n" + BASELINE, importtime=True)
                row.base_wall.append(wall)
                row.base_imports.append(seconds)
        print(f"repeat {repeat + 1}/{repeats} done", file=sys.stderr, flush=True)


def table(rows: list[Row]) -> str:
    med = statistics.median
    lines = [
        "| verb | wall s | import s | loads | baseline import s (+ `import torch_geometric`) | ratio |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        loads = ", ".join(SHORT.get(m, m) for m in HEAVY if m in row.loaded) or "–"
        if row.base_imports:
            base = f"{med(row.base_imports):.2f}"
            ratio = f"{med(row.base_imports) / med(row.imports):.1f}×"
        else:
            base = ratio = ""
        lines.append(
            f"| {row.name} | {med(row.wall):.2f} | {med(row.imports):.2f} | {loads} | {base} | {ratio} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="one repeat")
    parser.add_argument("--verbs", default=None, help="comma-separated verbs (default: every verb)")
    parser.add_argument("--no-references", action="store_true", help="skip the reference rows")
    parser.add_argument("--show-imports", action="store_true", help="print each verb's import lines")
    parser.add_argument(
        "--no-baseline", action="store_true", help="skip the runs with `import torch_geometric` added"
    )
    args = parser.parse_args()
    import bitro

    verbs = args.verbs.split(",") if args.verbs else None
    rows = rows_to_measure(verbs, references=not args.no_references)
    if args.show_imports:
        for row in rows:
            print(f"## {row.name}\n{row.code}\n")
    repeats = 1 if args.quick else args.repeats
    print(f"# bench_imports, {time.strftime('%Y-%m-%d %H:%M')}, bitro from {bitro.__file__}")
    print(f"command: {' '.join([sys.executable.rsplit('/', 1)[-1], *sys.argv])}")
    print(f"median of {repeats} repeat(s); wall includes the interpreter's start\n", flush=True)
    measure(rows, repeats, baseline=not args.no_baseline)
    print(table(rows))
    verb_rows = [row for row in rows if row.baseline]
    if verb_rows:
        total = sum(statistics.median(row.wall) for row in verb_rows)
        print(f"\nsum of the verbs' median wall times: {total:.1f} s over {len(verb_rows)} verbs")


if __name__ == "__main__":
    main()
