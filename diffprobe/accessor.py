"""``ds.dp``: the common reductions and plots of an experiment dataset (registered by ``import diffprobe``).

Ranking, metric selection and confidence intervals come from :mod:`diffprobe.ranking`, the one definition
the CLI and the HTML report use too.
"""
from __future__ import annotations

import numpy as np
import xarray as xr

from . import ranking
from .metrics import lower_is_better

__all__ = ["DiffprobeAccessor"]


@xr.register_dataset_accessor("dp")
class DiffprobeAccessor:
    """Reductions over an experiment dataset: ``ds.dp.best_sites("ocr_f1_target")`` and friends."""

    def __init__(self, ds: xr.Dataset):
        self._ds = ds

    @property
    def group_dim(self) -> str:
        return ranking.group_dim(self._ds) or "site"

    def metric(self, name: str) -> xr.DataArray:
        return ranking.select_metric(self._ds, name)

    def mean(self, name: str, over=ranking.POOLED) -> xr.DataArray:
        """Mean of a metric over the given dims (NaN cells, i.e. unfinished, are skipped)."""
        da = self.metric(name)
        return da.mean([d for d in over if d in da.dims], skipna=True)

    def mean_ci(self, name: str, over=ranking.POOLED, ci: float = 0.95) -> xr.Dataset:
        """Mean, half-width of a Student-t confidence interval, and n, per remaining cell."""
        return ranking.mean_ci(self.metric(name), over, ci)

    def best_sites(self, name: str = "ocr_f1_target", k: int = 5, t_start: int | None = None) -> xr.DataArray:
        """The k best sites by :func:`diffprobe.ranking.rank_sites` (each site's mean over pairs and seeds in its
        best step window, or at ``t_start``), best first, as a DataArray along the site dim."""
        ranked = ranking.rank_sites(self._ds, name, k, t_start)
        group = self.group_dim
        out = self._ds[group].isel({group: [s.position for s in ranked]})
        scores = xr.DataArray([s.mean for s in ranked], dims=[group], coords=out.coords, name=name)
        for dim in {d for s in ranked for d in s.best}:
            scores.coords[f"best_{dim}"] = (group, [s.best.get(dim) for s in ranked])
        if any(s.paper_set_f1 is not None for s in ranked):  # the paper's own headline figure, same cell
            scores.coords["paper_set_f1"] = (group, [np.nan if s.paper_set_f1 is None else s.paper_set_f1
                                                     for s in ranked])
        if any(s.length_match is not None for s in ranked):  # the length view: readings of the right length
            scores.coords["length_match"] = (group, [np.nan if s.length_match is None else s.length_match
                                                     for s in ranked])
        return scores

    def localized(self, name: str = "ocr_f1_target", threshold: float = 0.5, t_start: int | None = None) -> list[str]:
        """Labels of sites whose score passes ``threshold`` (at most it, for lower-is-better metrics)."""
        lower = lower_is_better(name)
        return [s.label for s in ranking.site_scores(self._ds, name, t_start)
                if not np.isnan(s.mean) and (s.mean <= threshold if lower else s.mean >= threshold)]

    def set_f1(self, against: str = "target") -> xr.DataArray:
        """Set-level F1 of diffprobe's character metrics: 2 mean(P) mean(R) / (mean(P) + mean(R)) over pairs
        and seeds, per remaining cell."""
        p = self.mean(f"ocr_precision_{against}")
        r = self.mean(f"ocr_recall_{against}")
        return (2 * p * r / (p + r)).fillna(0.0)

    def paper_set_f1(self, against: str = "target") -> xr.DataArray:
        """The paper's set F1, exactly as its evaluation code: 2 mean(P) mean(R) / (mean(P) + mean(R) + 1e-6) of
        the ``paper_precision_*`` / ``paper_recall_*`` metrics over pairs and seeds, per remaining cell."""
        p = self.mean(f"paper_precision_{against}")
        r = self.mean(f"paper_recall_{against}")
        return 2 * p * r / (p + r + 1e-6)

    def progress(self) -> tuple[int, int]:
        done = self._ds["done"]
        return int(done.sum()), int(done.size)

    # notebooks: evaluating ``ds.dp`` in a cell shows the sweep's heatmap as a static table
    def _repr_html_(self) -> str:
        from .display import dataset_html

        return dataset_html(self._ds)

    def show(self, metric: str | None = None):
        """The heatmap of ``metric`` (default: OCR F1 to the target when present) as a displayable object."""
        from .display import dataset_html

        return _Html(dataset_html(self._ds, metric))

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


class _Html:
    """Markup a notebook renders (``IPython.display.HTML`` without importing IPython)."""

    def __init__(self, html: str):
        self.html = html

    def _repr_html_(self) -> str:
        return self.html

    def __repr__(self) -> str:
        return "<diffprobe heatmap table: display it in a notebook>"
