"""Shared test fixtures."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pytest

#: The repository's root and its workflow.
REPO = Path(__file__).resolve().parents[1]
SNAKEFILE = REPO / "workflow" / "Snakefile"
#: The Snakemake of the environment the tests run in (it imports the same bitro).
SNAKEMAKE = Path(sys.executable).with_name("snakemake")


def smooth_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Return a smooth, tissue-coloured H×W×3 uint8 image (compresses well under JPEG)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    channels = []
    for base in (200.0, 120.0, 170.0):
        fx, fy, phase = rng.uniform(0.005, 0.02), rng.uniform(0.005, 0.02), rng.uniform(0, 6.3)
        channels.append(base + 45.0 * np.sin(fx * xx + phase) * np.cos(fy * yy))
    return np.clip(np.stack(channels, axis=-1), 0, 255).astype(np.uint8)


def _reduce(image: np.ndarray, factor: int) -> np.ndarray:
    """Block-mean downsample by an integer factor (edges cropped to whole blocks)."""
    if factor == 1:
        return image
    h, w = image.shape[0] // factor, image.shape[1] // factor
    blocks = image[: h * factor, : w * factor].reshape(h, factor, w, factor, -1).astype(np.float64)
    return np.rint(blocks.mean(axis=(1, 3))).astype(np.uint8)


def write_pyramid_tiff(
    path: Path,
    image: np.ndarray,
    *,
    mpp: float | None = 0.5,
    downsamples: Sequence[int] = (1, 4),
    ome: bool = False,
    compression: str | None = "jpeg",
    unit: str = "CENTIMETER",
) -> Path:
    """Write a tiled pyramidal TIFF.

    Generic layout: one IFD per level, reduced levels ``subfiletype=1``, ``XResolution`` per ``unit``.
    ``ome=True``: OME-TIFF, reduced levels as SubIFDs of level 0, pixel size as OME ``PhysicalSizeX``.
    ``mpp=None`` writes no pixel size at all.
    """
    import tifffile

    levels = [_reduce(image, ds) for ds in downsamples]
    options = {"tile": (256, 256), "compression": compression, "photometric": "rgb"}
    with tifffile.TiffWriter(path, bigtiff=True, ome=ome) as writer:
        if ome:
            metadata = {"axes": "YXS"}
            if mpp is not None:
                metadata |= {"PhysicalSizeX": mpp, "PhysicalSizeY": mpp}
            writer.write(levels[0], subifds=len(levels) - 1, metadata=metadata, **options)
            for level in levels[1:]:
                writer.write(level, subfiletype=1, **options)
            return path
        per_unit = 1e4 if unit == "CENTIMETER" else 25400.0
        for ds, level in zip(downsamples, levels, strict=True):
            extra: dict[str, object] = {"metadata": None, "subfiletype": 0 if ds == 1 else 1}
            if mpp is not None:
                res = per_unit / (mpp * ds)
                extra |= {"resolution": (res, res), "resolutionunit": unit}
            writer.write(level, **options, **extra)
    return path


@pytest.fixture
def write_slide() -> Callable[..., Path]:
    """Return ``write_pyramid_tiff(path, image, *, mpp, downsamples, ome, compression, unit)``."""
    return write_pyramid_tiff


@pytest.fixture
def rgb_image() -> Callable[..., np.ndarray]:
    """Return ``smooth_rgb(height, width, seed=0)``."""
    return smooth_rgb


@pytest.fixture(scope="session")
def small_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The ``small`` demo preset (seed 3), generated once per test session: (root, summary)."""
    from bitro.demo import generate_demo, preset

    out = tmp_path_factory.mktemp("small_demo")
    summary = generate_demo(out, config=preset("small", seed=3), progress=False)
    return out, summary


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the slow end-to-end tests first: with two xdist workers, the long ones then overlap the rest
    of the suite instead of running alone at its end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


# --------------------------------------------------------------------------------------------------
# the workflow
# --------------------------------------------------------------------------------------------------


def run_snakemake(
    workdir: Path,
    *args: str,
    snakefile: Path | None = SNAKEFILE,
    cores: int = 1,
    timeout: int = 600,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run Snakemake in ``workdir`` on ``snakefile`` (the repository's workflow; ``None``: the one Snakemake
    finds in ``workdir``) with ``args``; returns the finished process, stdout and stderr together in
    ``stdout``. ``env`` is added to the environment; the environment's ``bin`` goes first on ``PATH``, so
    that the jobs run the same ``bitro``."""
    command = [str(SNAKEMAKE), *(["--snakefile", str(snakefile)] if snakefile is not None else [])]
    return subprocess.run(
        [*command, "--cores", str(cores), *args],
        cwd=workdir,
        env={
            **os.environ,
            "PATH": f"{SNAKEMAKE.parent}{os.pathsep}{os.environ.get('PATH', '')}",
            **(env or {}),
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )


def job_counts(dry_run_output: str) -> dict[str, int]:
    """Return rule → number of jobs from the job table of a Snakemake dry run's output."""
    counts = {}
    for line in dry_run_output.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    return counts
