"""Reading a bundle back, from its folder or its zip, with every file checked against ``bundle.json``.

A zip is read in memory (nothing is downloaded, nothing is extracted beside it): its members are checked,
then only the files ``bundle.json`` names are written to a temporary folder for the loaders and removed.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from bitro.bundle.cv import best_genes
from bitro.bundle.files import FORMAT, BundleFile
from bitro.errors import BundleError
from bitro.features.phenotype import Phenotypes
from bitro.features.reduce import PCABasis, read_basis
from bitro.genes.normalise import TargetTransform
from bitro.model.bitro import BiTro
from bitro.train.saved import load_trained, saved_phenotypes


@dataclass
class Bundle:
    """A loaded bundle: its model in eval mode and all that applying it needs.

    Attributes
    ----------
    path
        The folder or zip it was read from.
    record
        ``bundle.json``.
    model, meta
        The network (eval mode) and its ``model.json``.
    transform
        The target statistics that map the model's output back to counts or TPM.
    genes, level, trained_level, space, scope
        Its genes; the training cohort's level (``st``, ``bulk``, ``xenium``); the level it predicts
        (``spot`` or ``bulk``); ``counts`` or ``tpm``; ``cohort`` or ``sample`` feature scope.
    basis
        The cohort's PCA basis (cohort scope), else None.
    phenotypes
        The phenotype centroids of its training, else None.
    stain_reference
        The reference stain JSON (as ``bitro stain-reference`` writes it).
    """

    path: Path
    record: dict[str, Any]
    model: BiTro
    meta: dict[str, Any]
    transform: TargetTransform
    genes: list[str]
    level: str
    trained_level: str
    space: str
    scope: str
    basis: PCABasis | None
    phenotypes: Phenotypes | None
    stain_reference: dict[str, Any] = field(repr=False, default_factory=dict)

    @property
    def encoder(self) -> dict[str, Any]:
        """The encoder and crops the training cohort was embedded with (``bundle.json`` ``encoder``)."""
        return dict(self.record["encoder"])

    @property
    def settings(self) -> dict[str, Any]:
        """The run's settings by section (``bundle.json`` ``settings``)."""
        return dict(self.record.get("settings") or {})

    @property
    def gene_pcc(self) -> dict[str, float | None] | None:
        """Each gene's cross-validated PCC, when the bundle records it."""
        per_gene = (self.record.get("cv") or {}).get("gene_pcc")
        return None if not per_gene else dict(per_gene["pcc"])

    @property
    def name(self) -> str:
        """The training cohort's name (else the bundle's file name)."""
        return str((self.record.get("cohort") or {}).get("name") or self.path.stem)

    def best_genes(self, n: int) -> list[str]:
        """The ``n`` genes of highest cross-validated PCC; the first ``n`` of :attr:`genes` without CV."""
        return best_genes(self.genes, self.gene_pcc, n)

    def description(self) -> dict[str, Any]:
        """How the per-slide outputs record the model they came from (``uns["bitro"]["model"]``)."""
        encoder = self.encoder
        return {
            "bundle": str(self.path),
            "format": self.record["format"],
            "cohort": self.name,
            "created_utc": self.record.get("created_utc"),
            "encoder": encoder.get("name"),
            "encoder_sha256": encoder.get("weights_sha256"),
            "model_sha256": self.record["files"][BundleFile.WEIGHTS],
            "feature_scope": self.scope,
        }


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _record(data: bytes, where: str) -> dict[str, Any]:
    try:
        record = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(where, f"is not JSON ({exc})") from exc
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise BundleError(where, f"is not a {FORMAT} record (bitro export-model writes one)")
    files = record.get("files")
    if not isinstance(files, dict) or BundleFile.WEIGHTS not in files or BundleFile.MODEL not in files:
        raise BundleError(where, "lists no model files with their sha256")
    for name in files:
        if PurePosixPath(name).name != name or name in ("", ".", ".."):
            raise BundleError(where, f"names a file outside the bundle: {name!r}")
    return record


def _check(contents: Mapping[str, bytes | None], record: dict[str, Any], where: str) -> None:
    """Every file ``bundle.json`` lists is there with its sha256."""
    for name, expected in record["files"].items():
        data = contents.get(name)
        if data is None:
            raise BundleError(f"{where}/{name}", "is missing from the bundle")
        if _sha256(data) != expected:
            raise BundleError(
                f"{where}/{name}",
                f"sha256 {_sha256(data)[:12]}… differs from the {expected[:12]}… that {BundleFile.RECORD} "
                "records: the file was changed or damaged since the bundle was made",
            )


def _read_folder(folder: Path) -> tuple[dict[str, Any], dict[str, bytes | None]]:
    record_path = folder / BundleFile.RECORD
    if not record_path.is_file():
        raise BundleError(folder, f"has no {BundleFile.RECORD}: not a bundle (bitro export-model makes one)")
    record = _record(record_path.read_bytes(), str(record_path))
    contents = {n: (folder / n).read_bytes() if (folder / n).is_file() else None for n in record["files"]}
    return record, contents


def _read_zip(path: Path) -> tuple[dict[str, Any], dict[str, bytes | None]]:
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise BundleError(path, f"is not a readable zip ({exc})") from exc
    with archive:
        names = [n for n in archive.namelist() if PurePosixPath(n).name == BundleFile.RECORD]
        if len(names) != 1:
            raise BundleError(path, f"holds {len(names)} {BundleFile.RECORD}, not one: not a bundle")
        prefix = str(PurePosixPath(names[0]).parent)
        prefix = "" if prefix == "." else prefix + "/"
        record = _record(archive.read(names[0]), f"{path}:{names[0]}")
        members = set(archive.namelist())
        contents = {n: archive.read(prefix + n) if prefix + n in members else None for n in record["files"]}
    return record, contents


def load_bundle(path: str | os.PathLike[str], *, device: str = "cpu") -> Bundle:
    """Read a bundle folder or its ``.zip``, check every file's sha256, and load its model.

    Raises
    ------
    BundleError
        Not a bundle, a file missing, or a file whose sha256 differs from ``bundle.json``'s (named).
    """
    path = Path(path)
    if path.is_dir():
        record, contents = _read_folder(path)
    elif path.is_file():
        record, contents = _read_zip(path)
    else:
        raise BundleError(path, "not found (a bundle folder or its .zip)")
    _check(contents, record, str(path))
    with tempfile.TemporaryDirectory(prefix="bitro-bundle-") as scratch:
        folder = Path(scratch)
        for name, data in contents.items():
            assert data is not None
            (folder / name).write_bytes(data)
        model, meta = load_trained(folder, device=device)
        basis = read_basis(folder / BundleFile.PCA) if record["features"].get("basis") else None
    reference = json.loads(contents[BundleFile.STAIN_REFERENCE] or b"{}")
    transform = TargetTransform.from_dict(meta["transform"])
    if list(meta["genes"]) != list(record["genes"]):
        raise BundleError(f"{path}/{BundleFile.RECORD}", f"lists other genes than {BundleFile.MODEL}")
    return Bundle(
        path=path,
        record=record,
        model=model,
        meta=meta,
        transform=transform,
        genes=list(meta["genes"]),
        level=str(record["level"]),
        trained_level=str(record["trained_level"]),
        space=transform.space,
        scope=str(record["features"]["scope"]),
        basis=basis,
        phenotypes=saved_phenotypes(meta),
        stain_reference=reference,
    )
