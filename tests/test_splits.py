"""Splits: leave-one-out, patient split, spatial strips; no sample or patient on two sides of a fold."""

from __future__ import annotations

import numpy as np
import pytest

from bitro.errors import InputError
from bitro.folds.splits import (
    Fold,
    Folds,
    final_fold,
    in_strips,
    leave_one_out,
    patient_split,
    read_folds,
    spatial_strips,
    write_folds,
)
from bitro.layout import FINAL_FOLD


def _sides(fold: Fold) -> list[set[str]]:
    return [set(fold.train), set(fold.validation), set(fold.test)]


def test_leave_one_sample_out() -> None:
    samples = [f"S{i}" for i in range(6)]
    folds = leave_one_out("c", samples)
    assert [f.test for f in folds.folds] == [[s] for s in samples]
    assert sorted(s for f in folds.folds for s in f.validation) == samples
    for fold in folds.folds:
        train, val, test = _sides(fold)
        assert not (train & val or train & test or val & test)
        assert train | val | test == set(samples)


def test_leave_one_patient_out_keeps_sections_together() -> None:
    samples = ["A1", "A2", "B1", "B2", "C1", "D1"]
    patients = ["A", "A", "B", "B", "C", "D"]
    folds = leave_one_out("c", samples, patients=patients)
    assert len(folds.folds) == 4 and folds.params["group_by"] == "patient"
    patient_of = dict(zip(samples, patients, strict=True))
    for fold in folds.folds:
        groups = [{patient_of[s] for s in side} for side in _sides(fold)]
        assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    # Two sections of one patient are one group: nothing to train on.
    with pytest.raises(ValueError, match="at least 2 groups"):
        leave_one_out("c", ["A1", "A2"], patients=["A", "A"])


def test_patient_split_never_splits_a_patient() -> None:
    samples = [f"TCGA-XX-{i:04d}-01Z-00-DX{j}" for i in range(40) for j in (1, 2)]
    patients = [s[:12] for s in samples]
    folds = patient_split("c", samples, patients, seed=3)
    fold = folds.folds[0]
    sides = [{s[:12] for s in side} for side in _sides(fold)]
    assert not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])
    assert len(sides[2]) == 8  # 4:1 of 40 patients
    assert sum(map(len, _sides(fold))) == len(samples)
    again = patient_split("c", samples, patients, seed=3).folds[0]
    assert again == fold and patient_split("c", samples, patients, seed=4).folds[0] != fold


def test_patient_kfold_tests_every_patient_once() -> None:
    samples = [f"TCGA-XX-{i:04d}-01Z-00-DX{j}" for i in range(12) for j in (1, 2) if j == 1 or i < 3]
    patients = [s[:12] for s in samples]
    folds = patient_split("c", samples, patients, n_folds=5, seed=0)
    assert folds.names == [f"fold{k}" for k in range(5)] and folds.params["n_folds"] == 5
    tested = [s for fold in folds.folds for s in fold.test]
    assert sorted(tested) == sorted(samples)  # every slide tested exactly once
    for fold in folds.folds:
        sides = [{s[:12] for s in side} for side in _sides(fold)]
        assert not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])
        assert sides[0] | sides[1] | sides[2] == set(patients)
        assert len(sides[2]) in (2, 3) and len(sides[1]) == 2  # 12 patients: 4:1, then a fifth validates
    # The test groups are scikit-learn's KFold of the patients (the library, not a hand-made deal).
    from sklearn.model_selection import KFold

    keys = np.array(sorted(set(patients)))
    expected = [set(keys[test]) for _, test in KFold(5, shuffle=True, random_state=0).split(keys)]
    assert [{s[:12] for s in fold.test} for fold in folds.folds] == expected
    again = patient_split("c", samples, patients, n_folds=5, seed=0)
    assert again == folds and patient_split("c", samples, patients, n_folds=5, seed=1) != folds
    with pytest.raises(ValueError, match="at least 7 patients"):
        patient_split("c", samples[:6], patients[:6], n_folds=5)
    # One split (the paper's) is unchanged by the option.
    assert patient_split("c", samples, patients, seed=2) == patient_split(
        "c", samples, patients, n_folds=1, seed=2
    )


def test_strips_partition_x_and_training_units_avoid_other_strips() -> None:
    folds = spatial_strips("x", {"X1": (0.0, 1000.0)}, n_strips=5)
    tests = [f.strips["X1"]["test"][0] for f in folds.folds]
    assert tests == [[0.0, 200.0], [200.0, 400.0], [400.0, 600.0], [600.0, 800.0], [800.0, 1000.0]]
    cells = np.random.default_rng(0).uniform(0, 1000, 5000)
    counts = sum(in_strips(cells, f.strips["X1"]["test"]).astype(int) for f in folds.folds)
    assert np.all(counts == 1)  # every cell is tested exactly once
    fold = folds.folds[2]
    roles = fold.strips["X1"]
    assert roles["validation"] == [[600.0, 800.0]]
    # 55 µm squares by left edge: one straddling 400 µm (the test strip's edge) may not train.
    left = np.array([100.0, 380.0, 830.0, 145.0, 150.0])
    assert in_strips(left, roles["train"], width_um=55.0).tolist() == [True, False, True, True, False]


def test_folds_file_round_trip_and_overlap_refused(tmp_path) -> None:
    folds = leave_one_out("c", ["a", "b", "c", "d"])
    write_folds(folds, tmp_path / "folds.json")
    assert read_folds(tmp_path / "folds.json") == folds
    bad = Folds("c", "loo", [Fold("fold0", train=["a", "b"], validation=["c"], test=["b"])])
    with pytest.raises(ValueError, match="two sides"):
        write_folds(bad, tmp_path / "bad.json")
    (tmp_path / "broken.json").write_text('{"cohort": "c"}')
    with pytest.raises(InputError, match=r"broken\.json"):
        read_folds(tmp_path / "broken.json")


def test_two_groups_validate_on_a_strip_of_the_training_group(tmp_path) -> None:
    extents = {"A": (0.0, 500.0), "B": (100.0, 600.0)}
    folds = leave_one_out("hcc", ["A", "B"], extents=extents, n_strips=5)
    assert folds.params == {"group_by": "sample", "validation": "strip", "n_strips": 5}
    first, second = folds.folds
    assert (first.test, first.train, first.validation) == (["A"], ["B"], ["B"])
    assert (second.test, second.train) == (["B"], ["A"])
    # The last fifth of the training section validates; the rest trains; the test section is whole.
    assert np.allclose(first.ranges("B", "validation"), [[500.0, 600.0]])
    assert np.allclose(first.ranges("B", "train"), [[100, 200], [200, 300], [300, 400], [400, 500]])
    assert first.ranges("A", "test") is None and first.ranges("A", "train") is None
    write_folds(folds, tmp_path / "folds.json")
    assert read_folds(tmp_path / "folds.json") == folds
    with pytest.raises(ValueError, match="extents"):
        leave_one_out("hcc", ["A", "B"])
    with pytest.raises(ValueError, match="at least 2 groups"):
        leave_one_out("one", ["A"])
    # Strips of one sample that overlap, or a sample whole on two sides, are refused.
    overlapping = Fold(
        "fold0",
        train=["B"],
        validation=["B"],
        test=["A"],
        strips={"B": {"train": [[100.0, 550.0]], "validation": [[500.0, 600.0]]}},
    )
    whole = Fold(
        "fold0", train=["B"], validation=["B"], test=["A"], strips={"B": {"train": [[100.0, 500.0]]}}
    )
    for fold in (overlapping, whole):
        with pytest.raises(ValueError, match="two sides"):
            write_folds(Folds("hcc", "loo", [fold]), tmp_path / "bad.json")


def _covered(fold: Fold, sample: str, role: str, x: np.ndarray) -> np.ndarray:
    """Which of the points ``x`` of ``sample`` play ``role`` in ``fold`` (whole samples: all of them)."""
    if sample not in getattr(fold, role):
        return np.zeros(len(x), dtype=bool)
    ranges = fold.ranges(sample, role)
    return np.ones(len(x), dtype=bool) if ranges is None else in_strips(x, ranges)


@pytest.mark.parametrize(
    "folds",
    [
        leave_one_out("st", [f"S{i}" for i in range(5)]),
        leave_one_out("st2", ["A", "B"], extents={"A": (0.0, 100.0), "B": (10.0, 90.0)}, n_strips=4),
        patient_split("bulk", [f"T{i}" for i in range(10)], [f"P{i // 2}" for i in range(10)], seed=3),
        patient_split("bulk5", [f"T{i}" for i in range(12)], [f"P{i}" for i in range(12)], n_folds=5),
        spatial_strips("xen", {"X": (0.0, 500.0), "Y": (100.0, 300.0)}, n_strips=5),
    ],
    ids=["loo", "loo-two-groups", "patient", "kfold", "strips"],
)
def test_final_fold_trains_on_everything_fold0_tests_and_validates_as_fold0(folds: Folds, tmp_path) -> None:
    final = final_fold(folds)
    (fold,) = final.folds
    first = folds.folds[0]
    assert fold.name == FINAL_FOLD and fold.test == [] and final.params["final"]
    assert fold.validation == first.validation
    samples = sorted(set(first.train) | set(first.validation) | set(first.test))
    x = np.linspace(-50.0, 600.0, 2001)
    for sample in samples:
        # Every point of every sample trains or validates, never both; validation is fold 0's.
        train = _covered(fold, sample, "train", x)
        validation = _covered(fold, sample, "validation", x)
        assert not (train & validation).any()
        assert (validation == _covered(first, sample, "validation", x)).all()
        before = _covered(first, sample, "train", x) | _covered(first, sample, "test", x)
        assert (train == before).all()
    write_folds(final, tmp_path / "folds.json")  # an empty test side is allowed for the final fold only
    assert read_folds(tmp_path / "folds.json").fold(FINAL_FOLD) == fold
    with pytest.raises(ValueError, match="empty training or test set"):
        write_folds(Folds("c", folds.protocol, [fold], folds.params | {"final": False}), tmp_path / "x.json")
