"""One ranking of sites (diffprobe.ranking): ds.dp.best_sites, the report and the CLI table agree."""
from __future__ import annotations

import numpy as np
import pytest
from _synthetic import make_results

import diffprobe  # noqa: F401  (registers ds.dp)
from diffprobe.metrics import METRICS, lower_is_better
from diffprobe.ranking import metric_names, rank_sites, site_scores
from diffprobe.report import top_sites


@pytest.fixture(scope="module")
def ds():
    return make_results(n_sites=6)


@pytest.mark.parametrize("metric", ["ocr_f1_target", "ssim", "ocr_f1_source", "exact_target"])
def test_accessor_report_and_ranking_agree(ds, metric):
    best = ds.dp.best_sites(metric, k=4)
    report = top_sites(ds, metric, k=4)
    assert [int(i) for i in best.site.values] == [s.index for s in report] == [s.index for s in rank_sites(ds, metric, 4)]
    np.testing.assert_allclose(best.values, [s.mean for s in report])


def test_a_score_is_the_mean_over_pairs_and_seeds_in_the_best_window(ds):
    by_window = ds["ocr_f1_target"].mean(("pair", "seed"))
    for s in site_scores(ds, "ocr_f1_target"):
        column = by_window.isel(site=s.position)
        assert s.mean == pytest.approx(float(column.max()))
        assert s.best == {"t_start": int(column.t_start[int(np.argmax(column.values))])}


def test_lower_is_better_comes_from_the_registry(ds):
    assert {m for m in METRICS if lower_is_better(m)} == {"lev_target", "lev_source", "mse"} | {
        m for m in METRICS if m.startswith(("paper_lev", "length_error"))}
    flipped = ds.assign(mse=1 - ds["ocr_f1_target"])  # mse ranks lowest first: the same order as F1 highest
    assert [s.index for s in rank_sites(flipped, "mse")] == [s.index for s in rank_sites(ds, "ocr_f1_target")]


def test_a_chosen_window_and_localized(ds):
    at_4 = ds["ocr_f1_target"].sel(t_start=4).mean(("pair", "seed"))
    assert ds.dp.best_sites("ocr_f1_target", k=1, t_start=4).item() == pytest.approx(float(at_4.max()))
    assert ds.dp.localized("ocr_f1_target", threshold=0.7) == ["cross:2"]


def test_the_papers_set_f1_stands_next_to_the_mean_f1(ds):
    """With paper_* metrics in the dataset, best_sites, the report and the CLI show the paper's set F1 of the
    same cell (2 mean(P) mean(R) / (mean(P) + mean(R) + 1e-6))."""
    rng = np.random.default_rng(1)
    p = ds["ocr_f1_target"].clip(0, 1) * 0 + rng.uniform(0, 1, ds["ocr_f1_target"].shape)
    r = ds["ocr_f1_target"].clip(0, 1) * 0 + rng.uniform(0, 1, ds["ocr_f1_target"].shape)
    with_paper = ds.assign(paper_precision_target=p.where(ds["done"]), paper_recall_target=r.where(ds["done"]))
    best = with_paper.dp.best_sites("ocr_f1_target", k=2)
    top = rank_sites(with_paper, "ocr_f1_target", 2)
    for i, s in enumerate(top):
        cell = dict(site=s.index, **s.best)
        pv, rv = (np.asarray(with_paper[v].sel(cell).values).ravel() for v in ("paper_precision_target",
                                                                              "paper_recall_target"))
        keep = ~np.isnan(pv)
        mp, mr = pv[keep].mean(), rv[keep].mean()
        assert s.paper_set_f1 == pytest.approx(2 * mp * mr / (mp + mr + 1e-6))
        assert float(best.paper_set_f1.values[i]) == pytest.approx(s.paper_set_f1)
    from diffprobe.report.html import _sites_section

    assert "paper set F1" in _sites_section(top, "ocr_f1_target")
    assert "paper_set_f1" not in ds.dp.best_sites("ocr_f1_target", k=2).coords  # absent without paper_* metrics


def test_the_length_view_stands_next_to_the_mean_f1(ds):
    """With length_match_* in the dataset, best_sites and the report show the rate of readings of the right
    length in the same cell as the score (the view character F1 hides: "catn" for "cat")."""
    rng = np.random.default_rng(2)
    match = (ds["ocr_f1_target"] * 0 + (rng.uniform(0, 1, ds["ocr_f1_target"].shape) > 0.5)).where(ds["done"])
    with_length = ds.assign(length_match_target=match, length_match_source=1 - match)
    best = with_length.dp.best_sites("ocr_f1_target", k=3)
    top = rank_sites(with_length, "ocr_f1_target", 3)
    for i, s in enumerate(top):
        v = np.asarray(match.sel(site=s.index, **s.best).values, dtype=float).ravel()
        assert s.length_match == pytest.approx(np.nanmean(v))
        assert float(best.length_match.values[i]) == pytest.approx(s.length_match)
    # a _source metric is paired with the source text's length view
    s = rank_sites(with_length, "ocr_f1_source", 1)[0]
    v = np.asarray((1 - match).sel(site=s.index, **s.best).values, dtype=float).ravel()
    assert s.length_match == pytest.approx(np.nanmean(v))
    from diffprobe.report.html import _sites_section

    assert "right length" in _sites_section(top, "ocr_f1_target")
    assert "length_match" not in ds.dp.best_sites("ocr_f1_target", k=2).coords  # absent without the metric
    assert "right length" not in _sites_section(rank_sites(ds, "ocr_f1_target", 2), "ocr_f1_target")


def test_every_result_carries_moved_target_from_its_images(ds, tmp_path):
    """make_results draws the target's image where F1 > 0.5 and the source's elsewhere: moved is exactly 1 or 0."""
    from diffprobe.results import open_results

    expect = (ds["ocr_f1_target"] > 0.5).astype(float).where(ds["done"])
    np.testing.assert_array_equal(ds["moved_target"].transpose(*expect.dims).values, expect.values)
    assert np.isnan(ds["moved_target"].values[~ds["done"].values]).all()
    np.testing.assert_array_equal(ds["baseline_moved_target"].sel(role="source").values, 0.0)
    np.testing.assert_array_equal(ds["baseline_moved_target"].sel(role="target").values, 1.0)
    assert rank_sites(ds, "moved_target")[0].index == 2 and "moved_target" in metric_names(ds)
    old = ds.drop_vars(["moved_target", "baseline_moved_target"])  # a file written before the metric existed
    old.to_netcdf(tmp_path / "old.nc", engine="h5netcdf")
    reopened = open_results(tmp_path / "old.nc")
    np.testing.assert_array_equal(reopened["moved_target"].values, ds["moved_target"].values)
