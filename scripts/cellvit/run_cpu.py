"""Run CellViT++ 1.0.9's own WSI inference (``cellvit-inference``) on the CPU, for a wiring test.

Run with the CellViT venv's interpreter and exactly the arguments of ``cellvit-inference`` (those
``bitro cellvit-script`` writes into ``run.sh``)::

    CELLVIT_CACHE=DIR .cellvit-venv/bin/python scripts/cellvit/run_cpu.py --model HIPT \\
        --nuclei_taxonomy pannuke --gpu 0 --batch_size 2 --outdir OUT --cpu_count 4 --ray_worker 1 \\
        process_wsi --wsi_path SLIDE --wsi_mpp 0.5

``cellvit-inference`` itself cannot run without a CUDA GPU (version 1.0.9), at three places and with no
CPU option: its argument check (``cellvit/inference/cli.py``, ``InferenceConfiguration.__set_gpu``) asserts
``0 <= gpu < torch.cuda.device_count()`` ("AssertionError: GPU must be between 0 and -1");
``SystemConfiguration(gpu=...)`` (``cellvit/utils/ressource_manager.py``) raises ``SystemError:
Requesting non existing gpu index``; and ``CellViTInference`` (``cellvit/inference/inference.py``) sets
``self.device = f"cuda:{gpu_index}"`` unconditionally before moving the model there. This script is
``detect_cells.main`` for ``process_wsi`` with the arguments parsed and validated by the package's own
classes except the GPU index (``parse_arguments`` below), and two subclasses; nothing in the installed
package is changed:

* ``CPUSystemConfiguration``: the package's ``SystemConfiguration`` with the GPU fields filled as "none"
  (``gpu_count 0``, ``gpu_memory 0``, so the batch size is capped at 8 as for the smallest GPU) instead of
  raising; CPUs, memory and Ray workers are computed by the package's own code;
* ``CPUCellViTInference``: ``CellViTInference`` whose device is ``"cpu"``;
* ``RAY_GPUS_DEACTIVATION=1``, the package's own environment switch, without which each Ray
  post-processing actor asks for 0.1 GPU and none is ever scheduled (the run waits forever).

Everything else — the checkpoint loading, pathopatch's live patch dataset, the model's forward pass, the
Ray post-processing actors, the edge-cell cleaning and the writing of ``cells.json`` — is the package's
code as shipped.
Mixed precision must be off in the checkpoint (``training.mixed_precision: false``), because the package
autocasts on ``device_type="cuda"`` only.

One more workaround applies only where torchvision's compiled operators cannot load (here: a CPU torch
from a local wheel next to PyPI's CUDA-built torchvision, because the CPU wheel index is unreachable):
torchvision 0.28 then fails at import on ``register_fake("torchvision::nms")``. The two operator schemas
it registers fake kernels for (``nms``, ``qnms``) are declared first, so that ``import torchvision``
succeeds without compiled operators; CellViT++ uses only ``torchvision.transforms`` (pure Python), and
calling ``nms`` would still fail loudly. With a matching CPU torchvision this step does nothing.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch


def import_torchvision() -> str:
    """Import torchvision; declare its two fake-registered operators first if its ``_C`` cannot load."""
    try:
        import torchvision

        return "torchvision imported as installed"
    except RuntimeError as exc:
        if "torchvision::nms" not in str(exc):
            raise
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    library = torch.library.Library("torchvision", "DEF")
    library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    library.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
    import_torchvision.library = library  # type: ignore[attr-defined]
    import torchvision  # noqa: F401

    return "torchvision imported without its compiled operators (nms/qnms schemas declared)"


def parse_arguments(parser_class: type, configuration_class: type) -> object:
    """``InferenceWSIParser.parse_arguments`` without its GPU check.

    ``InferenceConfiguration`` asserts ``0 <= gpu < torch.cuda.device_count()``, which no value passes on
    a machine without CUDA ("GPU must be between 0 and -1"); the ``gpu`` entry is dropped before it is
    validated (it names a CUDA device, which the CPU run does not use) and everything else is validated
    as the package does.
    """
    import yaml

    options = vars(parser_class().parser.parse_args())
    if options["config"] is not None:
        with Path(options["config"]).open() as handle:
            config = yaml.safe_load(handle)
    else:
        config = parser_class()._transform_cli_to_yaml_structure(options)
    (config.get("inference") or {}).pop("gpu", None)
    return configuration_class(config)


def main() -> None:
    # The package's own switch: its Ray post-processing actors otherwise each ask for 0.1 GPU, and wait
    # for one forever on a machine without (postprocessing_numpy.create_batch_pooling_actor).
    os.environ["RAY_GPUS_DEACTIVATION"] = "1"
    print(import_torchvision(), flush=True)
    from cellvit.inference.cli import InferenceConfiguration, InferenceWSIParser
    from cellvit.inference.inference import CellViTInference
    from cellvit.utils import ressource_manager

    class CPUSystemConfiguration(ressource_manager.SystemConfiguration):
        """``SystemConfiguration`` without a GPU (its ``__init__`` raises when torch sees none)."""

        def __init__(self, gpu: int = 0) -> None:
            self.gpu_index = gpu
            (cpu_count, memory), env = ressource_manager.get_cpu_resources()
            self.cpu_count = int(cpu_count)
            self.memory = memory
            self.runtime_environment = env
            self.has_gpu = False
            self.gpu_count = 0
            self.gpu_memory = 0.0
            self.cupy = False
            self.cucim = False
            self.numba = ressource_manager.check_module("numba")
            self.ray = ressource_manager.check_module("ray")
            self._calculate_ray_worker()

    class CPUCellViTInference(CellViTInference):
        """``CellViTInference`` on the CPU (its ``__init__`` sets ``cuda:{gpu_index}``)."""

        def _load_model(self) -> None:
            self.device = "cpu"
            super()._load_model()
            if self.run_conf["training"].get("mixed_precision", False):
                raise SystemExit("the checkpoint asks for mixed precision, which CellViT++ runs on CUDA only")

    args = parse_arguments(InferenceWSIParser, InferenceConfiguration)
    if args["command"].lower() != "process_wsi":
        raise SystemExit("run_cpu.py runs process_wsi only")
    system = CPUSystemConfiguration(gpu=args["gpu"])
    if args["cpu_count"] is not None:
        system.overwrite_available_cpus(args["cpu_count"])
    if args["ray_remote_cpus"] is not None:
        system.overwrite_ray_remote_cpus(args["ray_remote_cpus"])
    if args["ray_worker"] is not None:
        system.overwrite_ray_worker(args["ray_worker"])
    if args["memory"] is not None:
        system.overwrite_memory(args["memory"])
    system.log_system_configuration()
    detector = CPUCellViTInference(
        model_name=args["model"],
        outdir=args["outdir"],
        system_configuration=system,
        nuclei_taxonomy=args["nuclei_taxonomy"],
        batch_size=args["batch_size"],
        geojson=args["geojson"],
        graph=args["graph"],
        compression=args["compression"],
        enforce_amp=args["enforce_amp"],
        debug=args["debug"],
    )
    detector.process_wsi(
        wsi_path=args["wsi_path"], wsi_mpp=args["wsi_mpp"], wsi_magnification=args["wsi_magnification"]
    )


if __name__ == "__main__":
    main()
