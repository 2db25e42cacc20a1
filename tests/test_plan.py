"""Planning (diffprobe.plan) on the weightless full-size configs: rows, operations and refusals, in milliseconds."""
from __future__ import annotations

import pytest
import torch

from conftest import META_NAMES
from diffprobe import Ablate, Capture, Inject, InterventionError, Patch, Scale, Variant
from diffprobe.engine import _offsets, _scale_rows
from diffprobe.plan import FromRow, FromTensor, OutOp, Zeros, make_plan


@pytest.fixture(scope="module")
def sdxl(meta_factory):
    return meta_factory("sdxl-base-1.0").sites


def test_patch_adds_one_hidden_clean_row_per_source_and_seed(sdxl):
    plan = make_plan([Variant("a", (Patch(source="b", sites="cross:55-57", steps="4:"),)),
                      Variant("c", (Patch(source="b", sites="cross:55"),)), Variant("b")], sdxl, 50)
    assert [r.prompt for r in plan.rows] == ["a", "c", "b"]  # "b" is already a clean variant: reused
    site_plans = {sp.site.label: sp for sp in plan.sites}
    assert set(site_plans) == {"cross:55", "cross:56", "cross:57"}
    op = site_plans["cross:56"].kv[0]
    assert op.source == FromRow(2) and op.steps == frozenset(range(4, 50)) and op.halves == ("uncond", "cond")
    assert plan.steps == list(range(50))


def test_typed_kv_sources(sdxl):
    plan = make_plan([Variant("a", (Inject(prompt="x", sites="cross:0"), Ablate(sites="cross:1"),
                                    Ablate(mode="mean", prompts=("p", "q"), sites="cross:2")))], sdxl, 5)
    sources = [sp.kv[0].source for sp in plan.sites]
    assert isinstance(sources[0], FromTensor) and sources[1] == Zeros() and isinstance(sources[2], FromTensor)
    assert set(plan.injections) == {sources[0].key, sources[2].key}


def test_capture_names_are_made_in_one_place(sdxl):
    plan = make_plan([Variant("a", (Capture(what="kv", sites="cross:3"), Capture(sites="cross:4-5", name="o"),
                                    Capture(sites="denoiser")))], sdxl, 3)
    names = sorted(name for sp in plan.sites for op in sp.cap for name in op.outputs)
    assert names == ["denoiser", "kv:cross:3:k", "kv:cross:3:v", "o:cross:4", "o:cross:5"]


@pytest.mark.parametrize("name", META_NAMES)
def test_every_text_site_of_every_full_size_model_plans(meta_factory, name):
    sites = meta_factory(name).sites
    text = [s for s in sites if s.carries_text]
    plan = make_plan([Variant("a", (Patch(source="b", sites=text, heads=[0]), Scale(0.5, sites="all")))], sites, 28)
    assert len(plan.sites) == len(sites)


def test_refusals_name_the_field(sdxl):
    with pytest.raises(InterventionError, match="valid heads are 0-") as err:
        make_plan([Variant("a", (Patch(source="b", sites="cross:0", heads=[99]),))], sdxl, 5)
    assert err.value.field == "heads"
    with pytest.raises(InterventionError, match="outside the run's denoising loop") as err:
        make_plan([Variant("a", (Patch(source="b", sites="cross:0", steps="9:"),))], sdxl, 5)
    assert err.value.field == "steps"


def test_an_unexpected_batch_shape_is_refused_in_every_edit_path():
    """A pipeline that batches differently (e.g. several images per prompt) must not be edited by row index."""
    assert _offsets(6, 3, "x") == {"uncond": 0, "cond": 3}
    with pytest.raises(InterventionError, match="unexpected batch of 5 rows at site.x"):
        _offsets(5, 3, "site.x")
    op = OutOp(0, frozenset({0}), ("cond",), None, 0.0)
    with pytest.raises(InterventionError, match="unexpected batch"):
        _scale_rows(torch.ones(5, 2, 4), [op], 3, 2, "site.x")
