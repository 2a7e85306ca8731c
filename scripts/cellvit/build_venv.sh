#!/usr/bin/env bash
# Build a virtual environment for CellViT++ inference (PyPI `cellvit==1.0.9`) apart from bitro's own.
#
# cellvit pins numpy<2, shapely<=2.0.5, pydantic<2, opencv-python-headless==4.7.0.72, ujson==5.8.0 and
# pydicom==2.4.4, which clash with the main stack, so it gets a venv of its own (envs/cellvit.yaml is the
# conda equivalent for GPU nodes). Torch is installed first and separately, as upstream asks, as the CPU
# build so that the venv stays small (no CUDA libraries); pip then keeps it when it resolves cellvit.
#
# Usage: scripts/cellvit/build_venv.sh [VENV_DIR]     (default: .cellvit-venv in the repository root)
# Environment:
#   PYTHON       interpreter to build the venv from (default: python3.11, else python3.10, else python3)
#   TORCH_WHEEL        a local CPU torch wheel to install instead of downloading (e.g. /opt/wheels/torch-*.whl)
#   TORCHVISION_WHEEL  the matching local CPU torchvision wheel; without it PyPI's torchvision is taken,
#                      whose compiled operators need CUDA torch (scripts/cellvit/run_cpu.py copes with that)
#   TORCH_SPEC, TORCHVISION_SPEC  requirements when downloading (default: torch, torchvision)
#   TORCH_INDEX        index of CPU wheels (default: https://download.pytorch.org/whl/cpu)
# Idempotent: once a build has finished (marker file in the venv), a rerun does nothing; a build cut short
# is completed by a rerun.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${1:-$ROOT/.cellvit-venv}"
CELLVIT_VERSION="1.0.9"

MARKER="$VENV/.built-cellvit-$CELLVIT_VERSION"  # written last, once everything imports
if [[ -f "$MARKER" && -x "$VENV/bin/cellvit-inference" ]]; then
    echo "cellvit venv already built: $VENV"
    exit 0
fi

if [[ -z "${PYTHON:-}" ]]; then
    for candidate in python3.11 python3.10 python3; do
        if command -v "$candidate" >/dev/null && "$candidate" -c "" 2>/dev/null; then
            PYTHON="$candidate"
            break
        fi
    done
fi
echo "building $VENV with $("$PYTHON" --version)"
"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --no-input)

# 1. torch and torchvision, CPU builds.
if [[ -n "${TORCH_WHEEL:-}" ]]; then
    "${PIP[@]}" "$TORCH_WHEEL" ${TORCHVISION_WHEEL:+"$TORCHVISION_WHEEL"}
else
    "${PIP[@]}" --index-url "${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}" "${TORCH_SPEC:-torch}" \
        "${TORCHVISION_SPEC:-torchvision}"
fi
TORCH_VERSION="$("$VENV/bin/python" -c 'import torch; print(torch.__version__.split("+")[0])')"

# 2. cellvit and its pins, with torch held at the CPU build just installed. pip cannot resolve them
#    together: pathopatch (cellvit's slide reader) pins setuptools<=65.6.3 while torch >= 2.13 requires
#    setuptools>=77 (and resolving freely pulls a CUDA torch with several GB of nvidia-* wheels). So
#    cellvit, pathopatch (and, when step 1 brought none, PyPI's torchvision matching torch: 0.<minor + 15>)
#    go in without dependencies,
#    and then every other requirement of cellvit and pathopatch, resolved by pip with torch held. Also
#    openslide-bin, so that openslide-python finds the OpenSlide library without a system package.
CONSTRAINTS="$VENV/torch-constraint.txt"
echo "torch==$TORCH_VERSION" >"$CONSTRAINTS"
"${PIP[@]}" --no-deps "cellvit==$CELLVIT_VERSION" "pathopatch==1.0.10"
if ! "$VENV/bin/python" -c "import importlib.metadata as m; m.version('torchvision')" 2>/dev/null; then
    TORCHVISION_VERSION="$("$VENV/bin/python" -c 'import torch; minor = int(torch.__version__.split(".")[1]); print(f"0.{minor + 15}.*")')"
    "${PIP[@]}" --no-deps "torchvision==$TORCHVISION_VERSION"
fi
mapfile -t REQUIREMENTS < <("$VENV/bin/python" - <<'PY'
import importlib.metadata as metadata
import re

held = {"torch", "torchvision", "setuptools", "pathopatch"}
seen = set()
for package in ("cellvit", "pathopatch"):
    for requirement in metadata.requires(package) or []:
        name = re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0].lower().replace("_", "-")
        if name not in held and requirement not in seen:
            seen.add(requirement)
            print(requirement)
PY
)
"${PIP[@]}" -c "$CONSTRAINTS" "${REQUIREMENTS[@]}" openslide-bin
"$VENV/bin/python" -m pip check || true  # reports the setuptools pin of pathopatch, nothing else

PYTHONPATH="$ROOT/scripts/cellvit" "$VENV/bin/python" -c "
from run_cpu import import_torchvision
print(import_torchvision())
import cellvit.inference.inference, torch, numpy, shapely, pydantic, cv2
print('cellvit venv ok:', 'torch', torch.__version__, 'numpy', numpy.__version__, 'shapely', shapely.__version__,
      'pydantic', pydantic.VERSION, 'opencv', cv2.__version__)
"
touch "$MARKER"
