"""diffprobe.plot: figures from a synthetic sweep carry the right numbers and hover data, and bad input teaches."""
from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest
from _synthetic import make_counts, make_results
from scipy import stats

from diffprobe import plot
from diffprobe.errors import DiffprobeError, MetricError


@pytest.fixture(scope="module")
def ds():
    return make_results()


def test_metric_names_are_the_float_metrics(ds):
    assert plot.metric_names(ds) == ["exact_target", "moved_target", "ocr_f1_source", "ocr_f1_target", "ssim"]


def test_heatmap_site_by_t_start(ds):
    fig = plot.heatmap(ds, "ocr_f1_target")
    (trace,) = fig.data
    assert isinstance(fig, go.Figure) and isinstance(trace, go.Heatmap)
    z = np.asarray(trace.z, dtype=float)
    assert z.shape == (ds.sizes["site"], ds.sizes["t_start"])
    expected = np.nanmean(ds["ocr_f1_target"].values, axis=(0, 3))
    np.testing.assert_allclose(z, expected)
    assert list(trace.x) == ["0", "2", "4"]
    assert trace.y[2] == "up_blocks.0.attentions.2.transformer_blocks.1.attn2 [2]"


def test_heatmap_hover_has_site_name_index_value_and_n(ds):
    trace = plot.heatmap(ds).data[0]
    for field in ("customdata[0]", "customdata[1]", "%{z", "n = %{customdata[2]}"):
        assert field in trace.hovertemplate
    site_text, t_text, n = trace.customdata[0][2]
    assert site_text == "down_blocks.1.attentions.0.transformer_blocks.0.attn2<br>index 0, cross"
    assert t_text == "t_start 4"
    assert n == 5  # one of the 6 pair x seed cells is unfinished
    assert trace.customdata[1][2][2] == 6


def test_heatmap_site_by_pair_escapes_text(ds):
    trace = plot.heatmap(ds, "ocr_f1_target", x="pair").data[0]
    assert np.asarray(trace.z, dtype=float).shape == (ds.sizes["site"], ds.sizes["pair"])
    assert "mean over t_start, seed" in plot.heatmap(ds, x="pair").layout.title.text
    pair_text = trace.customdata[0][1][1]
    assert "&lt;script&gt;" in pair_text and "<script>" not in pair_text


def test_heatmap_explicit_reduce_must_fit(ds):
    fig = plot.heatmap(ds, x="pair", reduce=("t_start", "seed"))
    assert np.asarray(fig.data[0].z, dtype=float).shape == (5, 3)
    with pytest.raises(MetricError, match="average over exactly"):
        plot.heatmap(ds, reduce=("pair",))
    with pytest.raises(MetricError, match="no dim 'head'"):
        plot.heatmap(ds, x="head")


def test_heatmap_averages_extra_dims_like_head(ds):
    with_head = ds[["ocr_f1_target"]].expand_dims(head=4).transpose("pair", "site", "t_start", "seed", "head")
    fig = plot.heatmap(with_head)
    assert "head" in fig.layout.title.text
    assert fig.data[0].customdata[1][0][2] == 24


@pytest.mark.parametrize("name", ["ocr_f1_targt", "source_image", "done"])
def test_unknown_metric_names_the_metrics(ds, name):
    with pytest.raises(DiffprobeError) as err:
        plot.heatmap(ds, metric=name)
    message = str(err.value)
    assert f"No metric {name!r}" in message
    assert "exact_target, moved_target, ocr_f1_source, ocr_f1_target, ssim" in message
    if name == "ocr_f1_targt":
        assert "Did you mean 'ocr_f1_target'" in message


def test_site_bars_t_interval(ds):
    """A bar is the site's score (diffprobe.ranking: mean over pairs and seeds at its best t_start)."""
    (trace,) = plot.site_bars(ds, "ocr_f1_target", ci=0.9).data
    by_t = ds["ocr_f1_target"].isel(site=2).mean(("pair", "seed")).values
    values = ds["ocr_f1_target"].isel(site=2, t_start=int(np.nanargmax(by_t))).values.ravel()
    values = values[~np.isnan(values)]
    half = stats.t.ppf(0.95, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    assert trace.orientation == "h"
    assert trace.x[2] == pytest.approx(values.mean()) == pytest.approx(ds.dp.best_sites(k=1).item())
    assert trace.error_x.array[2] == pytest.approx(half)
    assert trace.customdata[2][2] == len(values) == 6
    assert "90% t-interval" in trace.hovertemplate and "n = %{customdata[2]}" in trace.hovertemplate
    assert "index 2, cross" in trace.customdata[2][0]
    assert "best t_start" in plot.site_bars(ds).layout.title.text


def test_site_bars_rejects_bad_ci(ds):
    with pytest.raises(MetricError, match="ci must be between 0 and 1"):
        plot.site_bars(ds, ci=95)


def test_tradeoff_curve():
    counts = make_counts(counts=(1, 2, 3, 5))
    (trace,) = plot.tradeoff(counts, "ocr_f1_target", "ssim").data
    assert list(trace.text) == ["1", "2", "3", "5"]
    over = ("pair", "t_start", "seed")
    np.testing.assert_allclose(trace.y, counts["ocr_f1_target"].mean(over).values)
    np.testing.assert_allclose(trace.x, counts["ssim"].mean(over).values)
    assert trace.customdata[1][0] == str(counts["sites_used"].values[1])
    assert trace.customdata[1][1] == 6
    assert "n = %{customdata[1]}" in trace.hovertemplate


def test_tradeoff_needs_a_layer_count_dataset(ds):
    with pytest.raises(MetricError, match="n_sites"):
        plot.tradeoff(ds)
    with pytest.raises(MetricError, match="Did you mean 'ssim'"):
        plot.tradeoff(make_counts(), image_metric="ssimm")


def test_figures_serialize(ds):
    for fig in (plot.heatmap(ds), plot.heatmap(ds, x="pair"), plot.site_bars(ds), plot.tradeoff(make_counts())):
        assert fig.to_json()
