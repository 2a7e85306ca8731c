"""``bitro export-model``: a trained model and all that applying it needs, in one portable folder and zip.

The bundle folder holds (names in :class:`~bitro.bundle.files.BundleFile`):

- ``model.safetensors``, ``model.json`` (and ``adapter.safetensors`` for a LoRA model): the model as
  :mod:`bitro.train.saved` wrote it, byte for byte;
- ``pca.npz``: the cohort's PCA basis (cohort feature scope only);
- ``stain_reference.json``: the reference stains every slide is normalised to;
- ``cv_metrics.tsv``, ``cv_gene_pcc.tsv``: the cohort's cross-validation tables, when given;
- ``MODEL_CARD.md``: what the model predicts, its training cohort and CV scores, its encoder, its limits;
- ``bundle.json``: the machine-readable record (``docs/predict.md``), with every other file's sha256.

Nothing is pickled: tensors are safetensors, arrays ``.npz`` of plain numbers, the rest JSON and text.
The folder is built under a temporary name beside ``out_dir`` and renamed when complete (an older bundle
there is replaced only then); the zip, ``<out_dir>.zip``, likewise.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import zipfile
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from bitro import __version__
from bitro._atomic import atomic_path
from bitro._hashing import file_sha256
from bitro.bundle.card import model_card
from bitro.bundle.cv import cv_summary, gene_pcc
from bitro.bundle.files import ENCODER_KEYS, FORMAT, BundleFile
from bitro.errors import BundleError, ConfigError, InputError
from bitro.features.reduce import read_basis
from bitro.genes.normalise import TargetTransform
from bitro.io.validate import require_file
from bitro.train.saved import LORA_FORMAT, load_trained

log = logging.getLogger("bitro")

#: The keys of ``embeddings.json`` a bundle cannot be checked without.
REQUIRED_ENCODER_KEYS = ("encoder", "weights_sha256", "mode", "dim", "crop_size", "mpp")


def trained_level(space: str) -> str:
    """The level a model was trained on, from the space of its targets: TPM is bulk, counts are spots."""
    return "bulk" if space == "tpm" else "spot"


def encoder_record(description: Mapping[str, Any], *, source: str) -> dict[str, Any]:
    """The encoder a bundle records, from one training sample's ``embeddings.json``."""
    missing = [k for k in REQUIRED_ENCODER_KEYS if description.get(k) is None]
    if missing:
        raise InputError(source, f"lacks {missing}: not the embeddings.json of a bitro embedding")
    return {name: description.get(key) for name, key in ENCODER_KEYS.items()}


def _json(record: Any) -> str:
    def plain(value: Any) -> Any:
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        raise TypeError(f"{type(value).__name__} cannot be recorded in {BundleFile.RECORD}")

    return json.dumps(record, indent=1, allow_nan=False, default=plain) + "\n"


def _check_npz(path: Path) -> None:
    """Refuse an ``.npz`` any of whose arrays needs pickle to load."""
    try:
        with np.load(path, allow_pickle=False) as data:
            for name in data.files:
                data[name]
    except ValueError as exc:
        raise InputError(path, f"holds an array that needs pickle to load ({exc})") from exc


def _basis_file(
    meta: Mapping[str, Any], basis: str | os.PathLike[str] | None, in_dim: int, dim: int
) -> Path | None:
    """The cohort's PCA basis a cohort-scope model needs (checked against the model and the encoder)."""
    features = meta.get("features") or {}
    if features.get("scope", "sample") != "cohort":
        if basis is not None:
            log.info("the model reads per-sample features: %s is not bundled", basis)
        return None
    path = basis if basis is not None else features.get("basis")
    if path is None:
        raise ConfigError("--basis", "the model reads cohort-scope features: give its cohort's pca.npz")
    path = require_file(path, "PCA basis")
    pca = read_basis(path)
    _check_npz(path)
    if pca.n_components != in_dim:
        raise BundleError(path, f"projects to {pca.n_components} features, the model reads {in_dim}")
    if pca.mean.shape[0] != dim:
        raise BundleError(path, f"projects {pca.mean.shape[0]}-d embeddings, the encoder's are {dim}-d")
    return path


def _cv_record(
    cv_metrics: str | os.PathLike[str] | None,
    gene_pcc_table: str | os.PathLike[str] | None,
    *,
    genes: list[str],
    level: str,
    protocol: str | None,
) -> dict[str, Any] | None:
    if cv_metrics is None and gene_pcc_table is None:
        return None
    return {
        "protocol": protocol,
        "scores": cv_summary(cv_metrics) if cv_metrics is not None else [],
        "gene_pcc": (
            gene_pcc(gene_pcc_table, genes, level="slide" if level == "bulk" else "spot")
            if gene_pcc_table is not None
            else None
        ),
    }


def zip_path(out_dir: str | os.PathLike[str]) -> Path:
    """Where :func:`export_bundle` writes the zip of the bundle folder ``out_dir``."""
    out = Path(out_dir)
    return out.with_name(out.name + BundleFile.ZIP_SUFFIX)


def export_bundle(
    model_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    basis: str | os.PathLike[str] | None,
    stain_reference: str | os.PathLike[str],
    embeddings_description: Mapping[str, Any],
    settings: Mapping[str, Any],
    cohort: Mapping[str, Any],
    cv_metrics: str | os.PathLike[str] | None = None,
    gene_pcc_table: str | os.PathLike[str] | None = None,
    make_zip: bool = True,
) -> Path:
    """Write the bundle folder ``out_dir`` (module docstring) and, with ``make_zip``, ``<out_dir>.zip``.

    Parameters
    ----------
    model_dir
        A trained model's folder (a fold's, or the cohort's ``final/``).
    basis
        The cohort's ``pca.npz`` the model's features were projected on (cohort scope; default: the path
        ``model.json`` records). Ignored for a model of per-sample features.
    stain_reference
        The reference stain JSON (``bitro stain-reference``) the cohort's slides were normalised to.
    embeddings_description
        One training sample's ``embeddings.json``: the encoder, its weights' sha256, crop size and pixel size.
    settings
        The run's settings by section (``tissue``, ``units``, ``stain``, ``segmentation``, ``crops``,
        ``features``), as the workflow's config holds them; ``bitro predict-slide`` reads them back.
    cohort
        The training cohort: ``name``, ``level``, ``format``, ``n_samples``, ``n_patients``, ``samples``,
        ``n_units``, ``n_cells`` and, optionally, the CV ``protocol``.
    cv_metrics
        The cohort's ``metrics.tsv`` (``bitro summarise``).
    gene_pcc_table
        The cohort's per-gene PCC table (``pcc_genes.tsv`` of ``bitro plot``).
    make_zip
        Also write ``<out_dir>.zip`` holding the folder.

    Returns
    -------
    Path
        The bundle folder.
    """
    model_dir, out = Path(model_dir), Path(out_dir)
    model, meta = load_trained(model_dir)
    transform = TargetTransform.from_dict(meta["transform"])
    genes = list(meta["genes"])
    encoder = encoder_record(embeddings_description, source="--embeddings-description")
    basis_path = _basis_file(meta, basis, model.config.in_dim, int(encoder["dim"]))
    reference = require_file(stain_reference, "stain reference")
    try:
        if "models" not in json.loads(reference.read_text()):
            raise InputError(reference, "is not a stain reference (no 'models'): see bitro stain-reference")
    except json.JSONDecodeError as exc:
        raise InputError(reference, f"is not JSON ({exc})") from exc
    level = trained_level(transform.space)
    data_level = str(cohort.get("level") or ("bulk" if level == "bulk" else "st"))
    if trained_level("tpm" if data_level == "bulk" else "counts") != level:
        raise ConfigError(
            "--cohort-json", f"level {data_level!r} disagrees with the model's {transform.space}"
        )
    copies: dict[str, Path] = {
        BundleFile.WEIGHTS: model_dir / BundleFile.WEIGHTS,
        BundleFile.MODEL: model_dir / BundleFile.MODEL,
        BundleFile.STAIN_REFERENCE: reference,
    }
    if meta["format"] == LORA_FORMAT:
        copies[BundleFile.ADAPTER] = model_dir / meta.get("transfer", {}).get("adapter", BundleFile.ADAPTER)
    if basis_path is not None:
        copies[BundleFile.PCA] = basis_path
    if cv_metrics is not None:
        copies[BundleFile.CV_METRICS] = require_file(cv_metrics, "metrics table")
    if gene_pcc_table is not None:
        copies[BundleFile.CV_GENE_PCC] = require_file(gene_pcc_table, "per-gene PCC table")
    record: dict[str, Any] = {
        "format": FORMAT,
        "bitro_version": __version__,
        "created_utc": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "level": data_level,
        "trained_level": level,
        "space": transform.space,
        "genes": genes,
        "features": {
            "scope": (meta.get("features") or {}).get("scope", "sample"),
            "basis": BundleFile.PCA if basis_path is not None else None,
            "n_features": model.config.in_dim,
        },
        "encoder": encoder,
        "settings": dict(settings),
        "cohort": dict(cohort),
        "cv": _cv_record(
            cv_metrics, gene_pcc_table, genes=genes, level=level, protocol=cohort.get("protocol")
        ),
        "model": {
            "format": meta["format"],
            "fold": (meta.get("fold") or {}).get("name"),
            "train_samples": (meta.get("fold") or {}).get("train"),
            "result": meta.get("result"),
        },
    }
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        for name, source in copies.items():
            shutil.copyfile(require_file(source, name), tmp / name)
        (tmp / BundleFile.CARD).write_text(model_card(record))
        record["files"] = {p.name: file_sha256(p) for p in sorted(tmp.iterdir())}
        (tmp / BundleFile.RECORD).write_text(_json(record))
    if make_zip:
        with atomic_path(zip_path(out)) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(out.iterdir()):
                archive.write(path, f"{out.name}/{path.name}")
    log.info("bundle of %d genes (%s, %s) -> %s", len(genes), level, transform.space, out)
    return out
