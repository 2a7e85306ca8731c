"""PCA to 128 dimensions and K-means phenotypes: against scikit-learn, and free of test-sample leakage."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from sklearn.decomposition import PCA

from bitro.errors import ConfigError, InputError
from bitro.features.phenotype import fit_phenotypes, read_phenotypes, write_phenotypes
from bitro.features.reduce import fit_cohort_pca, fit_pca, read_basis, write_basis


def embeddings(seed: int, n: int = 2000, d: int = 64) -> np.ndarray:
    """Cells from 5 types in a d-dimensional embedding space, with a low-rank structure."""
    rng = np.random.default_rng(seed)
    types = rng.integers(0, 5, size=n)
    means = np.random.default_rng(99).normal(0, 3, size=(5, d))
    return (means[types] + rng.normal(0, 1, size=(n, d))).astype(np.float32)


def test_pca_matches_scikit_learn_up_to_sign() -> None:
    x = embeddings(0)
    basis = fit_pca(x, n_components=16)
    ours = basis.transform(x)
    ref = PCA(n_components=16, svd_solver="full").fit_transform(x)
    signs = np.sign((ours * ref).sum(axis=0))
    assert ours.dtype == np.float32 and ours.shape == (2000, 16)
    assert np.allclose(ours * signs, ref, atol=1e-3)


def test_randomised_pca_on_many_cells_agrees_with_the_exact_one() -> None:
    x = embeddings(1, n=30_000, d=96)
    basis = fit_pca(x, n_components=8)
    assert basis.info["solver"] == "randomized"
    exact = PCA(n_components=8, svd_solver="full").fit(x)
    # Five cell types span four directions; beyond them the noise is isotropic and its axes arbitrary.
    assert np.allclose(np.abs(basis.components[:4] @ exact.components_[:4].T).diagonal(), 1.0, atol=1e-3)
    assert np.allclose(basis.explained_variance_ratio[:4], exact.explained_variance_ratio_[:4], rtol=1e-4)


def test_a_small_sample_is_zero_padded_to_the_requested_width() -> None:
    x = embeddings(2, n=50)
    features = fit_pca(x, n_components=128).transform(x)
    assert features.shape == (50, 128)
    assert np.all(features[:, 50:] == 0) and np.any(features[:, :49] != 0)


def test_cohort_basis_depends_on_training_samples_only(tmp_path: Path) -> None:
    train = [embeddings(3), embeddings(4)]
    basis = fit_cohort_pca(train, n_components=10)
    again = fit_cohort_pca([train[0].copy(), train[1].copy()], n_components=10)
    assert np.allclose(basis.components, again.components)
    write_basis(basis, tmp_path / "pca.npz")
    back = read_basis(tmp_path / "pca.npz")
    test_sample = embeddings(5)
    assert np.allclose(back.transform(test_sample), basis.transform(test_sample))


def test_phenotype_centroids_do_not_depend_on_test_samples(tmp_path: Path) -> None:
    features = {"A": embeddings(6), "B": embeddings(7), "TEST": embeddings(8)}
    fitted = fit_phenotypes(features, ["A", "B"], k=5)
    changed = dict(features, TEST=embeddings(9) * 10.0 + 100.0)
    refitted = fit_phenotypes(changed, ["B", "A"], k=5)
    assert np.allclose(fitted.centroids, refitted.centroids)
    assert fitted.train_samples == ("A", "B")
    # The five planted types come back as five phenotypes.
    labels = fitted.assign(features["TEST"])
    assert len(np.unique(labels)) == 5
    write_phenotypes(fitted, tmp_path / "phenotypes.npz")
    back = read_phenotypes(tmp_path / "phenotypes.npz")
    assert np.array_equal(back.assign(features["A"]), fitted.assign(features["A"]))
    assert back.train_samples == ("A", "B")


def test_labels_are_the_nearest_centroid_and_minibatch_above_the_threshold() -> None:
    from scipy.spatial.distance import cdist

    features = {"A": embeddings(10, n=3000)}
    fitted = fit_phenotypes(features, ["A"], k=8, minibatch_above=1000)
    assert fitted.info["algorithm"] == "MiniBatchKMeans"
    expected = cdist(features["A"], fitted.centroids).argmin(axis=1)
    assert np.array_equal(fitted.assign(features["A"]), expected)
    sizes = np.bincount(fitted.assign(features["A"]), minlength=8)
    assert np.all(np.diff(sizes) <= 0.05 * len(features["A"]))  # ordered largest first, up to refits


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="without features"):
        fit_phenotypes({"A": embeddings(0)}, ["A", "B"])
    with pytest.raises(ConfigError, match="cannot make"):
        fit_phenotypes({"A": embeddings(0, n=3)}, ["A"], k=8)
    with pytest.raises(InputError, match="missing"):
        read_basis(Path("missing.npz"))


def _resident_mib() -> float:
    """This process's resident memory now (MiB), file-backed pages included."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux /proc")
def test_projecting_memory_mapped_embeddings_hands_back_their_pages(tmp_path: Path) -> None:
    """A 10⁶-cell slide's embeddings (2.5 GB) are projected through a memory map; the pages of projected
    rows are dropped as it goes (the result is the in-memory projection's, bit for bit)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(size=(40_000, 768), dtype=np.float32).astype(np.float16)  # 59 MiB on disk
    np.save(tmp_path / "e.npy", x)
    basis = fit_pca(x[:2000].astype(np.float32), n_components=16, seed=0)
    expected = basis.transform(x)
    mapped = np.load(tmp_path / "e.npy", mmap_mode="r")
    before = _resident_mib()
    projected = basis.transform(mapped, chunk=4096)
    grown = _resident_mib() - before
    np.testing.assert_array_equal(projected, expected)
    assert grown < 25, f"{grown:.0f} MiB of the 59 MiB mapped file stayed resident"
