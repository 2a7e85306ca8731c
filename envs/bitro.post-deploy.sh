#!/usr/bin/env bash
# Run by snakemake --use-conda after creating envs/bitro.yaml: HistomicsTK with --no-deps, which a conda
# env file's pip section cannot express (its declared dependencies pin an old dask and pull GDAL).
# The pins are requirements/histomicstk.txt's (tests/test_envs.py checks they agree).
set -euo pipefail
python -m pip install --no-deps \
    histomicstk==1.4.0 \
    large-image==1.35.6 \
    cachetools==8.0.2 \
    ctk-cli==1.5 \
    girder-slicer-cli-web==5.0.21 \
    nimfa==1.4.0
