"""The ``gpu`` check: CUDA devices torch sees, a failure only when the config asks for a GPU."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from typing import Any

from bitro.doctor.common import _section, cohort_segmentation
from bitro.doctor.report import Result


def gpu_requests(config: Mapping[str, Any], cohorts: Sequence[str]) -> list[str]:
    """The config keys that ask for a GPU."""
    asks = [key for key in ("features", "training") if _section(config, key).get("gpu")]
    asks = [f"{key}.gpu" for key in asks]
    all_cohorts = _section(config, "cohorts")
    cellvit = [
        c
        for c in cohorts
        if cohort_segmentation(config, _section(all_cohorts, c)).get("backend") == "cellvit"
    ]
    if cellvit:
        asks.append(f"segmentation.backend cellvit ({', '.join(cellvit)})")
    return asks


def nvidia_smi_gpus() -> list[str]:
    """GPUs ``nvidia-smi -L`` lists (empty when it is absent or fails)."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        done = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in done.stdout.splitlines() if line.startswith("GPU ")]


def torch_gpus() -> tuple[list[str], str]:
    """CUDA devices torch sees, and a description of the torch build."""
    import torch

    build = f"torch {torch.__version__}, " + (
        f"CUDA {torch.version.cuda}" if torch.version.cuda else "CPU build"
    )
    if not torch.cuda.is_available():
        return [], build
    return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())], build


def check_gpu(requests: Sequence[str], *, elsewhere: bool = False) -> list[Result]:
    """GPU visibility; a failure only when ``requests`` is not empty and no GPU is visible.

    ``elsewhere``: GPU jobs run on other nodes than this check (a cluster), so a missing GPU only warns.
    """
    devices, build = torch_gpus()
    asked = "; asked for by " + ", ".join(requests) if requests else "; the config asks for none"
    if devices:
        names = ", ".join(f"cuda:{i} {name}" for i, name in enumerate(devices))
        return [Result("gpu", "cuda", "ok", f"{len(devices)} CUDA device(s): {names} ({build}){asked}")]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    env = "" if visible is None else f", CUDA_VISIBLE_DEVICES={visible!r}"
    if not requests:
        return [Result("gpu", "cuda", "ok", f"no CUDA device visible ({build}{env}){asked}")]
    if elsewhere:
        text = f"no CUDA device visible on this node ({build}){asked}: GPU jobs run where Slurm puts them"
        return [Result("gpu", "cuda", "warn", text)]
    only_cellvit = all(r.startswith("segmentation.backend cellvit") for r in requests)
    smi = nvidia_smi_gpus() if only_cellvit else []
    if smi:
        text = (
            f"torch sees no GPU ({build}), nvidia-smi lists {len(smi)}; CellViT++ runs in envs/cellvit.yaml"
        )
        return [Result("gpu", "cuda", "ok", text + asked)]
    text = f"no CUDA device visible (torch.cuda.is_available() is False; {build}{env}){asked}"
    if "CPU build" in build:
        text += ": this torch is a CPU build (requirements/cpu.txt); use envs/bitro.yaml on the GPU node"
    return [Result("gpu", "cuda", "fail", text)]
