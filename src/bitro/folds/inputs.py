"""A fold's loaded inputs: the samples of its roles, read once, and the bags of each role.

:func:`load_fold` reads each sample of the roles asked for (``train``, ``validation``, ``test``) with
:func:`bitro.folds.samples.load_sample` and cuts it into bags, keeping for a role with strips (Xenium, a
two-group ST cohort) only the units wholly inside that role's strips. Nothing is written.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bitro.features.phenotype import Phenotypes, read_phenotypes
from bitro.features.reduce import PCABasis
from bitro.folds.bags import Bag, make_bags
from bitro.folds.samples import SampleData, load_sample, sample_features
from bitro.folds.splits import Fold, in_strips
from bitro.preprocess.units import read_units


@dataclass
class FoldInputs:
    """The samples of a fold, loaded, and the bags of each role."""

    samples: list[SampleData]
    bags: dict[str, list[Bag]]

    def targets(self, role: str) -> np.ndarray:
        """The raw targets (bags × genes) of the bags of ``role``, in bag order."""
        return np.stack([self.samples[b.sample].targets[b.target_row] for b in self.bags[role]])


def unit_mask(sample_dir: Path, fold: Fold, sample: str, role: str) -> np.ndarray | None:
    """Strips (Xenium, two-group ST): which units (by id) lie wholly inside the strips of ``role``."""
    ranges = fold.ranges(sample, role)
    if ranges is None:
        return None
    units = read_units(sample_dir / "units.parquet")
    side = units["diameter_um"].to_numpy(np.float64)
    left = units["x_um"].to_numpy(np.float64) - side / 2
    return in_strips(left, ranges, width_um=float(side.max()))


def load_fold(
    samples_dir: str | Path,
    fold: Fold,
    genes: Sequence[str],
    *,
    roles: Sequence[str] = ("train", "validation"),
    scope: str = "sample",
    basis: PCABasis | None = None,
    phenotypes: Phenotypes | None = None,
) -> FoldInputs:
    """Load the samples of ``roles`` in ``fold`` and cut them into bags (strips respected for Xenium)."""
    samples_dir = Path(samples_dir)
    loaded: dict[str, int] = {}
    samples: list[SampleData] = []
    bags: dict[str, list[Bag]] = {role: [] for role in roles}
    for role in roles:
        for sample in getattr(fold, role):
            folder = samples_dir / sample
            if sample not in loaded:
                features, _ = sample_features(folder, scope=scope, basis=basis)
                loaded[sample] = len(samples)
                samples.append(load_sample(folder, genes=genes, features=features, phenotypes=phenotypes))
            mask = unit_mask(folder, fold, sample, role)
            bags[role] += make_bags(samples[loaded[sample]], loaded[sample], unit_mask=mask)
    return FoldInputs(samples, bags)


def read_fold_phenotypes(path: str | Path, fold: Fold) -> Phenotypes:
    """A fold's ``phenotypes.npz``; refused when fitted on other samples than the fold's training set."""
    phenotypes = read_phenotypes(path)
    if set(phenotypes.train_samples) != set(fold.train):
        raise ValueError(f"{path}: phenotypes were fitted on other samples than {fold.name}'s training set")
    return phenotypes
