"""Evaluation splits, written to ``results/{cohort}/folds.json`` (paper §4, docs/methods.md#splits).

Every fold names its ``train``, ``validation`` and ``test`` samples. Validation is always carved from the
samples that would otherwise train: it drives early stopping and nothing else, and the test
samples are touched once, at the end.

- ``loo`` (ST): leave one group out, a group being a sample, or a patient when ``group_by="patient"`` so
  sections of one patient never sit on both sides. The validation group of fold *k* is the
  next group after the test group in sorted order, so every group validates once. A cohort of two groups
  (HEST-1k's HCC has two sections) has no group to spare: each fold then trains on the other group and
  validates on its last strip along x (one of ``n_strips``), training on the pseudo-units wholly inside the
  other strips, so early stopping never sees the test group.
- ``patient`` (bulk): a seeded 4:1 split of patients (TCGA: the first 12 characters of the barcode,
  docs/pitfalls.md), all of a patient's slides following the patient; validation is a seeded fifth of the
  training patients. That is the paper's one-pass protocol for cohorts of hundreds of patients. With
  ``n_folds`` K ≥ 2 the patients are dealt into K seeded groups instead (K-fold cross-validation; K = 5 is
  the same 4:1 ratio) and fold *k* tests group *k*, so every patient is tested exactly once: on a cohort of
  tens of patients one 4:1 split tests a handful of slides, and the pooled out-of-fold predictions are
  what a per-gene correlation needs.
- ``strips`` (Xenium): each slide is cut into ``n_strips`` strips of equal width along x; fold *k* tests on
  the cells of strip *k* and trains on the pseudo-spots lying wholly inside the other strips (units that
  straddle a test strip's edge are dropped from training, so no test cell ever contributes to a training
  target). Validation is the training strip next to the test strip, so it is as spatially separated from
  training as the test strip is.

The final model of a cohort (:func:`final_fold`, ``results/{cohort}/final/folds.json``) is fold 0 with its
test side given to training: it validates, for early stopping only, on what fold 0 validates on, and tests
nothing. Its quality is the cross-validation's.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from bitro._atomic import atomic_path
from bitro.errors import InputError, UsageError
from bitro.io.validate import require_file
from bitro.layout import FINAL_FOLD

Protocol = Literal["loo", "patient", "strips"]


class UnknownFoldError(UsageError, KeyError):
    """``--fold`` names a fold that ``folds.json`` does not hold."""

    def __str__(self) -> str:  # KeyError would quote the message
        return f"{self.path}: {self.problem}"


@dataclass(frozen=True)
class Fold:
    """One fold: sample ids on each side; for ``strips``, the x-range (µm) of each role per sample."""

    name: str
    train: list[str]
    validation: list[str]
    test: list[str]
    strips: dict[str, dict[str, list[list[float]]]] = field(default_factory=dict)

    def ranges(self, sample: str, role: str) -> list[list[float]] | None:
        """The x-ranges (µm) of ``sample`` that play ``role``; None when the whole sample does."""
        return self.strips.get(sample, {}).get(role)


@dataclass(frozen=True)
class Folds:
    """The folds of a cohort and how they were made."""

    cohort: str
    protocol: Protocol
    folds: list[Fold]
    params: dict[str, Any] = field(default_factory=dict)

    def fold(self, name: str) -> Fold:
        """The fold called ``name``.

        Raises
        ------
        UnknownFoldError
            No fold has that name (the message names the folds file when it was read from one).
        """
        for fold in self.folds:
            if fold.name == name:
                return fold
        where = getattr(self, "_path", None) or f"--fold {name}"
        raise UnknownFoldError(
            where, f"no fold {name!r} in cohort {self.cohort}; its folds are {', '.join(self.names)}"
        )

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.folds]


def _groups(samples: Sequence[str], patients: Sequence[str] | None) -> dict[str, list[str]]:
    keys = patients if patients is not None else samples
    if len(keys) != len(samples):
        raise ValueError("one patient id per sample is needed")
    groups: dict[str, list[str]] = {}
    for sample, key in zip(samples, keys, strict=True):
        groups.setdefault(str(key), []).append(str(sample))
    return {key: sorted(groups[key]) for key in sorted(groups)}


def _strip_edges(lo: float, hi: float, n_strips: int) -> list[list[float]]:
    edges = np.linspace(float(lo), float(hi), n_strips + 1).tolist()
    return [[edges[i], edges[i + 1]] for i in range(n_strips)]


def leave_one_out(
    cohort: str,
    samples: Sequence[str],
    *,
    patients: Sequence[str] | None = None,
    extents: Mapping[str, tuple[float, float]] | None = None,
    n_strips: int = 5,
) -> Folds:
    """Leave one sample (or, with ``patients``, one patient) out; see the module docstring.

    ``extents`` (sample → x range of its cells, µm) is needed only for a cohort of two groups, whose folds
    validate on a strip of the training group.
    """
    groups = _groups(samples, patients)
    keys = list(groups)
    params: dict[str, Any] = {"group_by": "patient" if patients is not None else "sample"}
    if len(keys) < 2:
        raise ValueError(f"leave-one-out needs at least 2 groups; {cohort} has {len(keys)}")
    folds = []
    if len(keys) == 2:
        if extents is None:
            raise ValueError(f"{cohort} has 2 groups: its validation strips need the samples' extents")
        if n_strips < 2:
            raise ValueError("a validation strip needs at least 2 strips per training sample")
        for k, key in enumerate(keys):
            train = groups[keys[1 - k]]
            strips = {}
            for sample in train:
                strip = _strip_edges(*extents[sample], n_strips)
                strips[sample] = {"train": strip[:-1], "validation": strip[-1:]}
            fold = Fold(f"fold{k}", train=train, validation=list(train), test=groups[key], strips=strips)
            folds.append(fold)
        return Folds(cohort, "loo", folds, params | {"validation": "strip", "n_strips": n_strips})
    for k, key in enumerate(keys):
        validation = keys[(k + 1) % len(keys)]
        train = [s for other in keys if other not in (key, validation) for s in groups[other]]
        folds.append(Fold(f"fold{k}", train=train, validation=groups[validation], test=groups[key]))
    return Folds(cohort, "loo", folds, params | {"validation": "group"})


def patient_split(
    cohort: str,
    samples: Sequence[str],
    patients: Sequence[str],
    *,
    test_fraction: float = 0.2,
    validation_fraction: float = 0.2,
    n_folds: int = 1,
    seed: int = 0,
) -> Folds:
    """Seeded patient folds (bulk; module docstring): one 4:1 split, or K-fold with ``n_folds`` ≥ 2."""
    groups = _groups(samples, patients)
    keys = np.array(list(groups))
    if len(keys) < 3:
        raise ValueError(f"a patient split needs at least 3 patients; {cohort} has {len(keys)}")
    if n_folds < 1:
        raise ValueError(f"n_folds must be at least 1, got {n_folds}")
    if n_folds > 1 and len(keys) < n_folds + 2:
        raise ValueError(
            f"{n_folds}-fold patient cross-validation needs at least {n_folds + 2} patients "
            f"(each fold also trains and validates); {cohort} has {len(keys)}"
        )
    rng = np.random.default_rng(seed)

    def members(chosen: np.ndarray) -> list[str]:
        return sorted(s for key in chosen for s in groups[key])

    def fold(name: str, test: np.ndarray, rest: np.ndarray) -> Fold:
        n_val = min(max(1, round(validation_fraction * len(rest))), len(rest) - 1)
        return Fold(name, train=members(rest[n_val:]), validation=members(rest[:n_val]), test=members(test))

    params: dict[str, Any] = {"validation_fraction": validation_fraction, "seed": seed}
    if n_folds == 1:
        order = keys[rng.permutation(len(keys))]
        n_test = min(max(1, round(test_fraction * len(keys))), len(keys) - 2)
        folds = [fold("fold0", order[:n_test], order[n_test:])]
        params["test_fraction"] = test_fraction
    else:
        from sklearn.model_selection import KFold

        splitter = KFold(n_splits=n_folds, shuffle=True, random_state=seed)
        folds = [
            fold(f"fold{k}", keys[test], keys[rest][rng.permutation(len(rest))])
            for k, (rest, test) in enumerate(splitter.split(keys))
        ]
        params["n_folds"] = n_folds
    return Folds(cohort, "patient", folds, params)


def spatial_strips(cohort: str, extents: Mapping[str, tuple[float, float]], *, n_strips: int = 5) -> Folds:
    """Strips of equal width along x for each slide; ``extents`` maps sample → (x_min, x_max) in µm."""
    if n_strips < 3:
        raise ValueError("the strip protocol needs at least 3 strips (test, validation, training)")
    edges = {sample: _strip_edges(lo, hi, n_strips) for sample, (lo, hi) in sorted(extents.items())}
    samples = sorted(extents)
    folds = []
    for k in range(n_strips):
        validation = k + 1 if k + 1 < n_strips else k - 1
        strips = {}
        for sample, strip in edges.items():
            strips[sample] = {
                "test": [strip[k]],
                "validation": [strip[validation]],
                "train": [strip[i] for i in range(n_strips) if i not in (k, validation)],
            }
        folds.append(Fold(f"fold{k}", train=samples, validation=samples, test=samples, strips=strips))
    return Folds(cohort, "strips", folds, {"n_strips": n_strips})


def in_strips(x_um: np.ndarray, ranges: Sequence[Sequence[float]], *, width_um: float = 0.0) -> np.ndarray:
    """True where ``[x, x + width)`` lies wholly inside one of ``ranges`` (half-open; the last closed).

    With ``width_um = 0`` this says which strip a point (a cell) is in; with the side of a unit's square
    and ``x`` its left edge, which units may train without touching another strip.
    """
    x_um = np.asarray(x_um, dtype=np.float64)
    inside = np.zeros(len(x_um), dtype=bool)
    for lo, hi in ranges:
        inside |= (x_um >= lo) & (x_um + width_um <= hi) if width_um > 0 else (x_um >= lo) & (x_um < hi)
    return inside


def check_disjoint(folds: Folds) -> None:
    """Raise ``ValueError`` when a fold has a sample on two sides, or a patient split across sides.

    A sample may sit on two sides only when both give it x-ranges (strips), which must not overlap.
    """
    roles = ("train", "validation", "test")
    for fold in folds.folds:
        for a in range(3):
            for b in range(a + 1, 3):
                shared = set(getattr(fold, roles[a])) & set(getattr(fold, roles[b]))
                whole = sorted(
                    s
                    for s in shared
                    if fold.ranges(s, roles[a]) is None
                    or fold.ranges(s, roles[b]) is None
                    or _overlap(fold.ranges(s, roles[a]) or [], fold.ranges(s, roles[b]) or [])
                )
                if whole:
                    raise ValueError(f"{folds.cohort} {fold.name}: samples on two sides: {whole}")
        if not fold.train or (not fold.test and not folds.params.get("final")):
            raise ValueError(f"{folds.cohort} {fold.name}: empty training or test set")
        _check_barcode_patients(folds.cohort, fold)


def _check_barcode_patients(cohort: str, fold: Fold) -> None:
    """Raise ``ValueError`` when slides of one TCGA patient (barcode[:12]) sit on two sides of ``fold``.

    Whatever patient ids a sample sheet gave, the barcodes themselves say which slides share a patient.
    Strips (Xenium) are exempt: their samples are not TCGA slides.
    """
    from bitro.io.tcga import _barcode_part

    sides: dict[str, set[str]] = {}
    for role in ("train", "validation", "test"):
        for sample in getattr(fold, role):
            patient = _barcode_part(sample, "patient")
            if patient is not None and fold.ranges(sample, role) is None:
                sides.setdefault(patient, set()).add(role)
    split = sorted(p for p, roles in sides.items() if len(roles) > 1)
    if split:
        raise ValueError(f"{cohort} {fold.name}: slides of TCGA patient(s) {split} on two sides")


def _overlap(first: Sequence[Sequence[float]], second: Sequence[Sequence[float]]) -> bool:
    return any(lo < hi2 and lo2 < hi for lo, hi in first for lo2, hi2 in second)


def final_fold(folds: Folds) -> Folds:
    """The cohort's final fold (module docstring): fold 0 of ``folds`` with its test side trained on.

    Strip ranges follow: a sample's test strips join its training strips, its validation strips stay.
    """
    first = folds.folds[0]
    train = sorted(set(first.train) | set(first.test))
    strips: dict[str, dict[str, list[list[float]]]] = {}
    for sample, roles in first.strips.items():
        merged = {"train": sorted([*roles.get("train", []), *roles.get("test", [])])}
        if "validation" in roles:
            merged["validation"] = roles["validation"]
        strips[sample] = merged
    fold = Fold(FINAL_FOLD, train=train, validation=list(first.validation), test=[], strips=strips)
    params = folds.params | {"final": True, "from_fold": first.name}
    return Folds(folds.cohort, folds.protocol, [fold], params)


def write_folds(folds: Folds, path: str | Path) -> None:
    """Write ``folds.json``."""
    check_disjoint(folds)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(asdict(folds), indent=1))


def read_folds(path: str | Path) -> Folds:
    """Read ``folds.json`` and check its folds are disjoint."""
    path = require_file(path, "folds")
    try:
        data = json.loads(path.read_text())
        folds = Folds(
            cohort=data["cohort"],
            protocol=data["protocol"],
            folds=[Fold(**fold) for fold in data["folds"]],
            params=data.get("params", {}),
        )
        check_disjoint(folds)
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(path, f"is not a valid folds file ({exc})") from exc
    object.__setattr__(folds, "_path", str(path))
    return folds


def split_shortfall(
    level: str,
    samples: Sequence[str],
    patients: Sequence[str] | None,
    *,
    group_by: str = "patient",
    bulk_folds: int = 1,
    n_strips: int = 5,
) -> str:
    """Why a cohort cannot be split by its protocol (the number needed and the number it has), or ``""``.

    The same rules as :func:`leave_one_out`, :func:`patient_split` and :func:`spatial_strips`, checked
    from the sample sheet alone, before any job runs. An empty patient id stands for its sample.
    """
    patients = [p or s for s, p in zip(samples, patients, strict=True)] if patients is not None else None
    if level == "st":
        by_patient = group_by == "patient" and patients is not None
        n = len(set(patients if by_patient and patients is not None else samples))
        unit = "patients (group_by: patient)" if by_patient else "samples"
        if n < 2:
            return f"leave-one-out needs at least 2 {unit}; the cohort has {n}"
        return ""
    if level == "bulk":
        n = len(set(patients if patients is not None else samples))
        need = 3 if bulk_folds <= 1 else bulk_folds + 2
        what = "a patient split (test, validation, training)" if bulk_folds <= 1 else f"{bulk_folds}-fold"
        if n < need:
            return f"{what} needs at least {need} patients; the cohort has {n}"
        return ""
    if not samples:
        return "the strip protocol needs at least 1 section; the cohort has 0"
    if n_strips < 3:
        return f"the strip protocol needs at least 3 strips; evaluation.xenium_strips is {n_strips}"
    return ""
