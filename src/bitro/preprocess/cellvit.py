"""CellViT++ backend: the ``cellvit-inference`` command for one slide, and its cell file read back.

CellViT++ is the PyPI package ``cellvit`` (source: TIO-IKIM/CellViT-Inference, the inference part of
TIO-IKIM/CellViT-plus-plus). It needs a CUDA GPU and its own environment (``envs/cellvit.yaml``), so
nothing here imports it: this module only builds its command line and converts what it writes.

Verified against ``cellvit==1.0.9``:

* ``cellvit/inference/cli.py``: global options (``--model {SAM,HIPT}``, ``--nuclei_taxonomy``, ``--gpu``,
  ``--batch_size`` in 2..31, ``--outdir``, ``--geojson``, ``--cpu_count``, ``--ray_worker``) come before
  the ``process_wsi`` sub-command, whose options are ``--wsi_path``, ``--wsi_mpp`` (float) and
  ``--wsi_magnification`` (int).
* ``cellvit/config/config.py`` / ``cellvit/utils/cache_models.py``: there is no option for a checkpoint
  path. The weights are looked up by file name (``CellViT-SAM-H-x40-AMP.pth`` for ``SAM``,
  ``CellViT-256-x40-AMP.pth`` for ``HIPT``) in ``$CELLVIT_CACHE`` (default ``~/.cache/cellvit``) and
  downloaded from Zenodo only when missing there; taxonomies other than ``pannuke``/``binary`` also
  need ``classifier/{sam-h,vit256}/<taxonomy>.pth`` in the same directory.
* ``cellvit/inference/inference.py`` (``process_wsi``): results go to ``<outdir>/<slide stem>/``
  (``<outdir>/<parent folder>/`` for DICOM): ``cells.json`` (``{"wsi_metadata", "type_map", "cells"}``),
  ``cell_detection.json`` (centroids only), with ``--geojson`` also ``cells.geojson`` /
  ``cell_detection.geojson``, and with ``--compression`` the same names plus ``.snappy``.
* ``cellvit/inference/postprocessing_numpy.py``: per cell ``contour`` and ``centroid`` are ``[x, y]``,
  ``bbox`` is ``[[row_min, col_min], [row_max, col_max]]``, all multiplied by the extraction downsampling
  (and by the interpolation factor in ``_reallign_grid``), i.e. level-0 pixels.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bitro.errors import ConfigError, InputError, MissingInputError, UsageError
from bitro.io.cells import PANNUKE_TYPE_NAMES, _contour_polygon, _frame, _read_geojson, _type_name
from bitro.io.validate import require_file

if TYPE_CHECKING:  # the GeoDataFrames come from bitro.io.cells; writing the command needs no geopandas
    import geopandas as gpd

CELLVIT_EXECUTABLE = "cellvit-inference"
"""Console script of the ``cellvit`` package (``cellvit.detect_cells:main``)."""

CELLVIT_CACHE_ENV = "CELLVIT_CACHE"
"""Environment variable naming the directory CellViT++ loads (or else downloads) its weights into."""

CELLVIT_CHECKPOINTS: dict[str, str] = {
    "CellViT-SAM-H-x40-AMP.pth": "SAM",
    "CellViT-256-x40-AMP.pth": "HIPT",
}
"""Checkpoint file names CellViT++ looks for in ``$CELLVIT_CACHE``, and the ``--model`` each selects."""

CELLVIT_TAXONOMIES: tuple[str, ...] = (
    "binary",
    "pannuke",
    "consep",
    "lizard",
    "midog",
    "nucls_main",
    "nucls_super",
    "ocelot",
    "panoptils",
)
"""Values of ``--nuclei_taxonomy``; all but ``pannuke`` and ``binary`` need a classifier checkpoint."""

_CLASSIFIER_DIRS = {"SAM": "sam-h", "HIPT": "vit256"}
_MAX_MPP = 0.75  # CellViT++ refuses slides coarser than this (cellvit/data/dataclass/wsi_meta.py)
#: The config keys that set CellViT++'s taxonomy and batch size (named by the errors about them).
TAXONOMY_KEY = "segmentation.cellvit.taxonomy"
BATCH_SIZE_KEY = "segmentation.cellvit.batch_size"


def cellvit_model_name(model: Path) -> str:
    """Return the ``--model`` value (``"SAM"`` or ``"HIPT"``) for a local CellViT++ checkpoint file.

    Raises
    ------
    InputError
        ``model`` is not named like a checkpoint CellViT++ can load from its cache directory.
    """
    name = CELLVIT_CHECKPOINTS.get(Path(model).name)
    if name is None:
        expected = " or ".join(CELLVIT_CHECKPOINTS)
        raise InputError(
            model,
            f"CellViT++ loads its weights by file name from ${CELLVIT_CACHE_ENV}; name the checkpoint "
            f"{expected} (a symlink will do)",
        )
    return name


def cellvit_environment(weights_dir: Path) -> dict[str, str]:
    """Return the environment variables that make CellViT++ use local weights instead of downloading.

    Parameters
    ----------
    weights_dir
        Directory holding ``CellViT-SAM-H-x40-AMP.pth`` and/or ``CellViT-256-x40-AMP.pth`` (and
        ``classifier/`` for non-PanNuke taxonomies).

    Returns
    -------
    dict
        ``{"CELLVIT_CACHE": <absolute weights_dir>}``, to merge into the environment of the command.
    """
    return {CELLVIT_CACHE_ENV: str(Path(weights_dir).absolute())}


def _check_options(
    slide: Path,
    model_name: str,
    weights_dir: Path,
    taxonomy: str,
    mpp: float,
    magnification: float | None,
    batch_size: int,
) -> None:
    """Raise a :class:`~bitro.errors.BitroError` for options CellViT++ would reject or download for."""
    if taxonomy not in CELLVIT_TAXONOMIES:
        raise ConfigError(
            TAXONOMY_KEY,
            f"unknown CellViT++ taxonomy {taxonomy!r}; expected one of {', '.join(CELLVIT_TAXONOMIES)}",
        )
    if taxonomy == "midog" and model_name == "HIPT":
        raise ConfigError(TAXONOMY_KEY, "CellViT++ has no midog classifier for the HIPT (CellViT-256) model")
    if taxonomy not in ("pannuke", "binary"):
        classifier = weights_dir / "classifier" / _CLASSIFIER_DIRS[model_name] / f"{taxonomy}.pth"
        if not classifier.is_file():
            raise MissingInputError(classifier, f"CellViT++ {taxonomy} classifier (it would be downloaded)")
    if isinstance(mpp, bool) or not math.isfinite(mpp) or not 0 < mpp <= _MAX_MPP:
        raise InputError(slide, f"CellViT++ needs a slide mpp in (0, {_MAX_MPP}], got {mpp!r}")
    if magnification is not None and (
        isinstance(magnification, bool) or not float(magnification).is_integer() or magnification <= 0
    ):
        raise ConfigError(
            "magnification", f"CellViT++ takes a positive whole-number magnification, got {magnification!r}"
        )
    if isinstance(batch_size, bool) or not 2 <= batch_size <= 31:
        raise ConfigError(BATCH_SIZE_KEY, f"CellViT++ accepts a batch size from 2 to 31, got {batch_size!r}")


def cellvit_command(
    *,
    slide: Path,
    outdir: Path,
    model: Path,
    mpp: float,
    magnification: float | None = None,
    taxonomy: str = "pannuke",
    batch_size: int = 8,
    gpu: int = 0,
    geojson: bool = False,
    cpu_count: int | None = None,
    ray_workers: int | None = None,
) -> list[str]:
    """Return the argv that runs CellViT++ on one slide with local weights (nothing is downloaded).

    The argv starts with ``env CELLVIT_CACHE=<model's directory>`` so it is self-contained; run it in the
    CellViT environment (``envs/cellvit.yaml``) on a GPU node. Results land at
    ``cellvit_output_path(outdir, slide)``.

    Parameters
    ----------
    slide
        Whole-slide image (any format OpenSlide reads, or a DICOM ``.dcm``).
    outdir
        Output directory; CellViT++ writes ``<outdir>/<slide stem>/cells.json`` and
        ``<outdir>/processed_files.json``.
    model
        Local checkpoint, named ``CellViT-SAM-H-x40-AMP.pth`` (``--model SAM``) or
        ``CellViT-256-x40-AMP.pth`` (``--model HIPT``); its directory becomes ``$CELLVIT_CACHE``.
    mpp
        µm per level-0 pixel of the slide (``--wsi_mpp``; CellViT++ needs at most 0.75).
    magnification
        Objective magnification (``--wsi_magnification``, a whole number); omitted when ``None``, then
        CellViT++ takes it from the slide metadata or guesses it from ``mpp``.
    taxonomy
        ``--nuclei_taxonomy`` (``pannuke`` by default; see ``CELLVIT_TAXONOMIES``).
    batch_size
        ``--batch_size``, 2 to 31 (CellViT++ lowers it further to fit the GPU memory).
    gpu
        CUDA device index (``--gpu``).
    geojson
        Also write ``cells.geojson`` / ``cell_detection.geojson`` (``--geojson``).
    cpu_count, ray_workers
        ``--cpu_count`` / ``--ray_worker`` when given. CellViT++ 1.0.9 derives ``(cpus - 2) // 6`` Ray
        workers, i.e. none (and fails) when it sees fewer than 8 CPUs; pass ``ray_workers=1`` there.

    Returns
    -------
    list of str
        ``["env", "CELLVIT_CACHE=...", "cellvit-inference", <global options>, "process_wsi",
        "--wsi_path", ..., "--wsi_mpp", ...(, "--wsi_magnification", ...)]``.

    Raises
    ------
    MissingInputError
        ``model`` (or the classifier a non-PanNuke taxonomy needs) is not in the weights directory.
    InputError
        ``model`` is not named as CellViT++ expects.
    ConfigError, UsageError
        An option CellViT++ would reject; :class:`~bitro.errors.InputError` for a slide without a usable mpp.
    """
    model = require_file(model, "CellViT++ checkpoint")
    model_name = cellvit_model_name(model)
    weights_dir = model.absolute().parent
    _check_options(Path(slide), model_name, weights_dir, taxonomy, mpp, magnification, batch_size)
    if isinstance(gpu, bool) or gpu < 0:
        raise UsageError("--gpu", f"must be a CUDA device index >= 0, got {gpu!r}")
    environment = [f"{key}={value}" for key, value in cellvit_environment(weights_dir).items()]
    argv = ["env", *environment, CELLVIT_EXECUTABLE, "--model", model_name, "--nuclei_taxonomy", taxonomy]
    argv += ["--gpu", str(gpu), "--batch_size", str(batch_size), "--outdir", str(outdir)]
    if geojson:
        argv.append("--geojson")
    if cpu_count is not None:
        argv += ["--cpu_count", str(int(cpu_count))]
    if ray_workers is not None:
        argv += ["--ray_worker", str(int(ray_workers))]
    argv += ["process_wsi", "--wsi_path", str(slide), "--wsi_mpp", repr(float(mpp))]
    if magnification is not None:
        argv += ["--wsi_magnification", str(int(magnification))]
    return argv


def cellvit_output_path(outdir: Path, slide: Path) -> Path:
    """Return where CellViT++ writes the cell file (``cells.json``) of ``slide``.

    ``<outdir>/<slide stem>/cells.json`` (the stem drops only the last suffix: ``a.ome.tif`` → ``a.ome``);
    for a DICOM ``.dcm`` file, or a folder of them, the folder name replaces the stem.
    """
    slide = Path(slide)
    if slide.suffix.lower() == ".dcm":
        name = slide.parent.name
    elif slide.is_dir():
        name = slide.name
    else:
        name = slide.stem
    return Path(outdir) / name / "cells.json"


def _snappy_decompress(raw: bytes, path: Path) -> bytes:
    """Decompress raw (unframed) Snappy, as ``python-snappy``'s ``snappy.compress`` writes it."""
    import pyarrow

    size = shift = 0
    for byte in raw[:10]:
        size |= (byte & 0x7F) << shift
        shift += 7
        if byte < 0x80:
            break
    else:
        raise InputError(path, "is not Snappy-compressed (bad length header)")
    if size > 64 * len(raw) + 64:  # Snappy cannot expand data this much: not a Snappy stream
        raise InputError(path, "is not Snappy-compressed (implausible length header)")
    try:
        return pyarrow.Codec("snappy").decompress(raw, decompressed_size=size, asbytes=True)
    except (OSError, ValueError, pyarrow.ArrowException) as exc:
        raise InputError(path, f"is not Snappy-compressed ({exc})") from exc


def _load(path: Path) -> Any:
    """Return the parsed JSON of a CellViT ``.json``/``.geojson`` file, Snappy-decompressed if needed."""
    raw = path.read_bytes()
    if path.name.lower().endswith(".snappy"):
        raw = _snappy_decompress(raw, path)
    try:
        return json.loads(raw.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(path, f"is not valid JSON ({exc})") from exc


def _type_names(type_map: Any, path: Path) -> tuple[dict[int, str], bool]:
    """Return ``{type number: class name}`` from a ``type_map``, and whether it is the original CellViT's.

    CellViT++ writes ``{"1": "Neoplastic", ...}``; the original CellViT writes the inverse,
    ``{"Background": 0, "Neoplastic": 1, ...}``. A "background" class maps to ``None``.
    """
    if type_map is None:
        return dict(PANNUKE_TYPE_NAMES), False
    if not isinstance(type_map, dict) or not type_map:
        raise InputError(path, f'"type_map" must be a non-empty object, found {type(type_map).__name__}')
    inverted = all(isinstance(v, int) and not isinstance(v, bool) for v in type_map.values())
    pairs = [(v, k) for k, v in type_map.items()] if inverted else list(type_map.items())
    names: dict[int, str] = {}
    for number, name in pairs:
        try:
            key = int(number)
        except (TypeError, ValueError) as exc:
            raise InputError(path, f'"type_map" has a non-integer type {number!r}') from exc
        if str(name).lower() != "background":
            names[key] = str(name)
    return names, inverted


def _read_cells_json(path: Path, data: Any) -> gpd.GeoDataFrame:
    """Convert CellViT(++) ``cells.json`` (``{"wsi_metadata", "type_map", "cells": [...]}``)."""
    if not isinstance(data, dict) or not isinstance(data.get("cells"), list):
        raise InputError(path, 'expected a CellViT cell file: a JSON object with a "cells" list')
    names, original = _type_names(data.get("type_map"), path)
    metadata = data.get("wsi_metadata") or {}
    downsampling = metadata.get("downsampling", 1) if isinstance(metadata, dict) else 1
    if (original or "processed_patches" in data) and downsampling not in (1, 1.0, None):
        raise InputError(
            path,
            f"original-CellViT cells with downsampling {downsampling}: its contours are not scaled to "
            "level 0 (only CellViT++ scales them); rerun with CellViT++ on the full-resolution level",
        )
    cells = data["cells"]
    if not cells:
        raise InputError(path, "holds no cells")
    classes: list[str | None] = []
    geoms: list[Any] = []
    for number, cell in enumerate(cells):
        what = f"cell {number}"
        if not isinstance(cell, dict):
            raise InputError(path, f"{what} is not an object")
        if "contour" not in cell:
            hint = " (cell_detection.json holds centroids only; read cells.json)" if number == 0 else ""
            raise InputError(path, f"{what} has no contour{hint}")
        geoms.append(_contour_polygon(cell["contour"], path, what))
        classes.append(_type_name(cell.get("type"), names, path, what))
    return _frame(list(range(len(geoms))), classes, geoms, path)


def read_cellvit_cells(path: Path) -> gpd.GeoDataFrame:
    """Read the cells CellViT++ (or the original CellViT) wrote for one slide.

    Parameters
    ----------
    path
        ``cells.json`` (CellViT++: ``{"wsi_metadata", "type_map": {"1": "Neoplastic", ...},
        "cells": [{"bbox", "centroid", "contour", "type_prob", "type", "patch_coordinates",
        "cell_status", "offset_global", "edge_position", ...}]}``; the original CellViT's
        ``cell_detection/cells.json`` has the inverse ``type_map`` and ``processed_patches``),
        ``cells.geojson`` (one MultiPolygon Feature per class), or either with ``.snappy``
        (``--compression``). Contours are ``[x, y]`` level-0 pixels and are used as they are.

    Returns
    -------
    geopandas.GeoDataFrame
        As ``bitro.io.cells.read_cell_segmentation``: ``cell_id`` (0..n-1, file order — CellViT has
        no ids), ``class`` (the file's ``type_map`` names, e.g. PanNuke's Neoplastic/Inflammatory/
        Connective/Dead/Epithelial; ``None`` for background) and ``geometry`` (shapely Polygon,
        level-0 pixels; self-touching contours repaired).

    Raises
    ------
    MissingInputError, InputError
        Missing file, bad JSON/Snappy, no ``cells`` list, a cell without a contour or with fewer than
        3 contour points, a type missing from ``type_map``, or original-CellViT output made on a
        downsampled level.
    """
    path = require_file(path, "CellViT cell file")
    name = path.name.lower().removesuffix(".snappy")
    if not name.endswith((".json", ".geojson")):
        raise InputError(path, "unknown CellViT output (expected cells.json, cells.geojson or .snappy)")
    data = _load(path)
    if name.endswith(".geojson") or isinstance(data, list):
        return _read_geojson(path, data)
    return _read_cells_json(path, data)
