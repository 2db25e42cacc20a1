"""The HTML report, checked as a file and opened in a real browser (Debian's headless Chromium via Playwright).

The browser test is the one that matters: it proves the report renders offline, makes no request beyond its own
file and data: URIs, logs no console error, draws the heatmap, and shows a hostile prompt as text.
"""
from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from _browser import needs_chromium, open_page
from _synthetic import make_counts, make_results

from diffprobe.errors import DiffprobeError
from diffprobe.report import top_sites, write_report
from diffprobe.report.html import script_json

XSS = "<script>alert(1)</script>"
IMG_XSS = '<img src=x onerror="window.__xss = true; alert(2)">'


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    ds = make_results()
    ds.attrs["title"] = f"sweep {XSS}"
    ds.attrs["spec"] = json.dumps({"pairs_file": f"pairs/{XSS}.jsonl", "note": "</script><b>bold</b>"})
    ds["source_ocr_text"] = ds["source_ocr_text"].astype(object)
    ds["source_ocr_text"][0, 0] = IMG_XSS
    return write_report(ds, tmp_path_factory.mktemp("report") / "report.html", counts=make_counts(), top_k=3)


class _Refs(HTMLParser):
    """Every src/href attribute, and every tag, outside script bodies (which the parser keeps as data)."""

    def __init__(self):
        super().__init__()
        self.refs: list[str] = []
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        self.refs += [v for k, v in attrs.items() if k in ("src", "href", "action", "poster", "srcset") and v]


def _parse(report: Path) -> _Refs:
    parser = _Refs()
    parser.feed(report.read_text("utf-8"))
    return parser


def test_no_external_resources(report):
    refs = _parse(report).refs
    assert refs, "expected the embedded images"
    assert all(ref.startswith("data:") for ref in refs), [r[:60] for r in refs if not r.startswith("data:")]
    text = report.read_text("utf-8")
    assert "default-src 'none'" in text.split("</head>")[0]  # the CSP: the browser may fetch nothing
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", text.split("<script>")[0], re.I)


def test_hostile_text_is_escaped(report):
    parser = _parse(report)
    scripts = [attrs for tag, attrs in parser.tags if tag == "script"]
    assert len(scripts) == 3  # figure data (application/json), plotly.js, the boot script: nothing injected
    assert "<b>bold</b>" not in report.read_text("utf-8").split("<script")[0]
    html = report.read_text("utf-8")
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert not [tag for tag, attrs in parser.tags if tag == "img" and not attrs["src"].startswith("data:")]
    assert html.count(XSS) == 0


def test_script_json_cannot_close_a_script():
    text = script_json({"a": "</script><!-- & \u2028"})
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == {"a": "</script><!-- & \u2028"}


def test_top_sites_and_bad_metric():
    ds = make_results()
    best = top_sites(ds, "ocr_f1_target", k=2)
    assert [s.index for s in best] == [2, 3]
    assert best[0].name.startswith("up_blocks.0") and best[0].kind == "cross" and best[0].best == {"t_start": 0}
    with pytest.raises(DiffprobeError, match="Did you mean 'ocr_f1_target'"):
        write_report(ds, "unused.html", metric="ocr_f1_targe")


@pytest.mark.browser
@needs_chromium
def test_report_in_headless_chromium(report):
    with open_page(report) as (page, seen):
        n_traces = page.evaluate("() => [...document.querySelectorAll('.js-plotly-plot')].map(d => d.data.length)")
        heat_cells = page.locator("#fig-0 .heatmaplayer image, #fig-0 .hm image").count()
        box = page.locator("#fig-0 .nsewdrag").first.bounding_box()  # the plot area: hover its centre cell
        page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
        hover = page.locator("#fig-0 .hoverlayer .hovertext").first
        hover.wait_for(timeout=5_000)
        hover_text = hover.text_content()
        prompt_visible = page.get_by_text(XSS, exact=False).first.is_visible()
        page_text = page.inner_text("body")
        xss_ran = page.evaluate("() => window.__xss === true")
    errors, requests, dialogs = seen["errors"], seen["requests"], seen["dialogs"]
    assert errors == []
    assert all(u.startswith(("file:", "data:")) for u in requests), requests
    assert dialogs == [] and not xss_ran
    assert n_traces == [1, 1, 1, 1]  # site x t_start, site x pair, site bars, trade-off
    assert heat_cells >= 1
    assert "up_blocks.0.attentions.2.transformer_blocks.1.attn2" in hover_text  # the middle site of five
    assert "index 2" in hover_text and "ocr_f1_target = " in hover_text and "n = 6" in hover_text
    assert prompt_visible and XSS in page_text and IMG_XSS in page_text
    assert "up_blocks.0.attentions.2.transformer_blocks.1.attn2" in page_text
