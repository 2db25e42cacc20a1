"""How a sweep's sites are scored and ranked: one definition, used by ``ds.dp``, the CLI and the report.

A site's **score** for a metric is the mean over prompt pairs and seeds (unfinished cells skipped) in
its **best cell** of the remaining grid dims (``t_start``, and ``head`` in a per-head sweep): the step
window (and head) in which that site does its job best. With ``t_start=`` given, that window is used
instead of the best one. "Best" is the largest value, or the smallest for the metrics the registry marks
lower-is-better (distances and errors: ``lev_*``, ``length_error_*``, ``mse``). Sites are ranked by score, ties kept in
catalogue order; a site with no finished cell ranks last.

Why the best window and not the mean over windows: a t_s sweep asks *from which step on* a site still
moves the text, and a site that works from t_s = 0 but not from t_s = 20 is the site the paper
localizes; averaging over windows would rank it below a site that is mediocre everywhere.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from .errors import MetricError, ResultsError, did_you_mean
from .metrics import lower_is_better

__all__ = ["SiteScore", "metric_names", "select_metric", "default_metric", "site_scores", "rank_sites",
           "mean_ci", "t_interval", "POOLED", "GROUP_DIMS"]

#: dims a score averages over; every other non-group dim is a cell dim whose best value is taken
POOLED = ("pair", "seed")
GROUP_DIMS = ("site", "n_sites")
IMAGE_DIMS = ("y", "x", "rgb")


@dataclass(frozen=True)
class SiteScore:
    """One site's score: the mean over pairs and seeds in its best cell (e.g. ``{"t_start": 0}``)."""

    position: int  # along the dataset's group dim
    index: int
    label: str
    name: str
    kind: str
    mean: float
    n: int
    best: dict[str, Any]
    #: the paper's set F1 (2 mean(P) mean(R) / (mean(P) + mean(R) + 1e-6) of the paper_* precision and recall)
    #: in the same cell, against the text the metric is about; None when the dataset has no paper_* metrics
    paper_set_f1: float | None = None
    #: the length view in the same cell: the rate at which the reading has as many characters as the text
    #: (``length_match_<against>``, whitespace removed); None when the dataset has no length metric
    length_match: float | None = None


def metric_names(ds: xr.Dataset) -> list[str]:
    """The float data variables of ``ds`` that are metrics on the cell grid (not images, flags or baselines)."""
    group = group_dim(ds)
    return sorted(
        str(name) for name, var in ds.data_vars.items()
        if var.dtype.kind == "f" and not set(IMAGE_DIMS) & set(var.dims) and (group is None or group in var.dims)
    )


def group_dim(ds: xr.Dataset) -> str | None:
    return next((d for d in GROUP_DIMS if d in ds.dims), None)


def select_metric(ds: xr.Dataset, metric: str) -> xr.DataArray:
    """``ds[metric]``, or a :class:`MetricError` with "did you mean" and the dataset's metrics."""
    names = metric_names(ds)
    if not isinstance(metric, str) or metric not in names:
        raise MetricError(
            f"No metric {metric!r} in this dataset.{did_you_mean(str(metric), names)} "
            f"The dataset's metrics are: {', '.join(names) or '(none)'}.", field="metric",
        )
    return ds[metric]


def default_metric(ds: xr.Dataset) -> str:
    """OCR F1 to the target text when the sweep computed it, else the first metric of the dataset."""
    names = metric_names(ds)
    if "ocr_f1_target" in names:
        return "ocr_f1_target"
    if not names:
        raise ResultsError("The dataset has no metrics to rank sites by.")
    return names[0]


def t_interval(n: np.ndarray, sd: np.ndarray, ci: float = 0.95) -> np.ndarray:
    """Half-width of the Student-t confidence interval of a mean of ``n`` values with std ``sd`` (NaN for n < 2)."""
    from scipy import stats

    n = np.asarray(n, dtype=float)
    with np.errstate(invalid="ignore", divide="ignore"):
        half = stats.t.ppf(0.5 + ci / 2, np.maximum(n - 1, 1)) * sd / np.sqrt(n)
    return np.where(n > 1, half, np.nan)


def mean_ci(da: xr.DataArray, over=POOLED, ci: float = 0.95) -> xr.Dataset:
    """Mean, half-width of a Student-t confidence interval, and n over ``over`` (NaN cells skipped)."""
    dims = [d for d in over if d in da.dims]
    n = da.notnull().sum(dims)
    mean = da.mean(dims, skipna=True)
    sd = da.std(dims, skipna=True, ddof=1)
    half = xr.apply_ufunc(lambda a, b: t_interval(a, b, ci), n, sd)
    return xr.Dataset({"mean": mean, "ci": half, "n": n})


def site_scores(ds: xr.Dataset, metric: str, t_start: int | None = None) -> list[SiteScore]:
    """Every site's :class:`SiteScore` for ``metric``, in the dataset's site order."""
    da = select_metric(ds, metric)
    group = group_dim(ds)
    if group is None:
        raise ResultsError(f"{metric!r} has no site dim (its dims are {da.dims}); ranking needs one.")
    if t_start is not None:
        if "t_start" not in da.dims or t_start not in da["t_start"].values:
            have = list(da["t_start"].values) if "t_start" in da.dims else []
            raise ResultsError(f"t_start={t_start} is not in this dataset; it has t_start {have}.", field="t_start")
        da = da.sel(t_start=t_start)
    pooled = [d for d in POOLED if d in da.dims]
    means, counts = da.mean(pooled, skipna=True), da.notnull().sum(pooled)
    cell_dims = [d for d in means.dims if d != group]
    sign = 1.0 if lower_is_better(metric) else -1.0
    out = []
    for pos in range(ds.sizes[group]):
        cells = means.isel({group: pos}).transpose(*cell_dims).values
        keyed = np.where(np.isnan(cells), np.inf, sign * cells)
        best_at = np.unravel_index(int(np.argmin(keyed)), keyed.shape) if cell_dims else ()
        best = {d: means[d].values[i].item() for d, i in zip(cell_dims, best_at)}
        value = float(cells[best_at]) if cell_dims else float(cells)
        n = int(counts.isel({group: pos}).transpose(*cell_dims).values[best_at]) if cell_dims else int(counts.isel({group: pos}))
        cell = {group: pos, **({"t_start": t_start} if t_start is not None else {})}
        out.append(_score(ds, group, pos, value, n, best, _paper_set_f1(ds, metric, cell, best),
                          _length_match(ds, metric, cell, best)))
    return out


def _against(metric: str) -> str:
    return "source" if metric.endswith("_source") else "target"


def _cell(ds: xr.Dataset, name: str, position: dict, best: dict) -> np.ndarray:
    """The values of variable ``name`` over the pairs and seeds of one cell (group position + best cell)."""
    group = next(iter(position))
    da = ds[name].isel({group: position[group]})
    return da.sel({k: v for k, v in {**position, **best}.items() if k != group}).values.ravel()


def _paper_set_f1(ds: xr.Dataset, metric: str, position: dict, best: dict) -> float | None:
    """The paper's set F1 over the pairs and seeds of one cell, against the text ``metric`` is about."""
    from .metrics import paper_set_f1

    against = _against(metric)
    names = (f"paper_precision_{against}", f"paper_recall_{against}")
    if not all(n in ds for n in names):
        return None
    p, r = (_cell(ds, n, position, best) for n in names)
    keep = ~(np.isnan(p) | np.isnan(r))
    return float(paper_set_f1(p[keep], r[keep])) if keep.any() else None


def _length_match(ds: xr.Dataset, metric: str, position: dict, best: dict) -> float | None:
    """The rate of readings of the right length (``length_match_<against>``) over one cell's pairs and seeds."""
    name = f"length_match_{_against(metric)}"
    if name not in ds:
        return None
    v = _cell(ds, name, position, best)
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else None


def rank_sites(ds: xr.Dataset, metric: str = "ocr_f1_target", k: int | None = None,
               t_start: int | None = None) -> list[SiteScore]:
    """The ``k`` best sites (all when None) by :func:`site_scores`, best first."""
    scores = site_scores(ds, metric, t_start)
    sign = 1.0 if lower_is_better(metric) else -1.0
    ranked = sorted(scores, key=lambda s: (np.isnan(s.mean), sign * s.mean if not np.isnan(s.mean) else 0.0))
    return ranked if k is None else ranked[:k]


def _score(ds: xr.Dataset, group: str, pos: int, mean: float, n: int, best: dict,
           set_f1: float | None, length: float | None = None) -> SiteScore:
    coord = lambda name, default: str(ds[name].values[pos]) if name in ds.coords else default  # noqa: E731
    index = int(ds[group].values[pos])
    label = coord("site_label", "") or coord("sites_used", f"{group} {index}")
    return SiteScore(position=pos, index=index, label=label, name=coord("site_name", label),
                     kind=coord("site_kind", ""), mean=mean, n=n, best=best, paper_set_f1=set_f1,
                     length_match=length)
