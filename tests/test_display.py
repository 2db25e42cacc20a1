"""Notebook display: Generation, SiteCatalogue, Probe and ``ds.dp`` render through the standard hooks, escaped
and cheap; progress bars follow one switch; library noise is quieted inside diffprobe calls only."""
from __future__ import annotations

import io
import subprocess
import sys
import warnings

import numpy as np
import pytest
from _synthetic import make_counts, make_results
from PIL import Image

import diffprobe  # noqa: F401  (registers ds.dp)
from diffprobe import display
from diffprobe.probe import Generation

XSS = "<script>alert(1)</script>"


def _generation(n=2):
    rng = np.random.default_rng(0)
    return Generation(images=rng.integers(0, 255, (n, 8, 24, 3), dtype=np.uint8))


def test_generation_shows_its_images_as_a_grid_and_a_png():
    gen = _generation(3)
    html = gen._repr_html_()
    assert html.count("<img ") == 3 and "data:image/png;base64," in html and "#2" in html
    png = Image.open(io.BytesIO(gen._repr_png_()))
    assert png.size == (3 * 24 + 2 * 2, 8)


def test_generation_prompts_and_ocr_reads_are_escaped_and_not_computed(monkeypatch):
    import diffprobe.metrics.ocr as ocr

    monkeypatch.setattr(ocr, "read_text", lambda *a, **k: pytest.fail("a repr must not run OCR"), raising=False)
    gen = _generation(2)
    assert "OCR" not in gen._repr_html_()  # nothing read, nothing shown
    gen.prompts = [f'A sign that says "{XSS}".', "plain"]
    gen.ocr_texts = [XSS, "plain"]
    html = gen._repr_html_()
    assert XSS not in html and "&lt;script&gt;" in html and "OCR: " in html


def test_catalogue_and_probe_show_as_tables(probe_factory, meta_factory):
    probe = probe_factory("sd15")
    table = probe.sites._repr_html_()
    assert table.startswith("<table") and table.count("<tr>") == len(probe.sites) + 1
    assert probe.sites[0].name in table and "cross:0" in table
    html = probe._repr_html_()
    assert "Probe" in html and "text sites" in html and "loaded" in html
    assert html.count("cross:") == len(probe.sites.of_kind("cross"))
    meta = meta_factory("sdxl-base-1.0")._repr_html_()
    assert "meta build" in meta and "cross:69" in meta


def test_ds_dp_shows_the_heatmap_table():
    ds = make_results()
    html = ds.dp._repr_html_()
    assert "<table" in html and "ocr_f1_target" in html
    assert html.count("<tr>") == ds.sizes["site"] + 1 and "★" in html
    assert "cross:2 ★" in html  # the synthetic sweep's localized site, as the ranking says
    assert "background:rgb(" in html and "<script" not in html
    shown = ds.dp.show("ssim")
    assert "ssim" in shown._repr_html_() and "heatmap" in repr(shown)
    assert "n_sites" in make_counts().dp._repr_html_()


def test_progress_follows_one_switch(monkeypatch, capsys):
    monkeypatch.delenv("DIFFPROBE_PROGRESS", raising=False)
    assert display.progress_enabled() and not display.progress_enabled(False)
    monkeypatch.setenv("DIFFPROBE_PROGRESS", "0")
    assert not display.progress_enabled() and display.progress_enabled(True)
    with display.progress_bar("stage") as tick:
        tick(1, 2)
    assert "stage" not in capsys.readouterr().err
    with display.progress_bar("stage", progress=True) as tick:
        tick(0, 2)
        tick(2, 2)
    assert "stage" in capsys.readouterr().err


def test_quiet_is_scoped_to_diffprobe_calls():
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    before = (dlog.get_verbosity(), tlog.get_verbosity(), dlog.is_progress_bar_enabled())
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with display.quiet():
            assert dlog.get_verbosity() == dlog.ERROR and not tlog.is_progress_bar_enabled()
            warnings.warn("`CLIPImageProcessor` requires torchvision (not installed)")
        warnings.warn("a warning the user should see")
    assert [str(w.message) for w in seen] == ["a warning the user should see"]
    assert (dlog.get_verbosity(), tlog.get_verbosity(), dlog.is_progress_bar_enabled()) == before


def test_importing_diffprobe_changes_no_library_setting():
    code = ("import warnings, transformers.utils.logging as t, diffusers.utils.logging as d; "
            "v = (t.get_verbosity(), d.get_verbosity(), d.is_progress_bar_enabled()); n = len(warnings.filters); "
            "import diffprobe, diffprobe.display, diffprobe.localization; "
            "print(v == (t.get_verbosity(), d.get_verbosity(), d.is_progress_bar_enabled()), n == len(warnings.filters))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["True", "True"]


def test_load_is_quiet_and_keeps_its_signature(tiny_dirs, capsys):
    import inspect

    import diffusers.utils.logging as dlog

    import diffprobe.loading

    assert inspect.signature(diffprobe.load) == inspect.signature(diffprobe.loading.load)
    assert diffprobe.load.__doc__ == diffprobe.loading.load.__doc__
    before = dlog.get_verbosity()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        diffprobe.load(tiny_dirs("sd15"))
    assert not [w for w in seen if "torchvision" in str(w.message)]
    assert "Loading pipeline components" not in capsys.readouterr().err
    assert dlog.get_verbosity() == before
