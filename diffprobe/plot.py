"""Plotly figures of a sweep's results: where in the network, and when in the denoising loop, a concept lives.

A sweep scores every cell of a grid (``pair x site x t_start x seed``, sometimes ``x head``) with metrics such as
``ocr_f1_target``: how much of the *target* prompt's text appears in the image after the intervention at that site
from that step on. Localization reads that grid three ways, one function each:

- :func:`heatmap` averages the metric over the dims you are not looking at and shows it by site x t_start (which
  layers carry the text, and until which step patching them still works) or by site x pair (is it the same layers
  for every prompt).
- :func:`site_bars` shows one bar per site, its score (:mod:`diffprobe.ranking`: the mean over pairs and seeds
  in its best step window) with a confidence interval, so a single lucky prompt does not pass for a localized site.
- :func:`tradeoff` reads a layer-count sweep (inject into 1, 2, 3, ... layers): text alignment against image
  alignment, one point per layer count, the price in image fidelity of making the text appear.

Each function is pure: it takes a Dataset and returns a ``plotly.graph_objects.Figure`` that a notebook shows and
:mod:`diffprobe.report` embeds. Unfinished cells are NaN and are left out of every mean; hover reports ``n``, the
number of finished cells behind each value. An unknown metric raises :class:`~diffprobe.errors.MetricError` listing
the metrics the dataset has.
"""
from __future__ import annotations

from collections.abc import Sequence
from html import escape

import numpy as np
import plotly.graph_objects as go
import xarray as xr

from diffprobe.errors import MetricError
from diffprobe.ranking import metric_names, select_metric, site_scores, t_interval

__all__ = ["heatmap", "site_bars", "tradeoff", "metric_names", "select_metric", "site_labels"]

IMAGE_DIMS = ("y", "x", "rgb")


def site_labels(ds: xr.Dataset) -> list[str]:
    """One readable label per site, ``"<site_name> [<index>]"`` (the index alone if there are no names)."""
    index = [int(i) for i in ds["site"].values]
    if "site_name" not in ds.coords:
        return [f"site {i}" for i in index]
    return [f"{escape(str(name))} [{i}]" for name, i in zip(ds["site_name"].values, index)]


def _describe(ds: xr.Dataset, dim: str, pos: int) -> str:
    """A hover line for position ``pos`` along ``dim``: the site's name, kind and index; the pair's texts.

    Plotly reads a few HTML tags in hover text, so every string from the dataset is escaped here.
    """
    value = ds[dim].values[pos]
    if dim == "site":
        kind = f", {escape(str(ds['site_kind'].values[pos]))}" if "site_kind" in ds.coords else ""
        name = escape(str(ds["site_name"].values[pos])) if "site_name" in ds.coords else "site"
        return f"{name}<br>index {int(value)}{kind}"
    if dim == "pair" and "source_text" in ds.coords and "target_text" in ds.coords:
        source, target = (escape(str(ds[c].values[pos])) for c in ("source_text", "target_text"))
        return f"pair {int(value)}: '{source}' → '{target}'"
    return f"{escape(dim)} {escape(str(value))}"


def _reduce_dims(da: xr.DataArray, keep: Sequence[str], reduce: Sequence[str] | None) -> list[str]:
    for dim in keep:
        if dim not in da.dims:
            raise MetricError(f"{da.name!r} has no dim {dim!r}; its dims are {da.dims}.")
    if reduce is None:
        return [d for d in da.dims if d not in keep]
    left = [d for d in da.dims if d not in keep and d not in reduce]
    wrong = [d for d in reduce if d not in da.dims or d in keep]
    if wrong or left:
        raise MetricError(
            f"reduce={tuple(reduce)} does not fit {da.name!r} with dims {da.dims} shown as {tuple(keep)}: "
            f"average over exactly {tuple(d for d in da.dims if d not in keep)}, or select the others first "
            f"(e.g. ds.isel(seed=0))."
        )
    return list(reduce)


def heatmap(
    ds: xr.Dataset,
    metric: str = "ocr_f1_target",
    x: str = "t_start",
    y: str = "site",
    reduce: Sequence[str] | None = None,
) -> go.Figure:
    """``metric`` averaged over ``reduce`` and shown by ``y`` x ``x`` (site x t_start by default; or x="pair").

    ``reduce=None`` averages over every dim that is neither ``x`` nor ``y`` (pair and seed for the default view);
    an explicit ``reduce`` must name exactly those dims. NaN (unfinished) cells are skipped; hover shows the site's
    name, index and kind, the value and ``n``, the number of finished cells averaged.
    """
    da = select_metric(ds, metric)
    dims = _reduce_dims(da, (y, x), reduce)
    mean = da.mean(dims, skipna=True).transpose(y, x)
    n = da.notnull().sum(dims).transpose(y, x)
    hover = np.array(
        [[[_describe(ds, y, i), _describe(ds, x, j)] for j in range(da.sizes[x])] for i in range(da.sizes[y])],
        dtype=object,
    )
    custom = np.dstack([hover, n.values.astype(object)])
    ylabels = site_labels(ds) if y == "site" else [str(v) for v in ds[y].values]
    xlabels = site_labels(ds) if x == "site" else [str(v) for v in ds[x].values]
    fig = go.Figure(
        go.Heatmap(
            z=mean.values,
            x=xlabels,
            y=ylabels,
            customdata=custom,
            colorscale="Viridis",
            colorbar={"title": {"text": metric}},
            hovertemplate=f"%{{customdata[0]}}<br>%{{customdata[1]}}<br>{metric} = %{{z:.3f}}"
            "<br>n = %{customdata[2]}<extra></extra>",
        )
    )
    fig.update_layout(
        title=f"{metric}: mean over {', '.join(dims) or 'nothing'}",
        xaxis={"title": x, "type": "category"},
        yaxis={"title": y, "type": "category", "autorange": "reversed", "automargin": True},
        height=max(320, 60 + 26 * len(ylabels)),
        margin={"t": 50, "r": 20, "b": 50},
        template="plotly_white",
    )
    return fig


def site_bars(ds: xr.Dataset, metric: str = "ocr_f1_target", ci: float = 0.95) -> go.Figure:
    """One bar per site: its score (:mod:`diffprobe.ranking`: the mean over pairs and seeds in the site's best
    step window), with a Student-t confidence interval over those cells.

    The interval is ``mean ± t_{(1+ci)/2, n-1} · sd / sqrt(n)`` (scipy's t quantile), taking each finished
    (pair, seed) cell as one observation. Sites with fewer than two finished cells get no error bar.
    """
    if not 0 < ci < 1:
        raise MetricError(f"ci must be between 0 and 1 (e.g. 0.95), not {ci!r}.")
    da = select_metric(ds, metric)
    _reduce_dims(da, ("site",), None)
    scores = site_scores(ds, metric)
    at_best = [da.isel(site=s.position).sel(s.best) for s in scores]
    mean = np.array([s.mean for s in scores])
    n = np.array([s.n for s in scores])
    sd = np.array([float(v.std(skipna=True, ddof=1)) if s.n > 1 else np.nan for v, s in zip(at_best, scores)])
    half = t_interval(n, sd, ci)
    dims = [d for d in da.dims if d not in ("site", "pair", "seed")]
    hover = [_describe(ds, "site", i) for i in range(da.sizes["site"])]
    fig = go.Figure(
        go.Bar(
            x=mean,
            y=site_labels(ds),
            orientation="h",
            error_x={"type": "data", "array": half, "visible": True},
            customdata=np.stack([np.array(hover, dtype=object), half, n], axis=-1),
            hovertemplate=f"%{{customdata[0]}}<br>{metric} = %{{x:.3f}} ± %{{customdata[1]:.3f}}"
            f" ({ci:.0%} t-interval)<br>n = %{{customdata[2]}}<extra></extra>",
            marker_color="#3b6ea8",
        )
    )
    fig.update_layout(
        title=f"{metric} by site: mean over pair, seed" + (f" at each site's best {', '.join(dims)}" if dims else "")
        + f", {ci:.0%} t-interval",
        xaxis={"title": metric},
        yaxis={"title": "site", "autorange": "reversed", "automargin": True, "type": "category"},
        height=max(320, 60 + 26 * da.sizes["site"]),
        margin={"t": 50, "r": 20, "b": 50},
        template="plotly_white",
    )
    return fig


def tradeoff(ds_count: xr.Dataset, text_metric: str = "ocr_f1_target", image_metric: str = "ssim") -> go.Figure:
    """The layer-count trade-off: text alignment against image alignment, one point per number of injected sites.

    ``ds_count`` is a layer-count sweep with dims ``n_sites``, ``pair``, ``seed`` and coordinate ``sites_used``
    (which sites each count injects). Each point is the mean over pairs and seeds; hover shows the sites and ``n``.
    """
    text, image = select_metric(ds_count, text_metric), select_metric(ds_count, image_metric)
    if "n_sites" not in text.dims:
        raise MetricError(f"tradeoff needs a layer-count dataset with dim 'n_sites'; {text_metric!r} has {text.dims}.")
    dims = [d for d in text.dims if d != "n_sites"]
    both = text.notnull() & image.notnull()
    counts = [str(v) for v in ds_count["n_sites"].values]
    used = ds_count["sites_used"].values if "sites_used" in ds_count.coords else counts
    fig = go.Figure(
        go.Scatter(
            x=image.where(both).mean(dims, skipna=True).values,
            y=text.where(both).mean(dims, skipna=True).values,
            mode="lines+markers+text",
            text=counts,
            textposition="top center",
            customdata=np.stack([np.array(used, dtype=object), both.sum(dims).values.astype(object)], axis=-1),
            hovertemplate=f"%{{text}} sites: %{{customdata[0]}}<br>{text_metric} = %{{y:.3f}}"
            f"<br>{image_metric} = %{{x:.3f}}<br>n = %{{customdata[1]}}<extra></extra>",
            marker={"size": 9, "color": "#c0392b"},
        )
    )
    fig.update_layout(
        title=f"Layer count: {text_metric} vs {image_metric} (label = number of sites injected)",
        xaxis={"title": f"{image_metric} (image alignment to source)"},
        yaxis={"title": f"{text_metric} (text alignment to target)"},
        height=420,
        margin={"t": 50, "r": 20, "b": 50},
        template="plotly_white",
    )
    return fig
