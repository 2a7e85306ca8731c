"""Baseline predictors reported next to BiTro (docs/methods.md#metrics-and-baselines).

Every baseline follows one interface: ``fit(x_train, y_train, *, groups=None) -> self`` on the training
units of a fold only, then ``predict(x_test) -> y_pred``; predictions are in the same target space as
``y_train`` (no transform is applied to the targets). The features ``x`` hold one row per unit, typically the
unit-mean cell embedding from :func:`unit_mean_embeddings`.

Missing features: ``fit`` rejects non-finite feature rows (a unit without cells cannot be a training
example; drop it, :func:`unit_mean_embeddings` reports which). ``predict`` returns a NaN row for a unit whose
feature row is not finite, so the metrics count it as missing instead of scoring a made-up value.
"""

from __future__ import annotations

import copy
import logging
import math
import warnings
from abc import ABC, abstractmethod
from typing import NamedTuple, Self

import numpy as np
import torch
from numpy.typing import ArrayLike
from scipy import sparse
from sklearn.decomposition import PCA
from sklearn.linear_model import Ridge
from sklearn.model_selection import GroupShuffleSplit, ShuffleSplit
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

__all__ = [
    "Baseline",
    "HestProbe",
    "MLPBaseline",
    "OracleComposition",
    "TrainingMean",
    "UnitMeans",
    "unit_mean_embeddings",
]

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------ unit features


class UnitMeans(NamedTuple):
    """Result of :func:`unit_mean_embeddings`.

    Attributes
    ----------
    means : numpy.ndarray
        ``(n_units, E)`` float64 mean embedding per unit; NaN rows for units without cells.
    n_cells : numpy.ndarray
        ``(n_units,)`` number of cells per unit.
    empty_units : numpy.ndarray
        Indices of the units without cells (their rows of ``means`` are NaN).
    """

    means: np.ndarray
    n_cells: np.ndarray
    empty_units: np.ndarray


def unit_mean_embeddings(embeddings: ArrayLike, unit_index: ArrayLike, n_units: int) -> UnitMeans:
    """Mean cell embedding per unit, by a sparse segment sum.

    Parameters
    ----------
    embeddings : array_like, shape (N, E)
        One embedding per cell.
    unit_index : array_like of int, shape (N,)
        Unit of each cell in ``0..n_units-1``, or −1 for a cell outside every unit (ignored; the
        convention of :func:`bitro.preprocess.targets.assign_to_squares`).
    n_units : int
        Number of units.

    Returns
    -------
    UnitMeans
        Means, cell counts, and the units without cells. Those units get NaN rows, never zeros, and a
        warning is logged with their count.

    Raises
    ------
    ValueError
        For mismatched lengths, non-integer indices or indices outside ``-1..n_units-1``.
    """
    emb = np.asarray(embeddings, dtype=np.float64)
    idx = np.asarray(unit_index)
    if emb.ndim != 2:
        raise ValueError(f"embeddings must be 2-D (cells × features), got shape {emb.shape}")
    if idx.shape != (emb.shape[0],):
        raise ValueError(f"unit_index must have one entry per cell ({emb.shape[0]}), got shape {idx.shape}")
    if idx.size and not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"unit_index must be integers, got dtype {idx.dtype}")
    if n_units < 0:
        raise ValueError(f"n_units must be ≥ 0, got {n_units}")
    idx = idx.astype(np.int64, copy=False)
    if idx.size and (idx.min() < -1 or idx.max() >= n_units):
        raise ValueError(f"unit_index must lie in -1..{n_units - 1}, got {idx.min()}..{idx.max()}")
    inside = idx >= 0
    cells = np.flatnonzero(inside)
    assign = sparse.csr_matrix(
        (np.ones(cells.size), (idx[inside], cells)), shape=(n_units, emb.shape[0]), dtype=np.float64
    )
    sums = np.asarray(assign @ emb)
    n_cells = np.bincount(idx[inside], minlength=n_units).astype(np.int64)
    means = np.full((n_units, emb.shape[1]), np.nan)
    has = n_cells > 0
    means[has] = sums[has] / n_cells[has, None]
    empty = np.flatnonzero(~has)
    if empty.size:
        log.warning("%d of %d units have no cells; their mean embeddings are NaN", empty.size, n_units)
    return UnitMeans(means=means, n_cells=n_cells, empty_units=empty)


# ---------------------------------------------------------------------------------------------- interface


class Baseline(ABC):
    """Common interface: fit on the training units of a fold, predict any units.

    Attributes set by ``fit``: ``n_features_in_`` and ``n_targets_``.
    """

    n_features_in_: int
    n_targets_: int

    def fit(self, x_train: ArrayLike, y_train: ArrayLike, *, groups: ArrayLike | None = None) -> Self:
        """Fit on training units only.

        Parameters
        ----------
        x_train : array_like, shape (n_units, n_features)
            Finite features of the training units.
        y_train : array_like, shape (n_units, n_genes)
            Finite targets, in the space predictions should be in.
        groups : array_like, shape (n_units,), optional
            Sample or patient of each unit; used where the model carves a validation split.

        Returns
        -------
        Self
            The fitted baseline.
        """
        x, y = _check_training(x_train, y_train)
        g = None
        if groups is not None:
            g = np.asarray(groups)
            if g.shape != (x.shape[0],):
                raise ValueError(f"groups must have one label per unit ({x.shape[0]}), got {g.shape}")
        self.n_features_in_ = x.shape[1]
        self.n_targets_ = y.shape[1]
        self._fit(x, y, g)
        return self

    def predict(self, x: ArrayLike) -> np.ndarray:
        """Predict targets for the units of ``x``.

        Parameters
        ----------
        x : array_like, shape (n_units, n_features)
            Features; rows that are not finite get NaN predictions.

        Returns
        -------
        numpy.ndarray
            ``(n_units, n_genes)`` float64 predictions.
        """
        if not hasattr(self, "n_targets_"):
            raise RuntimeError(f"{type(self).__name__} is not fitted")
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.n_features_in_:
            raise ValueError(f"x must have shape (n, {self.n_features_in_}), got {x.shape}")
        out = np.full((x.shape[0], self.n_targets_), np.nan)
        ok = np.isfinite(x).all(axis=1)
        if ok.any():
            out[ok] = self._predict(x[ok])
        return out

    @abstractmethod
    def _fit(self, x: np.ndarray, y: np.ndarray, groups: np.ndarray | None) -> None: ...

    @abstractmethod
    def _predict(self, x: np.ndarray) -> np.ndarray: ...


def _check_training(x_train: ArrayLike, y_train: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x_train, dtype=np.float64)
    y = np.asarray(y_train, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2:
        raise ValueError(f"x_train and y_train must be 2-D, got {x.shape} and {y.shape}")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x_train has {x.shape[0]} rows, y_train {y.shape[0]}")
    if x.shape[0] == 0:
        raise ValueError("no training units")
    bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
    if bad.size:
        raise ValueError(
            f"{bad.size} training units have non-finite features (first: {bad[:5].tolist()}); "
            "units without cells must be dropped from training"
        )
    if not np.isfinite(y).all():
        raise ValueError("y_train contains non-finite values")
    return x, y


# ----------------------------------------------------------------------------------------------- models


class TrainingMean(Baseline):
    """Predict the training mean of each gene for every unit (features are ignored, except NaN rows).

    Attributes
    ----------
    mean_ : numpy.ndarray
        ``(n_genes,)`` mean of ``y_train``.
    """

    mean_: np.ndarray

    def _fit(self, x: np.ndarray, y: np.ndarray, groups: np.ndarray | None) -> None:
        self.mean_ = y.mean(axis=0)

    def _predict(self, x: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.mean_, (x.shape[0], self.mean_.size)).copy()


class HestProbe(Baseline):
    """HEST-Benchmark linear probe: StandardScaler → PCA(256) → Ridge on unit-mean embeddings.

    As in HEST-Benchmark (mahmoodlab/HEST, ``src/hest/bench/benchmark.py``: ``Pipeline([StandardScaler(),
    PCA(n_components=latent_dim=256, random_state=seed)])``; ``src/hest/bench/trainer.py``,
    ``train_test_reg``: ``Ridge(solver="lsqr", alpha=100 / (X_train.shape[1] * y_train.shape[1]),
    max_iter=1000, random_state=seed)``), the Ridge penalty is not tuned but fixed from the shapes:
    ``alpha = 100 / (n_components × n_genes)``, with ``n_components`` the PCA width actually used.

    Parameters
    ----------
    n_components : int
        PCA width, capped at ``min(n_train_units, n_features)``.
    alpha : float, optional
        Ridge penalty; None = HEST's rule above.
    fit_intercept : bool
        Ridge intercept. HEST uses ``fit_intercept=False``: harmless for its only metric (per-gene Pearson is
        shift invariant), but the PCA scores are centred, so every predicted gene then has mean ≈ 0, which
        ruins RMSE, PCC overall and JS. Default True here; pass False to reproduce HEST exactly.
    seed : int
        ``random_state`` of PCA and Ridge.
    max_iter : int
        Ridge ``lsqr`` iterations (HEST: 1000).

    Attributes
    ----------
    pipeline_ : sklearn.pipeline.Pipeline
        The fitted scaler, PCA and Ridge.
    n_components_ : int
        PCA width used.
    alpha_ : float
        Ridge penalty used.
    """

    pipeline_: Pipeline
    n_components_: int
    alpha_: float

    def __init__(
        self,
        *,
        n_components: int = 256,
        alpha: float | None = None,
        fit_intercept: bool = True,
        seed: int = 0,
        max_iter: int = 1000,
    ) -> None:
        self.n_components = n_components
        self.alpha = alpha
        self.fit_intercept = fit_intercept
        self.seed = seed
        self.max_iter = max_iter

    def _fit(self, x: np.ndarray, y: np.ndarray, groups: np.ndarray | None) -> None:
        self.n_components_ = int(min(self.n_components, x.shape[0], x.shape[1]))
        # HEST-Benchmark's rule (trainer.py, train_test_reg): alpha = 100 / (n_features × n_targets).
        self.alpha_ = (
            float(self.alpha) if self.alpha is not None else 100.0 / (self.n_components_ * y.shape[1])
        )
        self.pipeline_ = Pipeline(
            [
                ("scaler", StandardScaler()),
                ("pca", PCA(n_components=self.n_components_, random_state=self.seed)),
                (
                    "ridge",
                    Ridge(
                        alpha=self.alpha_,
                        solver="lsqr",
                        fit_intercept=self.fit_intercept,
                        max_iter=self.max_iter,
                        random_state=self.seed,
                    ),
                ),
            ]
        )
        self.pipeline_.fit(x, y)

    def _predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.pipeline_.predict(x), dtype=np.float64).reshape(x.shape[0], -1)


class OracleComposition(Baseline):
    """Demo-only oracle: Ridge on the true per-unit cell-type composition fractions.

    ``x`` must be fractions (each row in ``[0, 1]`` summing to 1), e.g. ``unit_mean_embeddings`` of the
    one-hot true cell types. It knows what no image model can, so it bounds what composition explains.

    Parameters
    ----------
    alpha : float
        Ridge penalty (small: it only resolves the collinearity of fractions that sum to 1).
    """

    ridge_: Ridge

    def __init__(self, *, alpha: float = 1e-3) -> None:
        self.alpha = alpha

    @staticmethod
    def _check_fractions(x: np.ndarray) -> None:
        ok = np.isfinite(x).all(axis=1)
        x = x[ok]
        if (x < -1e-9).any() or (x > 1 + 1e-9).any() or not np.allclose(x.sum(axis=1), 1.0, atol=1e-6):
            raise ValueError("OracleComposition needs cell-type fractions: rows in [0, 1] that sum to 1")

    def _fit(self, x: np.ndarray, y: np.ndarray, groups: np.ndarray | None) -> None:
        self._check_fractions(x)
        self.ridge_ = Ridge(alpha=self.alpha).fit(x, y)

    def _predict(self, x: np.ndarray) -> np.ndarray:
        self._check_fractions(x)
        return np.asarray(self.ridge_.predict(x), dtype=np.float64).reshape(x.shape[0], -1)


class _MLP(nn.Module):
    def __init__(self, n_in: int, hidden: tuple[int, ...], n_out: int, dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = n_in
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, n_out))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MLPBaseline(Baseline):
    """The paper's UNI+MLP baseline on unit-mean embeddings (Appendix C).

    Linear(1024) → ReLU → Linear(1024) → ReLU → Linear(n_genes), no output activation, Adam at 1e-3, MSE.
    Features and targets are standardised with statistics of the fitting part of the training units (targets
    are mapped back, so predictions are in the space of ``y_train``). Early stopping with ``patience`` on a
    validation split carved from the training units (by ``groups`` when given, so no sample straddles it),
    restoring the best validation epoch. Gradient norm clipped to 1.0 as in the paper
    (Appendix C.2). Deterministic on CPU for a given ``seed``; the global torch RNG is left untouched.

    Parameters
    ----------
    hidden : tuple of int
        Hidden widths (paper: 1024, 1024).
    lr : float
        Adam learning rate (paper: 1e-3).
    max_epochs : int
        Epoch cap; the paper trains 100 epochs, the default is smaller for CPU runs.
    patience : int
        Epochs without validation improvement before stopping (paper, Appendix C.2: 6).
    batch_size : int
        Mini-batch size.
    val_fraction : float
        Share of training units (or groups) held out for early stopping. With fewer than 2 units (or
        groups) no split is possible: the model trains for ``max_epochs`` and a warning says so.
    weight_decay : float
        Adam weight decay.
    seed : int
        Seed of the validation split, the initialisation and the batch order.

    Attributes
    ----------
    best_epoch_ : int
        Epoch (1-based) whose weights are kept.
    n_epochs_ : int
        Epochs run.
    history_ : list of tuple of float
        ``(train_loss, val_loss)`` per epoch, in standardised units (``val_loss`` NaN without validation).
    val_units_ : numpy.ndarray
        Indices (into ``x_train``) of the validation units.
    model_ : torch.nn.Module
        The network with the weights of ``best_epoch_``.
    """

    best_epoch_: int
    n_epochs_: int
    history_: list[tuple[float, float]]
    val_units_: np.ndarray
    model_: nn.Module

    def __init__(
        self,
        *,
        hidden: tuple[int, ...] = (1024, 1024),
        lr: float = 1e-3,
        max_epochs: int = 30,
        patience: int = 6,
        batch_size: int = 64,
        val_fraction: float = 0.2,
        weight_decay: float = 0.0,
        dropout: float = 0.0,
        seed: int = 0,
    ) -> None:
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.dropout = dropout
        self.hidden = tuple(hidden)
        self.lr = lr
        self.max_epochs = max_epochs
        self.patience = patience
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.weight_decay = weight_decay
        self.seed = seed

    def _split(self, n: int, groups: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        n_blocks = n if groups is None else np.unique(groups).size
        if n_blocks < 2:
            warnings.warn(
                "MLPBaseline: fewer than 2 training units/groups, no validation split: "
                f"training {self.max_epochs} epochs without early stopping",
                stacklevel=3,
            )
            return np.arange(n), np.array([], dtype=np.int64)
        n_val = min(max(1, math.ceil(self.val_fraction * n_blocks)), n_blocks - 1)
        rows = np.zeros((n, 1))
        if groups is None:
            splitter = ShuffleSplit(n_splits=1, test_size=n_val, random_state=self.seed)
            fit_idx, val_idx = next(splitter.split(rows))
        else:
            gsplit = GroupShuffleSplit(n_splits=1, test_size=n_val, random_state=self.seed)
            fit_idx, val_idx = next(gsplit.split(rows, groups=groups))
        return np.sort(fit_idx), np.sort(val_idx)

    def fit(
        self,
        x_train: ArrayLike,
        y_train: ArrayLike,
        *,
        groups: ArrayLike | None = None,
        validation: tuple[ArrayLike, ArrayLike] | None = None,
    ) -> Self:
        """As :meth:`Baseline.fit`; ``validation`` = ``(x, y)`` of units kept apart for early stopping
        (a fold's validation samples, as BiTro's), instead of a split carved from the training units."""
        self._validation = None if validation is None else _check_training(*validation)
        return super().fit(x_train, y_train, groups=groups)

    def _fit(self, x: np.ndarray, y: np.ndarray, groups: np.ndarray | None) -> None:
        given = getattr(self, "_validation", None)
        if given is not None:
            n = x.shape[0]
            x, y = np.concatenate([x, given[0]]), np.concatenate([y, given[1]])
            fit_idx, val_idx = np.arange(n), n + np.arange(len(given[0]))
        else:
            fit_idx, val_idx = self._split(x.shape[0], groups)
        self.val_units_ = val_idx
        self._x_mean = x[fit_idx].mean(axis=0)
        self._x_scale = _safe_scale(x[fit_idx].std(axis=0))
        self._y_mean = y[fit_idx].mean(axis=0)
        self._y_scale = _safe_scale(y[fit_idx].std(axis=0))
        xs = torch.as_tensor((x - self._x_mean) / self._x_scale, dtype=torch.float32)
        ys = torch.as_tensor((y - self._y_mean) / self._y_scale, dtype=torch.float32)
        x_fit, y_fit = xs[fit_idx], ys[fit_idx]
        x_val, y_val = xs[val_idx], ys[val_idx]

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            model = _MLP(x.shape[1], self.hidden, y.shape[1], self.dropout)
        gen = torch.Generator().manual_seed(self.seed)
        opt = torch.optim.Adam(model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        loss_fn = nn.MSELoss()
        best_loss, best_state, best_epoch, stale = math.inf, copy.deepcopy(model.state_dict()), 0, 0
        self.history_ = []
        epoch = 0
        for epoch in range(1, self.max_epochs + 1):
            model.train()
            order = torch.randperm(x_fit.shape[0], generator=gen)
            total = 0.0
            for start in range(0, order.numel(), self.batch_size):
                batch = order[start : start + self.batch_size]
                opt.zero_grad()
                loss = loss_fn(model(x_fit[batch]), y_fit[batch])
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                total += float(loss.detach()) * batch.numel()
            train_loss = total / max(order.numel(), 1)
            if val_idx.size:
                model.eval()
                with torch.no_grad():
                    val_loss = float(loss_fn(model(x_val), y_val))
            else:
                val_loss = math.nan
            self.history_.append((train_loss, val_loss))
            score = val_loss if val_idx.size else -epoch  # without validation: keep the last epoch
            if score < best_loss:
                best_loss, best_state, best_epoch, stale = score, copy.deepcopy(model.state_dict()), epoch, 0
            else:
                stale += 1
                if stale >= self.patience:
                    break
        model.load_state_dict(best_state)
        model.eval()
        self.model_ = model
        self.best_epoch_ = best_epoch
        self.n_epochs_ = epoch

    def _predict(self, x: np.ndarray) -> np.ndarray:
        xs = torch.as_tensor((x - self._x_mean) / self._x_scale, dtype=torch.float32)
        with torch.no_grad():
            out = self.model_(xs).double().numpy()
        return out * self._y_scale + self._y_mean


def _safe_scale(std: np.ndarray) -> np.ndarray:
    """Standard deviations with zeros replaced by 1 (constant columns stay constant)."""
    return np.where(std > 0, std, 1.0)
