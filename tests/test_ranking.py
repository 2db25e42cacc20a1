"""One ranking of sites (diffprobe.ranking): ds.dp.best_sites, the report and the CLI table agree."""
from __future__ import annotations

import numpy as np
import pytest
from _synthetic import make_results

import diffprobe  # noqa: F401  (registers ds.dp)
from diffprobe.metrics import METRICS, lower_is_better
from diffprobe.ranking import rank_sites, site_scores
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
        m for m in METRICS if m.startswith("paper_lev")}
    flipped = ds.assign(mse=1 - ds["ocr_f1_target"])  # mse ranks lowest first: the same order as F1 highest
    assert [s.index for s in rank_sites(flipped, "mse")] == [s.index for s in rank_sites(ds, "ocr_f1_target")]


def test_a_chosen_window_and_localized(ds):
    at_4 = ds["ocr_f1_target"].sel(t_start=4).mean(("pair", "seed"))
    assert ds.dp.best_sites("ocr_f1_target", k=1, t_start=4).item() == pytest.approx(float(at_4.max()))
    assert ds.dp.localized("ocr_f1_target", threshold=0.7) == ["cross:2"]
