"""The package's import graph: no cycle between the parts of ``bitro``, and every import goes down the layers.

Every ``import`` and ``from … import`` in ``src/bitro`` is read with :mod:`ast` — at module level, inside
functions (the verbs import lazily) and under ``TYPE_CHECKING`` alike — and mapped to the *part* of
``bitro`` it names: a subpackage (``bitro.train``) or a top-level module (``bitro.errors``).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "bitro"

#: The layers, lowest first. A part may import only parts of lower layers (and itself).
LAYERS: tuple[tuple[str, ...], ...] = (
    # base utilities: errors, atomic writes, hashing, the metrics (numpy only), the package itself
    ("bitro", "errors", "_atomic", "_hashing", "_histomicstk", "_lazy", "metrics"),
    ("options",),  # the option enums
    ("layout",),  # where each layout's and each stage's files are
    ("io",),  # reading the input layouts
    ("genes", "preprocess"),  # gene lists and targets; tissue, tiles, cells, units
    ("features",),  # per-cell features, graphs, phenotypes, PCA
    ("model",),  # the BiTro network, LoRA
    ("folds",),  # splits, samples and bags: what a fold holds
    ("train",),  # the one training pipeline, saved models, transfer policy
    ("evaluate",),  # predicting test samples, baselines, summaries
    ("bundle",),  # portable model bundles: export, load, compatibility checks
    ("plot", "doctor", "demo"),  # figures, input checks, the synthetic demo
    ("predict",),  # the per-slide prediction files (maps drawn with plot)
    ("accuracy",),  # the accuracy benchmark
    ("commands",),  # the verbs
    ("cli",),  # the parser
)

#: Imports that break the layering today, each with why it is tolerated. Keep it short.
KNOWN_EXCEPTIONS: frozenset[tuple[str, str]] = frozenset()


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _part(module: str) -> str:
    """The part of ``bitro`` a dotted module name belongs to."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "bitro"


def _imported(node: ast.AST, module: str, is_package: bool) -> Iterator[str]:
    """The ``bitro`` modules an import statement names (absolute names, relative ones resolved)."""
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            base = module.split(".")
            base = base[: len(base) - node.level + (1 if is_package else 0)]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        if source == "bitro":  # from bitro import x: a submodule, or a name of the package itself
            for alias in node.names:
                sub = PACKAGE / alias.name
                yield f"bitro.{alias.name}" if sub.is_dir() or sub.with_suffix(".py").is_file() else "bitro"
        else:
            yield source


def import_graph() -> dict[tuple[str, str], list[str]]:
    """(importing part, imported part) → the imports that make the edge, as ``module -> module``."""
    edges: dict[tuple[str, str], list[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module_name(path)
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            for name in _imported(node, module, path.name == "__init__.py"):
                if name == "bitro" or name.startswith("bitro."):
                    pair = (_part(module), _part(name))
                    if pair[0] != pair[1]:
                        edges.setdefault(pair, []).append(f"{module} -> {name}")
    return edges


def find_cycle(edges: set[tuple[str, str]]) -> list[str] | None:
    """One cycle of the directed graph ``edges`` (its parts in order, the first repeated), or None."""
    graph: dict[str, list[str]] = {}
    for a, b in sorted(edges):
        graph.setdefault(a, []).append(b)
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in graph.get(node, []):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


@pytest.fixture(scope="module")
def graph() -> dict[tuple[str, str], list[str]]:
    return import_graph()


def test_the_graph_is_read_from_every_kind_of_import(graph) -> None:
    # A verb imports lazily inside its function: such imports count like any other.
    assert "bitro.commands.train -> bitro.train.run" in graph[("commands", "train")]
    assert ("evaluate", "folds") in graph and ("train", "folds") in graph


def test_no_cycle_between_the_parts_of_bitro(graph) -> None:
    assert find_cycle(set(graph)) is None, f"import cycle: {' -> '.join(find_cycle(set(graph)) or [])}"
    assert find_cycle({("a", "b"), ("b", "c"), ("c", "a")}) == ["a", "b", "c", "a"]  # the check itself


def test_train_and_evaluate_do_not_import_each_other_both_ways(graph) -> None:
    assert ("train", "evaluate") not in graph, graph.get(("train", "evaluate"))


def test_every_import_goes_down_the_layers(graph) -> None:
    layer = {part: i for i, parts in enumerate(LAYERS) for part in parts}
    unknown = sorted({p for edge in graph for p in edge} - set(layer))
    assert not unknown, f"parts of bitro without a layer (add them to LAYERS): {unknown}"
    upward = {
        edge: graph[edge]
        for edge in graph
        if layer[edge[0]] <= layer[edge[1]] and edge not in KNOWN_EXCEPTIONS
    }
    assert not upward, "imports against the layering:\n" + "\n".join(
        f"  {a} -> {b}: {where[:3]}" for (a, b), where in sorted(upward.items())
    )
    fixed = sorted(KNOWN_EXCEPTIONS - set(graph))
    assert not fixed, f"known exceptions that no longer occur (drop them from KNOWN_EXCEPTIONS): {fixed}"


def _loaded_after(code: str, libraries: tuple[str, ...]) -> list[str]:
    """The ``libraries`` in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    import subprocess
    import sys

    report = f"\nimport sys; print(' '.join(m for m in {libraries!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code + report], capture_output=True, text=True, check=True)
    return done.stdout.split()


@pytest.mark.parametrize(
    ("code", "absent"),
    [
        # the parser, the per-sample preprocessing steps and what they open a slide with
        (
            "import bitro.cli\nfrom bitro.io import open_slide, read_sample\n"
            "import bitro.preprocess.tissue, bitro.preprocess.stain, bitro.preprocess.units",
            ("torch", "torch_geometric", "anndata", "geopandas", "sklearn", "matplotlib"),
        ),
        # a module that imports the model (bags, the BiTro class) without building a GAT layer
        ("import bitro.folds.bags\nfrom bitro.model import BiTro, BiTroConfig", ("torch_geometric",)),
        # PCA bases and phenotypes read without fitting (train, predict): scikit-learn only to fit
        ("import bitro.features.reduce, bitro.features.phenotype", ("sklearn",)),
        # predictions-table's bulk profiles: no heat maps, so no matplotlib (bitro.predict is lazy)
        ("import bitro.predict.bulk\nfrom bitro.predict import read_bulk_table", ("matplotlib", "anndata")),
        # a HEST sample without a segmentation file: geopandas only to read one
        ("import bitro.io.hest", ("geopandas",)),
        # the cell table is read and written with pyarrow: shapely to build it, geopandas to export it
        ("import bitro.preprocess.cells", ("geopandas", "shapely")),
        # the units table: the tissue mask's scikit-image and shapely only to make units
        ("import bitro.preprocess.units", ("skimage", "shapely")),
        # crops apply a stain model: scikit-image only to fit one on a slide
        ("import bitro.preprocess.crops, bitro.preprocess.stain", ("skimage", "shapely", "geopandas")),
        # segmenting, writing QuPath GeoJSON and the CellViT++ command: geopandas only to read a segmentation
        (
            "import bitro.preprocess.segment, bitro.preprocess.cellvit, bitro.predict.qupath, bitro.io.cells",
            ("geopandas",),
        ),
        # the verbs that read a sample's tables (train, predict, baselines, transfer, graph, folds)
        (
            "import bitro.train.run, bitro.train.pretrain, bitro.train.finetune, bitro.evaluate.predict\n"
            "import bitro.evaluate.fold_baselines, bitro.features.graph, bitro.folds.samples",
            ("geopandas", "shapely", "skimage"),
        ),
        # cohort tables and a bundle's CV summary: anndata only to read a fold's predictions
        ("import bitro.evaluate.summary, bitro.bundle.cv, bitro.bundle.export", ("anndata",)),
        # bitro folds checks TCGA barcodes: anndata only to read TCGA expression
        ("from bitro.io.tcga import barcode_contradictions, parse_barcode", ("anndata",)),
    ],
    ids=[
        "light-verbs",
        "model-without-gat",
        "reduce-phenotype-without-fit",
        "bulk-table",
        "hest-reader",
        "cell-table",
        "units-table",
        "crops-apply-stain",
        "segmentation-without-reading",
        "table-reading-verbs",
        "summaries-and-bundle-cv",
        "tcga-barcodes",
    ],
)
def test_light_imports_leave_heavy_libraries_unloaded(code: str, absent: tuple[str, ...]) -> None:
    # Each verb is its own workflow job: what its modules import is paid per job (bench_imports.py).
    assert _loaded_after(code, absent) == []


def test_building_a_gat_layer_imports_torch_geometric() -> None:
    code = "from bitro.model.gat import GATLayer\nGATLayer(8, heads=2, dropout=0.0)"
    assert _loaded_after(code, ("torch_geometric",)) == ["torch_geometric"]
