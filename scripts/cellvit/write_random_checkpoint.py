"""Write a CellViT-256 checkpoint with random weights, in the format CellViT++ 1.0.9's inference loads.

Run with the CellViT venv's interpreter (``scripts/cellvit/build_venv.sh``)::

    .cellvit-venv/bin/python scripts/cellvit/write_random_checkpoint.py DIR

writes ``DIR/CellViT-256-x40-AMP.pth`` (the file name ``cellvit-inference --model HIPT`` looks up in
``$CELLVIT_CACHE``). The format is what ``cellvit/inference/inference.py`` (``CellViTInference._load_model``
and ``process_wsi``) and ``postprocessing_numpy.BatchPoolingActor`` read from it: a ``torch.save``d dict
with ``arch`` (``"CellViT256"``), ``model_state_dict`` (the state dict of
``cellvit.models.cell_segmentation.cellvit_256.CellViT256``, loaded strictly) and ``config`` (the run
configuration flattened with ``.``: ``data.num_nuclei_classes``, ``data.num_tissue_classes``,
``model.regression_loss``, ``training.mixed_precision``, ``transformations.normalize.{mean,std}``,
``dataset_config.nuclei_types``). PanNuke's 6 nuclear classes (background included) and 19 tissue
classes, as in the published CellViT-256. The weights are random (seeded): the cells it finds are
nonsense, only the wiring is tested. After writing, the file is loaded back exactly as the inference
loads it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from cellvit.models.cell_segmentation.cellvit_256 import CellViT256
from cellvit.utils.tools import flatten_dict, unflatten_dict

NAME = "CellViT-256-x40-AMP.pth"
NUCLEI_TYPES = {
    "Background": 0,
    "Neoplastic": 1,
    "Inflammatory": 2,
    "Connective": 3,
    "Dead": 4,
    "Epithelial": 5,
}


def main() -> None:
    out_dir = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    config = {
        "arch": "CellViT256",
        "data": {"num_nuclei_classes": len(NUCLEI_TYPES), "num_tissue_classes": 19},
        "model": {"backbone": "ViT256", "regression_loss": False},
        "training": {"mixed_precision": False},
        "transformations": {"normalize": {"mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}},
        "dataset_config": {"nuclei_types": NUCLEI_TYPES},
    }
    model = CellViT256(model256_path=None, num_nuclei_classes=6, num_tissue_classes=19)
    path = out_dir / NAME
    torch.save(
        {"arch": "CellViT256", "model_state_dict": model.state_dict(), "config": flatten_dict(config)},
        path,
    )
    # Load it back as CellViTInference._load_model does (strict load_state_dict).
    checkpoint = torch.load(path, map_location="cpu")
    run_conf = unflatten_dict(checkpoint["config"], ".")
    loaded = CellViT256(
        model256_path=None,
        num_nuclei_classes=run_conf["data"]["num_nuclei_classes"],
        num_tissue_classes=run_conf["data"]["num_tissue_classes"],
        regression_loss=run_conf["model"].get("regression_loss", False),
    )
    print(loaded.load_state_dict(checkpoint["model_state_dict"]))
    n = sum(p.numel() for p in loaded.parameters())
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB, arch {checkpoint['arch']}, {n} parameters)")


if __name__ == "__main__":
    main()
