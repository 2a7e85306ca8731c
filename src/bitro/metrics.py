"""Expression metrics of the BiTro paper (§4.1, eq. 14–16), computed on units × genes arrays.

Every function takes ``truth`` and ``pred`` as 2-D arrays of the same shape, one row per unit (spot, cell,
bulk sample) and one column per gene, already aligned by gene name.

Conventions
-----------
* **Missing values.** NaN entries are allowed in both arrays; each statistic uses the pairwise-complete
  entries only (an entry counts where both truth and prediction are finite). A unit whose prediction row is
  all NaN (e.g. a unit without cells, see :func:`bitro.evaluate.baselines.unit_mean_embeddings`) thus drops
  out of every per-gene statistic and is itself undefined. ±inf is an error, never a missing value.
* **Undefined correlations.** A Pearson/Spearman correlation is undefined where truth or prediction is
  constant over the entries it is computed on, or where fewer than 2 entries are available. Undefined
  values are NaN, they are counted (:class:`Scores`), and means average the defined values only: read a mean
  together with its count of undefined items.
* **Space.** The metrics are computed in whatever space the arrays are in; :func:`evaluate` requires the
  caller to name it ("log1p counts", "TPM", "log1p TPM", …) and stores the label with the numbers.
* **Pooled vs per sample**. :func:`evaluate` computes the headline numbers either pooled over
  all units, or per sample (``groups``) and then averaged over samples; the record says which.

The Pearson and Spearman computations are vectorised over genes/units (processed in column chunks to bound
memory), with no Python loop per gene.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy.special import rel_entr
from scipy.stats import rankdata

__all__ = [
    "Evaluation",
    "MetricSet",
    "Scores",
    "evaluate",
    "js_divergence",
    "pcc_gene",
    "pcc_overall",
    "rmse",
    "rmse_gene",
    "spearman_gene",
    "summarise_folds",
]

Scope = Literal["pooled", "per_sample"]

# Elements of one column chunk (float64: 32 MiB per temporary array).
_CHUNK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class Scores:
    """A score per item (unit or gene), NaN where undefined.

    Attributes
    ----------
    values : numpy.ndarray
        Float64 scores, shape ``(n_items,)``; NaN where undefined.
    undefined : numpy.ndarray
        Boolean mask of the undefined items (constant input, fewer than 2 complete entries, or otherwise not
        computable), shape ``(n_items,)``.
    """

    values: np.ndarray
    undefined: np.ndarray

    @property
    def n_undefined(self) -> int:
        """Number of undefined items."""
        return int(self.undefined.sum())

    @property
    def n_defined(self) -> int:
        """Number of defined items."""
        return int(self.undefined.size - self.undefined.sum())

    @property
    def mean(self) -> float:
        """Mean over the defined items; NaN when none is defined."""
        if self.n_defined == 0:
            return math.nan
        return float(np.mean(self.values[~self.undefined]))


# --------------------------------------------------------------------------------------------- validation


def _pair(truth: ArrayLike, pred: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Return ``truth`` and ``pred`` as float64 2-D arrays of one shape; reject ±inf."""
    t = np.asarray(truth, dtype=np.float64)
    p = np.asarray(pred, dtype=np.float64)
    if t.ndim != 2 or p.ndim != 2:
        raise ValueError(f"truth and pred must be 2-D (units × genes), got {t.shape} and {p.shape}")
    if t.shape != p.shape:
        raise ValueError(f"truth and pred differ in shape: {t.shape} vs {p.shape}")
    for name, a in (("truth", t), ("pred", p)):
        if np.isinf(a).any():
            raise ValueError(f"{name} contains ±inf; use NaN for a missing value")
    return t, p


# ------------------------------------------------------------------------------------------- correlations


def _columnwise_pearson(a: np.ndarray, b: np.ndarray) -> Scores:
    """Pearson correlation of each column of ``a`` with the same column of ``b`` (pairwise complete)."""
    n_obs, n_cols = a.shape
    values = np.full(n_cols, np.nan)
    undefined = np.ones(n_cols, dtype=bool)
    step = max(1, _CHUNK_ELEMENTS // max(n_obs, 1))
    for start in range(0, n_cols, step):
        cols = slice(start, start + step)
        x, y = a[:, cols], b[:, cols]
        valid = ~(np.isnan(x) | np.isnan(y))
        n = valid.sum(axis=0)
        x = np.where(valid, x, 0.0)
        y = np.where(valid, y, 0.0)
        denom = np.maximum(n, 1)
        xc = np.where(valid, x - x.sum(axis=0) / denom, 0.0)
        yc = np.where(valid, y - y.sum(axis=0) / denom, 0.0)
        # Constant = every complete entry equal (exact test, as scipy.stats.pearsonr does).
        const_x = np.where(valid, x, -np.inf).max(axis=0) == np.where(valid, x, np.inf).min(axis=0)
        const_y = np.where(valid, y, -np.inf).max(axis=0) == np.where(valid, y, np.inf).min(axis=0)
        sxx = np.einsum("ij,ij->j", xc, xc)
        syy = np.einsum("ij,ij->j", yc, yc)
        sxy = np.einsum("ij,ij->j", xc, yc)
        ok = (n >= 2) & ~const_x & ~const_y & (sxx > 0) & (syy > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            r = sxy / np.sqrt(sxx) / np.sqrt(syy)
        values[cols] = np.where(ok, np.clip(r, -1.0, 1.0), np.nan)
        undefined[cols] = ~ok
    return Scores(values=values, undefined=undefined)


def _columnwise_spearman(a: np.ndarray, b: np.ndarray) -> Scores:
    """Spearman correlation per column: Pearson of the (average-tie) ranks of the complete entries."""
    n_obs, n_cols = a.shape
    values = np.full(n_cols, np.nan)
    undefined = np.ones(n_cols, dtype=bool)
    step = max(1, _CHUNK_ELEMENTS // max(n_obs, 1))
    for start in range(0, n_cols, step):
        cols = slice(start, start + step)
        missing = np.isnan(a[:, cols]) | np.isnan(b[:, cols])
        x = np.where(missing, np.nan, a[:, cols])
        y = np.where(missing, np.nan, b[:, cols])
        rx = rankdata(x, axis=0, nan_policy="omit")
        ry = rankdata(y, axis=0, nan_policy="omit")
        part = _columnwise_pearson(np.asarray(rx, dtype=np.float64), np.asarray(ry, dtype=np.float64))
        values[cols] = part.values
        undefined[cols] = part.undefined
    return Scores(values=values, undefined=undefined)


def pcc_overall(truth: ArrayLike, pred: ArrayLike) -> Scores:
    """PCC overall (paper eq. 14): Pearson across genes within each unit.

    Parameters
    ----------
    truth, pred : array_like, shape (n_units, n_genes)
        True and predicted expression, columns aligned by gene.

    Returns
    -------
    Scores
        One correlation per unit; undefined (NaN, counted) where the unit's truth or prediction is constant
        across genes or fewer than 2 genes are complete. ``Scores.mean`` is the paper's averaged PCC overall
        (over defined units).
    """
    t, p = _pair(truth, pred)
    return _columnwise_pearson(t.T, p.T)


def pcc_gene(truth: ArrayLike, pred: ArrayLike) -> Scores:
    """PCC gene (paper eq. 15): Pearson across units for each gene.

    Parameters
    ----------
    truth, pred : array_like, shape (n_units, n_genes)
        True and predicted expression, columns aligned by gene.

    Returns
    -------
    Scores
        One correlation per gene; undefined (NaN, counted) where the gene is constant in truth or in the
        prediction over the complete units, or fewer than 2 units are complete.
        ``Scores.mean`` is the paper's averaged PCC gene over defined genes.
    """
    t, p = _pair(truth, pred)
    return _columnwise_pearson(t, p)


def spearman_gene(truth: ArrayLike, pred: ArrayLike) -> Scores:
    """Spearman rank correlation across units for each gene (ties get average ranks).

    Parameters
    ----------
    truth, pred : array_like, shape (n_units, n_genes)
        True and predicted expression, columns aligned by gene.

    Returns
    -------
    Scores
        One correlation per gene; undefined as in :func:`pcc_gene`.
    """
    t, p = _pair(truth, pred)
    return _columnwise_spearman(t, p)


# ------------------------------------------------------------------------------------------------- errors


def rmse(truth: ArrayLike, pred: ArrayLike) -> float:
    """Root mean squared error over all complete entries (units × genes pooled).

    This is ``sqrt(mean((truth - pred)²))`` over every complete entry, not the mean of per-gene RMSEs.

    Parameters
    ----------
    truth, pred : array_like, shape (n_units, n_genes)
        True and predicted expression.

    Returns
    -------
    float
        The RMSE; NaN when no entry is complete.
    """
    t, p = _pair(truth, pred)
    sq = (t - p) ** 2
    valid = ~np.isnan(sq)
    n = int(valid.sum())
    return math.sqrt(float(np.where(valid, sq, 0.0).sum()) / n) if n else math.nan


def rmse_gene(truth: ArrayLike, pred: ArrayLike) -> np.ndarray:
    """Root mean squared error per gene over its complete units.

    Parameters
    ----------
    truth, pred : array_like, shape (n_units, n_genes)
        True and predicted expression.

    Returns
    -------
    numpy.ndarray
        Shape ``(n_genes,)``; NaN for a gene without complete units.
    """
    t, p = _pair(truth, pred)
    sq = (t - p) ** 2
    valid = ~np.isnan(sq)
    n = valid.sum(axis=0)
    total = np.where(valid, sq, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, np.sqrt(total / np.maximum(n, 1)), np.nan)


def js_divergence(truth: ArrayLike, pred: ArrayLike) -> Scores:
    """Jensen–Shannon divergence per unit between normalised expression profiles (paper eq. 16, corrected).

    ``JS(p, q) = ½ KL(p‖m) + ½ KL(q‖m)`` with ``m = (p + q) / 2``, natural log (values in ``[0, ln 2]``),
    where ``p`` and ``q`` are the unit's true and predicted expression vectors normalised to sum to 1 over
    genes. The paper prints ``KL(y‖ŷ)`` twice; this is the standard definition and equals
    ``scipy.spatial.distance.jensenshannon(p, q) ** 2``.

    Rules
    -----
    * Negative **predictions** are clipped to 0 before normalising (a regressor may undershoot 0; expression
      is non-negative). Negative **truth** is an error: the profiles must be in a non-negative space such as
      counts or TPM (not z-scores).
    * A unit is undefined (NaN, counted) if any of its entries is NaN in truth or prediction, or if either
      profile sums to 0 (after clipping).

    Parameters
    ----------
    truth, pred : array_like, shape (n_units, n_genes)
        True and predicted expression in a non-negative space.

    Returns
    -------
    Scores
        One divergence per unit.

    Raises
    ------
    ValueError
        If ``truth`` has a negative entry.
    """
    t, p = _pair(truth, pred)
    if (t < 0).any():
        raise ValueError("JS divergence needs non-negative truth (counts, TPM, log1p …), got negative values")
    p = np.clip(p, 0.0, None)  # NaN stays NaN
    complete = ~(np.isnan(t).any(axis=1) | np.isnan(p).any(axis=1))
    st = np.where(complete, np.nansum(t, axis=1), 0.0)
    sp = np.where(complete, np.nansum(p, axis=1), 0.0)
    ok = complete & (st > 0) & (sp > 0)
    values = np.full(t.shape[0], np.nan)
    if ok.any():
        pt = t[ok] / st[ok, None]
        pp = p[ok] / sp[ok, None]
        m = 0.5 * (pt + pp)
        js = 0.5 * rel_entr(pt, m).sum(axis=1) + 0.5 * rel_entr(pp, m).sum(axis=1)
        values[ok] = np.clip(js, 0.0, math.log(2.0))
    return Scores(values=values, undefined=~ok)


# ------------------------------------------------------------------------------------------- metric sets


@dataclass(frozen=True)
class MetricSet:
    """Headline metrics of one evaluation (one fold, one model), with their space and scope.

    Attributes
    ----------
    space : str
        The expression space the metrics were computed in, e.g. ``"log1p counts"``, ``"TPM"``.
    scope : str
        ``"pooled"``: every metric over all units together; ``"per_sample"``: computed within each sample
        (``groups``) and averaged over the samples where defined; ``"sample"``: one sample's own row.
    n_samples, n_units, n_genes : int
        Sizes (``n_samples`` is 1 without groups).
    pcc_overall : float
        Mean PCC overall (eq. 14) over defined units.
    pcc_gene : float
        Mean PCC gene (eq. 15) over defined genes.
    spearman_gene : float
        Mean Spearman per gene over defined genes.
    rmse : float
        RMSE over all complete entries (per sample, then averaged, in the per-sample scope).
    js_divergence : float
        Mean JS divergence over defined units (NaN where truth has negative values, see :func:`evaluate`).
    n_undefined_units : int
        Units whose PCC overall is undefined.
    n_undefined_genes : int
        Genes whose PCC gene is undefined (in the per-sample scope: undefined in at least one sample).
    n_undefined_genes_spearman : int
        As ``n_undefined_genes``, for Spearman.
    n_undefined_js_units : int
        Units whose JS divergence is undefined.
    n_undefined_samples : int
        Samples without any defined PCC gene (per-sample scope; 0 when pooled and defined).
    n_nan_entries : int
        Entries that are NaN in truth or prediction.
    undefined_genes : tuple of str
        Names of the genes counted in ``n_undefined_genes``.
    """

    space: str
    scope: str
    n_samples: int
    n_units: int
    n_genes: int
    pcc_overall: float
    pcc_gene: float
    spearman_gene: float
    rmse: float
    js_divergence: float
    n_undefined_units: int
    n_undefined_genes: int
    n_undefined_genes_spearman: int
    n_undefined_js_units: int
    n_undefined_samples: int
    n_nan_entries: int
    undefined_genes: tuple[str, ...] = field(default=())

    def to_record(self) -> dict[str, object]:
        """Flat dict for a results table; ``undefined_genes`` is joined with ``";"``."""
        record: dict[str, object] = {
            name: getattr(self, name) for name in self.__dataclass_fields__ if name != "undefined_genes"
        }
        record["undefined_genes"] = ";".join(self.undefined_genes)
        return record


@dataclass(frozen=True)
class Evaluation:
    """Result of :func:`evaluate`.

    Attributes
    ----------
    metrics : MetricSet
        Headline metrics, in the requested scope.
    per_gene : pandas.DataFrame
        Indexed by gene: ``pcc``, ``spearman``, ``rmse``, ``pcc_defined`` (pooled scope) or, in the per-sample
        scope, the means over the samples where defined and ``n_samples_undefined``.
    per_unit : pandas.DataFrame
        One row per unit: ``group``, ``pcc_overall``, ``js_divergence`` (NaN where undefined).
    per_sample : pandas.DataFrame or None
        One :meth:`MetricSet.to_record` row per sample (scope ``"sample"``), indexed by group label; None
        without groups.
    """

    metrics: MetricSet
    per_gene: pd.DataFrame
    per_unit: pd.DataFrame
    per_sample: pd.DataFrame | None

    def record(self, **labels: object) -> dict[str, object]:
        """``labels`` (e.g. ``fold=0, model="hest_probe"``) followed by the headline metrics."""
        return {**labels, **self.metrics.to_record()}


@dataclass(frozen=True)
class _Core:
    """All per-item scores of one block of units."""

    pcc_unit: Scores
    js_unit: Scores | None
    pcc_gene: Scores
    spearman_gene: Scores
    rmse_gene: np.ndarray
    rmse: float
    n_nan: int


def _core(t: np.ndarray, p: np.ndarray, *, with_js: bool) -> _Core:
    return _Core(
        pcc_unit=_columnwise_pearson(t.T, p.T),
        js_unit=js_divergence(t, p) if with_js else None,
        pcc_gene=_columnwise_pearson(t, p),
        spearman_gene=_columnwise_spearman(t, p),
        rmse_gene=rmse_gene(t, p),
        rmse=rmse(t, p),
        n_nan=int((np.isnan(t) | np.isnan(p)).sum()),
    )


def _metric_set(core: _Core, *, space: str, scope: str, genes: np.ndarray, n_samples: int) -> MetricSet:
    n_units, n_genes = core.pcc_unit.values.size, core.pcc_gene.values.size
    js = core.js_unit
    return MetricSet(
        space=space,
        scope=scope,
        n_samples=n_samples,
        n_units=n_units,
        n_genes=n_genes,
        pcc_overall=core.pcc_unit.mean,
        pcc_gene=core.pcc_gene.mean,
        spearman_gene=core.spearman_gene.mean,
        rmse=core.rmse,
        js_divergence=js.mean if js is not None else math.nan,
        n_undefined_units=core.pcc_unit.n_undefined,
        n_undefined_genes=core.pcc_gene.n_undefined,
        n_undefined_genes_spearman=core.spearman_gene.n_undefined,
        n_undefined_js_units=js.n_undefined if js is not None else n_units,
        n_undefined_samples=int(core.pcc_gene.n_defined == 0),
        n_nan_entries=core.n_nan,
        undefined_genes=tuple(str(g) for g in genes[core.pcc_gene.undefined]),
    )


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else math.nan


def _column_nanmean(rows: np.ndarray) -> np.ndarray:
    """Mean over axis 0 ignoring NaN, NaN (without a warning) where a column is all NaN."""
    n = (~np.isnan(rows)).sum(axis=0)
    total = np.where(np.isnan(rows), 0.0, rows).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, total / np.maximum(n, 1), np.nan)


def evaluate(
    truth: ArrayLike,
    pred: ArrayLike,
    *,
    space: str,
    genes: Sequence[str],
    groups: ArrayLike | None = None,
    scope: Scope | None = None,
) -> Evaluation:
    """Compute all metrics for one prediction, labelled with its space and scope.

    Parameters
    ----------
    truth, pred : array_like, shape (n_units, n_genes)
        True and predicted expression, columns aligned with ``genes``. NaN = missing (see module notes).
    space : str
        Name of the expression space of both arrays ("log1p counts", "TPM", "log1p TPM", …); stored with
        the numbers, never inferred.
    genes : sequence of str
        Gene names of the columns (unique).
    groups : array_like, shape (n_units,), optional
        Sample (or patient) label of each unit. With groups, metrics are also computed within each sample
        (``Evaluation.per_sample``).
    scope : {"pooled", "per_sample"}, optional
        Scope of the headline metrics. ``"pooled"``: over all units together;
        ``"per_sample"``: within each sample, then the mean over samples where defined. Default:
        ``"per_sample"`` when ``groups`` is given, else ``"pooled"``.

    Returns
    -------
    Evaluation
        Headline :class:`MetricSet` plus per-gene, per-unit and per-sample tables.

    Notes
    -----
    The JS divergence needs non-negative truth; when ``truth`` has negative entries (e.g. z-scores) it is
    reported as NaN with every unit counted undefined, instead of raising.
    """
    t, p = _pair(truth, pred)
    gene_names = np.asarray([str(g) for g in genes], dtype=object)
    if gene_names.size != t.shape[1]:
        raise ValueError(f"{gene_names.size} gene names for {t.shape[1]} columns")
    if len(set(gene_names)) != gene_names.size:
        raise ValueError("gene names must be unique")
    if not isinstance(space, str) or not space.strip():
        raise ValueError("space must name the expression space, e.g. 'log1p counts' or 'TPM'")
    if scope is None:
        scope = "pooled" if groups is None else "per_sample"
    if scope not in ("pooled", "per_sample"):
        raise ValueError(f"scope must be 'pooled' or 'per_sample', got {scope!r}")
    if scope == "per_sample" and groups is None:
        raise ValueError("scope='per_sample' needs groups (the sample of each unit)")

    with_js = not bool((t < 0).any())
    if groups is None:
        group_of = np.zeros(t.shape[0], dtype=np.int64)
        labels: list[object] = ["all"]
    else:
        g = np.asarray(groups)
        if g.shape != (t.shape[0],):
            raise ValueError(f"groups must have one label per unit ({t.shape[0]}), got shape {g.shape}")
        uniq, group_of = np.unique(g, return_inverse=True)
        labels = list(uniq)

    pooled = _core(t, p, with_js=with_js)
    per_unit = pd.DataFrame(
        {
            "group": np.asarray(labels, dtype=object)[group_of],
            "pcc_overall": pooled.pcc_unit.values,
            "js_divergence": pooled.js_unit.values if pooled.js_unit is not None else np.nan,
        }
    )

    per_sample_sets: list[MetricSet] = []
    per_sample_cores: list[_Core] = []
    if groups is not None:
        for k in range(len(labels)):
            rows = group_of == k
            core = _core(t[rows], p[rows], with_js=with_js)
            per_sample_cores.append(core)
            per_sample_sets.append(
                _metric_set(core, space=space, scope="sample", genes=gene_names, n_samples=1)
            )
    per_sample = (
        pd.DataFrame(
            [m.to_record() for m in per_sample_sets],
            index=pd.Index([str(lab) for lab in labels], name="group"),
        )
        if groups is not None
        else None
    )

    if scope == "pooled":
        metrics = _metric_set(pooled, space=space, scope="pooled", genes=gene_names, n_samples=len(labels))
        per_gene = pd.DataFrame(
            {
                "pcc": pooled.pcc_gene.values,
                "spearman": pooled.spearman_gene.values,
                "rmse": pooled.rmse_gene,
                "pcc_defined": ~pooled.pcc_gene.undefined,
            },
            index=pd.Index(gene_names, name="gene"),
        )
    else:
        undef_pcc = np.vstack([c.pcc_gene.undefined for c in per_sample_cores])
        undef_sp = np.vstack([c.spearman_gene.undefined for c in per_sample_cores])
        metrics = MetricSet(
            space=space,
            scope="per_sample",
            n_samples=len(labels),
            n_units=t.shape[0],
            n_genes=t.shape[1],
            pcc_overall=_nanmean([m.pcc_overall for m in per_sample_sets]),
            pcc_gene=_nanmean([m.pcc_gene for m in per_sample_sets]),
            spearman_gene=_nanmean([m.spearman_gene for m in per_sample_sets]),
            rmse=_nanmean([m.rmse for m in per_sample_sets]),
            js_divergence=_nanmean([m.js_divergence for m in per_sample_sets]),
            n_undefined_units=sum(m.n_undefined_units for m in per_sample_sets),
            n_undefined_genes=int(undef_pcc.any(axis=0).sum()),
            n_undefined_genes_spearman=int(undef_sp.any(axis=0).sum()),
            n_undefined_js_units=sum(m.n_undefined_js_units for m in per_sample_sets),
            n_undefined_samples=sum(m.n_undefined_samples for m in per_sample_sets),
            n_nan_entries=pooled.n_nan,
            undefined_genes=tuple(str(g) for g in gene_names[undef_pcc.any(axis=0)]),
        )
        per_gene = pd.DataFrame(
            {
                "pcc": _column_nanmean(np.vstack([c.pcc_gene.values for c in per_sample_cores])),
                "spearman": _column_nanmean(np.vstack([c.spearman_gene.values for c in per_sample_cores])),
                "rmse": _column_nanmean(np.vstack([c.rmse_gene for c in per_sample_cores])),
                "n_samples_undefined": undef_pcc.sum(axis=0),
            },
            index=pd.Index(gene_names, name="gene"),
        )
    return Evaluation(metrics=metrics, per_gene=per_gene, per_unit=per_unit, per_sample=per_sample)


# ------------------------------------------------------------------------------------------------- folds


def summarise_folds(
    records: Sequence[Mapping[str, object] | MetricSet | Evaluation], *, fold_column: str = "fold"
) -> pd.DataFrame:
    """One row per fold, then a ``"mean"`` and a ``"std"`` row.

    Parameters
    ----------
    records : sequence of mapping, MetricSet or Evaluation
        One per fold: :meth:`Evaluation.record` dicts (with labels such as ``fold``), or the metric objects.
    fold_column : str
        Column whose values name the folds (the row index); folds are numbered 0.. when absent.

    Returns
    -------
    pandas.DataFrame
        Fold rows as given, plus ``"mean"`` and ``"std"`` over folds for every numeric column. ``std`` is
        the sample standard deviation (``ddof=1``; NaN for a single fold). NaN propagates: a fold with an
        undefined metric makes its mean and std NaN (look at the fold's undefined counts). Text columns
        (``space``, ``scope``, model names) are copied to the summary rows where all folds agree and left
        empty otherwise, except that mixing spaces or scopes across folds is an error.

    Raises
    ------
    ValueError
        For no records, or records mixing ``space`` or ``scope`` values.
    """
    if len(records) == 0:
        raise ValueError("no fold records to summarise")
    rows: list[dict[str, object]] = []
    for rec in records:
        if isinstance(rec, Evaluation):
            rows.append(rec.record())
        elif isinstance(rec, MetricSet):
            rows.append(rec.to_record())
        else:
            rows.append(dict(rec))
    table = pd.DataFrame(rows)
    for col in ("space", "scope"):
        if col in table and table[col].nunique(dropna=False) > 1:
            raise ValueError(f"folds mix {col} values {sorted(map(str, table[col].unique()))}")
    if fold_column in table:
        table.index = pd.Index([str(v) for v in table.pop(fold_column)], name=fold_column)
    else:
        table.index = pd.Index([str(i) for i in range(len(table))], name=fold_column)
    if table.index.isin(["mean", "std"]).any():
        raise ValueError("a fold may not be named 'mean' or 'std'")

    numeric = [c for c in table.columns if pd.api.types.is_numeric_dtype(table[c])]
    numeric = [c for c in numeric if not pd.api.types.is_bool_dtype(table[c])]
    summary: dict[str, dict[str, object]] = {"mean": {}, "std": {}}
    for col in table.columns:
        if col in numeric:
            values = table[col].astype(np.float64)
            summary["mean"][col] = float(values.mean(skipna=False))
            summary["std"][col] = float(values.std(ddof=1, skipna=False)) if len(values) > 1 else math.nan
        else:
            same = table[col].nunique(dropna=False) == 1
            summary["mean"][col] = table[col].iloc[0] if same else None
            summary["std"][col] = table[col].iloc[0] if same else None
    extra = pd.DataFrame.from_dict(summary, orient="index")
    return pd.concat([table, extra[table.columns]], axis=0)


def metric_rows(
    truth: np.ndarray,
    prediction: np.ndarray,
    genes: Sequence[str],
    groups: np.ndarray,
    *,
    level: str,
    spaces: Sequence[str],
    model: str,
    fold: str,
) -> list[dict[str, object]]:
    """The rows of a ``metrics.tsv`` for one model's predictions of one fold, one row per space.

    ``truth`` and ``prediction`` are in counts or TPM; a space named ``log1p …`` scores their log1p.
    Spots and cells are scored within each test sample (``groups``), then averaged, even when a fold tests
    one sample, so every fold of a cohort has the same scope; bulk slides (``level="slide"``) are one unit
    each, so their metrics are pooled over the slides.
    """
    rows = []
    for space in spaces:
        t, p = (np.log1p(truth), np.log1p(prediction)) if space.startswith("log1p") else (truth, prediction)
        scope = "pooled" if level == "slide" else "per_sample"
        result = evaluate(t, p, space=space, genes=genes, groups=groups if scope == "per_sample" else None)
        rows.append(result.record(fold=fold, model=model, level=level))
    return rows
