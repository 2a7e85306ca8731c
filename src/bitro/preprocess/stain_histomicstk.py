"""HistomicsTK's stain estimators on bitro's tissue OD: Macenko PCA and Xu SNMF.

Both take the stained pixels ``tissue_od`` keeps (the same pixels bitro's own Vahadane and Macenko see)
and hand them to HistomicsTK in its own units, SDA ``= OD · 255 / ln 255`` (its ``rgb_to_sda`` with
``I₀ = 255``), so its defaults mean what they mean in HistomicsTK:

- ``histomicstk_macenko_pca``: ``separate_stains_macenko_pca`` (PCA plane, stains at the 1st and 99th
  percentile angle of pixels whose projection exceeds 16 SDA, the paper's 0.15 in log₁₀ OD);
- ``histomicstk_xu_snmf``: ``separate_stains_xu_snmf`` (nimfa's sparse NMF, sparsity β = 0.2, started from
  the Ruifrok–Johnston vectors) on at most ``max_pixels`` pixels drawn with ``seed``: the factorisation
  costs about 0.07 ms a pixel, and HistomicsTK itself would use every pixel it is given.

Their vectors are clipped at zero, normalised and ordered (H, E) by :func:`order_stains`, like bitro's.
A fit HistomicsTK cannot make (a section too faint for Macenko PCA's magnitude floor) is a ``ValueError``,
which :func:`bitro.preprocess.stain.fit_slide_stain` reports as an ``InputError`` naming the slide.
"""

from __future__ import annotations

import numpy as np

from bitro._histomicstk import histomicstk, nimfa_snmf_ready, quiet

#: HistomicsTK's SDA unit per natural-log OD unit (``rgb_to_sda`` with I₀ = 255).
SDA_PER_OD = 255.0 / np.log(255.0)
XU_SNMF_BETA = 0.2
#: HistomicsTK's default ``minimum_magnitude`` of Macenko PCA, in SDA.
MACENKO_MIN_SDA = 16.0


def _stain_rows(columns: np.ndarray) -> np.ndarray:
    from bitro.preprocess.stain import order_stains

    vectors = np.maximum(np.asarray(columns, dtype=np.float64)[:, :2].T, 0.0)
    if np.any(np.linalg.norm(vectors, axis=1) < 1e-8):
        raise ValueError("HistomicsTK's fit gave a stain vector with no positive absorbance")
    return order_stains(vectors)


def fit_histomicstk_macenko_pca(od: np.ndarray) -> np.ndarray:
    """Stain matrix (H, E rows) of OD rows (n × 3) by HistomicsTK's ``separate_stains_macenko_pca``."""
    deconvolution = histomicstk("histomicstk.preprocessing.color_deconvolution")
    sda = np.ascontiguousarray(od.T * SDA_PER_OD)
    try:
        with quiet():
            columns = deconvolution.separate_stains_macenko_pca(sda)
    except (ArithmeticError, IndexError, ValueError, np.linalg.LinAlgError) as exc:
        # An empty angle distribution: no pixel's projection reaches HistomicsTK's magnitude of 16 SDA.
        raise ValueError(
            f"HistomicsTK's Macenko PCA found no pixel stained above {MACENKO_MIN_SDA:g} SDA "
            f"(OD {MACENKO_MIN_SDA / SDA_PER_OD:.2f}): too faint to fit ({type(exc).__name__}: {exc})"
        ) from exc
    return _stain_rows(columns)


def fit_histomicstk_xu_snmf(
    od: np.ndarray, *, beta: float = XU_SNMF_BETA, seed: int = 0, max_pixels: int = 10000
) -> np.ndarray:
    """Stain matrix (H, E rows) of OD rows (n × 3) by HistomicsTK's ``separate_stains_xu_snmf``."""
    from bitro.preprocess.stain import RUIFROK

    deconvolution = histomicstk("histomicstk.preprocessing.color_deconvolution")
    nimfa_snmf_ready()
    if len(od) > max_pixels:
        od = od[np.random.default_rng(seed).choice(len(od), size=max_pixels, replace=False)]
    sda = np.ascontiguousarray(od.T * SDA_PER_OD)
    try:
        with quiet():
            columns = deconvolution.separate_stains_xu_snmf(sda, w_init=RUIFROK.T.copy(), beta=beta)
    except (ArithmeticError, IndexError, ValueError, np.linalg.LinAlgError) as exc:
        raise ValueError(
            f"HistomicsTK's Xu SNMF failed on these pixels ({type(exc).__name__}: {exc})"
        ) from exc
    return _stain_rows(columns)
