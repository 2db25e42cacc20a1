"""``ds.dp``: the common reductions and plots of an experiment dataset."""
from __future__ import annotations

import numpy as np
import xarray as xr
from scipy import stats

from .errors import MetricError, did_you_mean

__all__ = ["DiffprobeAccessor"]

_LOWER_IS_BETTER = ("mse", "lev_", "cer", "wer")


@xr.register_dataset_accessor("dp")
class DiffprobeAccessor:
    """Reductions over an experiment dataset: ``ds.dp.best_sites("ocr_f1_target")`` and friends."""

    def __init__(self, ds: xr.Dataset):
        self._ds = ds

    @property
    def group_dim(self) -> str:
        return "site" if "site" in self._ds.dims else "n_sites"

    def metric(self, name: str) -> xr.DataArray:
        ds = self._ds
        if name not in ds.data_vars or self.group_dim not in ds[name].dims:
            names = [v for v in ds.data_vars if self.group_dim in ds[v].dims and ds[v].dtype.kind == "f"]
            raise MetricError(f"No metric {name!r} in this dataset.{did_you_mean(name, names)} Metrics: {', '.join(names)}.")
        return ds[name]

    def mean(self, name: str, over=("pair", "seed")) -> xr.DataArray:
        """Mean of a metric over the given dims (NaN cells, i.e. unfinished, are skipped)."""
        da = self.metric(name)
        return da.mean([d for d in over if d in da.dims], skipna=True)

    def mean_ci(self, name: str, over=("pair", "seed"), ci: float = 0.95) -> xr.Dataset:
        """Mean, half-width of a Student-t confidence interval, and n, per remaining cell."""
        da = self.metric(name)
        dims = [d for d in over if d in da.dims]
        n = da.notnull().sum(dims)
        mean = da.mean(dims, skipna=True)
        sd = da.std(dims, skipna=True, ddof=1)
        t = xr.apply_ufunc(lambda k: stats.t.ppf(0.5 + ci / 2, np.maximum(k - 1, 1)), n)
        half = (t * sd / np.sqrt(n.where(n > 0))).where(n > 1)
        return xr.Dataset({"mean": mean, "ci": half, "n": n})

    def best_sites(self, name: str = "ocr_f1_target", k: int = 5, t_start: int | None = None) -> xr.DataArray:
        """The k sites with the best mean metric (per t_start when several; pick one with ``t_start``)."""
        m = self.mean(name)
        if "t_start" in m.dims:
            m = m.sel(t_start=t_start) if t_start is not None else m.max("t_start")
        lower = name.startswith(_LOWER_IS_BETTER)
        order = np.argsort(m.values if lower else -m.values, kind="stable")
        order = [i for i in order if not np.isnan(m.values[i])][:k]
        return m.isel({self.group_dim: order})

    def localized(self, name: str = "ocr_f1_target", threshold: float = 0.5, t_start: int | None = None) -> list[str]:
        """Labels of sites whose mean metric passes ``threshold`` (the localized set)."""
        m = self.mean(name)
        if "t_start" in m.dims:
            m = m.sel(t_start=t_start) if t_start is not None else m.max("t_start")
        keep = m <= threshold if name.startswith(_LOWER_IS_BETTER) else m >= threshold
        label = "site_label" if "site_label" in m.coords else "sites_used"
        return [str(v) for v in m[label].values[keep.values]]

    def set_f1(self, against: str = "target") -> xr.DataArray:
        """The paper's set-level F1: 2 mean(P) mean(R) / (mean(P) + mean(R)) over pairs and seeds."""
        p = self.mean(f"ocr_precision_{against}")
        r = self.mean(f"ocr_recall_{against}")
        return (2 * p * r / (p + r)).fillna(0.0)

    def progress(self) -> tuple[int, int]:
        done = self._ds["done"]
        return int(done.sum()), int(done.size)

    # plots (plotly); the same functions as diffprobe.plot
    def heatmap(self, metric: str = "ocr_f1_target", **kwargs):
        from . import plot

        return plot.heatmap(self._ds, metric=metric, **kwargs)

    def site_bars(self, metric: str = "ocr_f1_target", **kwargs):
        from . import plot

        return plot.site_bars(self._ds, metric=metric, **kwargs)

    def tradeoff(self, **kwargs):
        from . import plot

        return plot.tradeoff(self._ds, **kwargs)

    def report(self, path, **kwargs):
        from .report import write_report

        return write_report(self._ds, path, **kwargs)
