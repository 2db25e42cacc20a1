"""The self-contained HTML report: one file a researcher opens offline, shares, and can trust.

Why one file: a report is mailed, attached to a paper's supplement or opened on a laptop with no network, years
after the run. So everything it needs travels inside it: plotly.js is inlined from the installed ``plotly`` package
(no CDN), images are base64 PNG ``data:`` URIs, and a Content-Security-Policy allows no fetches at all
(``default-src 'none'``), so a stray reference to an external resource fails loudly instead of leaking a request.

Why the care with text: prompts, OCR output, file names and spec values come from users and from a model that was
asked to write arbitrary words. Every such string passes through :func:`html.escape` before it reaches the page;
figure data is JSON placed in a ``<script type="application/json">`` block with ``<``, ``>`` and ``&`` written as
``\\u003c``-style escapes, so no string can close the block. As a second wall, the CSP lets only the report's own
scripts run, named by their SHA-256 hashes: even a string that escaped escaping could not execute.

The page reads top to bottom: what was run (model, metric, grid), the localized sites (top-k by mean metric), the
figures from :mod:`diffprobe.plot`, an image grid (source, target, patched at the best sites, OCR text under each),
and the spec and package versions.
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import string
from html import escape
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
import plotly.offline
import xarray as xr
from PIL import Image

from diffprobe import plot
from diffprobe.errors import DiffprobeError, ResultsError
from diffprobe.metrics import lower_is_better
from diffprobe.ranking import SiteScore, rank_sites
from diffprobe.results import versions

__all__ = ["SiteScore", "script_json", "top_sites", "write_report", "attention_section", "write_attention_page", "write_page"]

_BOOT = """(function () {
  var figures = JSON.parse(document.getElementById("diffprobe-figures").textContent);
  figures.forEach(function (f) { Plotly.newPlot(f.id, f.figure.data, f.figure.layout, f.config); });
})();"""
_CONFIG = {"displaylogo": False, "responsive": True, "showLink": False, "showSendToCloud": False}


def top_sites(ds: xr.Dataset, metric: str = "ocr_f1_target", k: int = 3) -> list[SiteScore]:
    """The ``k`` best sites by :func:`diffprobe.ranking.rank_sites`: the same ranking as ``ds.dp.best_sites``
    and the CLI's table (a site's mean over pairs and seeds in its best step window)."""
    return rank_sites(ds, metric, k)


def write_report(
    ds: xr.Dataset,
    path: str | Path,
    *,
    metric: str = "ocr_f1_target",
    top_k: int = 3,
    title: str | None = None,
    counts: xr.Dataset | None = None,
    max_pairs: int = 8,
    summary: str | list[str] | None = None,
    attention=None,
) -> Path:
    """Write the self-contained report of sweep results ``ds`` to ``path`` (an ``.html`` file) and return it.

    ``metric`` ranks the sites and colours the heatmaps; the ``top_k`` best sites are listed and shown patched in
    the image grid (first seed, at each site's best cell, for the first ``max_pairs`` pairs). ``counts``, a
    layer-count dataset, adds the trade-off curve. ``title`` defaults to ``ds.attrs["title"]``, then the model.
    ``summary`` (a string, one line per paragraph, or a list of lines) is shown, escaped, at the top: the first
    line as the headline (``diffprobe.localize`` writes its finding there). ``attention``, a
    :class:`diffprobe.attention.AttentionResult` with word maps (e.g. at the best sites), adds its overlays.
    """
    path = Path(path)
    if top_k < 1 or max_pairs < 1:
        raise DiffprobeError(f"top_k and max_pairs must be at least 1, not {top_k} and {max_pairs}.")
    top = top_sites(ds, metric, top_k)
    title = title or ds.attrs.get("title") or f"diffprobe report: {ds.attrs.get('model', 'unknown model')}"
    figures = _figures(ds, metric, counts)
    maps_html, map_figures = attention_section(attention) if attention is not None else ("", [])
    figures = figures + map_figures
    body = "\n".join(
        [
            _header(ds, title, metric),
            _summary_section(summary),
            _sites_section(top, metric),
            _figures_section(figures),
            _grid_section(ds, top, metric, max_pairs),
            maps_html,
            _provenance_section(ds),
        ]
    )
    return write_page(path, title, body, figures)


def write_page(path: str | Path, title: str, body: str, figures: list[tuple[str, go.Figure]]) -> Path:
    """Write one self-contained page (inline plotly, CSP, escaped text) atomically; ``body`` is trusted HTML."""
    path = Path(path)
    page = _render(title, body, figures)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(page, encoding="utf-8")
        tmp.replace(path)  # a report is whole or absent, never cut off
    except OSError as exc:
        raise ResultsError(f"cannot write the report to {path} ({exc.strerror or exc}); choose a writable path.",
                           field="out") from None
    return path


def attention_section(result, max_samples: int = 8) -> tuple[str, list[tuple[str, go.Figure]]]:
    """Each sample's image and one overlay per word of an :class:`~diffprobe.attention.AttentionResult`."""
    from diffprobe.attention import overlay_figure, overlay_png

    words = result.words
    if words is None:
        return "", []
    attrs = result.maps.attrs
    note = (f"Text-token → image attention probabilities at {', '.join(map(str, attrs.get('sites', [])))}, "
            f"{attrs.get('reduce', 'mean')} over steps {_steps_text(attrs.get('steps', []))} and heads "
            f"{attrs.get('heads', 'all')}; a word's map is the sum over its tokens, upsampled to the image.")
    rows, figures = [], []
    for i in range(min(max_samples, words.sizes["sample"])):
        image = result.images[i]
        tiles = [_tile(image, "image", None, str(words["prompt"].values[i]))]
        for j, w in enumerate(words["word"].values):
            m = words.isel(sample=i, word=j).values
            if np.isnan(m).all():
                continue  # the word is not in this prompt
            tiles.append(_tile(overlay_png(image, m), f"“{w}”", None, f"tokens {words['tokens'].values[i][j]}"))
            figures.append((f"attn-{i}-{j}", overlay_figure(image, m, f"{w} (sample {i})")))
        rows.append(f"<div class='grid'>{''.join(tiles)}</div>")
    divs = "".join(f'<div class="card"><div class="plot" id="{fid}"></div></div>' for fid, _ in figures)
    return (f"<section id='attention'><h2>Attention maps</h2><p class='note'>{escape(note)}</p>{''.join(rows)}"
            f"{divs}</section>"), figures


def _steps_text(steps) -> str:
    steps = list(steps)
    if steps and steps == list(range(steps[0], steps[-1] + 1)):
        return f"{steps[0]}-{steps[-1]}"
    return ", ".join(map(str, steps))


def _render(title: str, body: str, figures: list[tuple[str, go.Figure]]) -> str:
    plotlyjs = plotly.offline.get_plotlyjs()
    if "</script" in plotlyjs.lower():  # would end the inline block early; never true for plotly's bundle
        raise ResultsError("the installed plotly.js contains '</script' and cannot be inlined safely.")
    data = [{"id": fid, "figure": json.loads(fig.to_json()), "config": _CONFIG} for fid, fig in figures]
    template = string.Template(resources.files("diffprobe.report").joinpath("template.html").read_text("utf-8"))
    return template.substitute(
        csp=_csp(plotlyjs, _BOOT),
        diffprobe_version=escape(versions()['diffprobe']),
        title=escape(title),
        body=body,
        figures=script_json(data),
        plotlyjs=plotlyjs,
        boot=_BOOT,
    )


def script_json(obj: Any) -> str:
    """``obj`` as JSON that is safe inside ``<script>``: ``<``, ``>``, ``&``, U+2028/9 written as ``\\uXXXX``."""
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False, default=_jsonable)
    for char in "<>&\u2028\u2029":
        text = text.replace(char, f"\\u{ord(char):04x}")
    return text


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _csp(*scripts: str) -> str:
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(s.encode("utf-8")).digest()).decode() + "'" for s in scripts
    )
    return (
        f"default-src 'none'; script-src {hashes}; style-src 'unsafe-inline'; img-src data:; font-src data:; "
        "base-uri 'none'; form-action 'none'"
    )


def _figures(ds: xr.Dataset, metric: str, counts: xr.Dataset | None) -> list[tuple[str, go.Figure]]:
    dims = ds[metric].dims
    figs = []
    if "t_start" in dims:
        figs.append(plot.heatmap(ds, metric, x="t_start", y="site"))
    if "pair" in dims:
        figs.append(plot.heatmap(ds, metric, x="pair", y="site"))
    figs.append(plot.site_bars(ds, metric))
    if counts is not None:
        image_metric = "ssim" if "ssim" in counts else plot.metric_names(counts)[-1]
        figs.append(plot.tradeoff(counts, metric, image_metric))
    return [(f"fig-{i}", fig) for i, fig in enumerate(figs)]


def _header(ds: xr.Dataset, title: str, metric: str) -> str:
    facts = {"model": ds.attrs.get("model", "unknown"), "metric": metric}
    facts["grid"] = " × ".join(f"{d} {n}" for d, n in ds[metric].sizes.items())
    if "done" in ds:
        facts["finished cells"] = f"{int(ds['done'].sum())} of {ds['done'].size}"
    if ds.attrs.get("runtime"):
        run = json.loads(ds.attrs["runtime"])
        facts["ran on"] = f"{run.get('device')} ({run.get('gpu', 'none')}), {run.get('dtype')}" + (
            f", offload {run['offload']}" if run.get("offload", "none") != "none" else "")
    if ds.attrs.get("batch_size_used"):
        facts["batch"] = f"{ds.attrs['batch_size_used']} variants per call (unit {ds.attrs.get('batch_unit')})"
    if ds.encoding.get("source"):
        facts["dataset"] = str(ds.encoding["source"])
    items = "".join(f'<div class="fact"><b>{escape(k)}</b>{escape(str(v))}</div>' for k, v in facts.items())
    return f'<header><h1>{escape(title)}</h1><div class="facts">{items}</div></header>'


def _summary_section(summary: str | list[str] | None) -> str:
    lines = summary.splitlines() if isinstance(summary, str) else list(summary or ())
    lines = [str(line) for line in lines if str(line).strip()]
    if not lines:
        return ""
    rest = "".join(f"<li>{escape(line)}</li>" for line in lines[1:])
    return (f"<section id='summary'><h2>Summary</h2><p><b>{escape(lines[0])}</b></p>"
            f"{f'<ul>{rest}</ul>' if rest else ''}</section>")


def _sites_section(top: list[SiteScore], metric: str) -> str:
    better = "lowest" if lower_is_better(metric) else "highest"
    paper = any(s.paper_set_f1 is not None for s in top)  # the paper's own headline figure, when recorded

    length = any(s.length_match is not None for s in top)  # the length view, when recorded

    def set_f1(s: SiteScore) -> str:
        return f"<td class='num'>{'-' if s.paper_set_f1 is None else f'{s.paper_set_f1:.3f}'}</td>" if paper else ""

    def length_cell(s: SiteScore) -> str:
        return f"<td class='num'>{'-' if s.length_match is None else f'{s.length_match:.2f}'}</td>" if length else ""

    rows = "".join(
        f"<tr><td class='num'>{rank}</td><td class='mono'>{escape(s.name)}</td><td>{escape(s.kind)}</td>"
        f"<td class='num'>{s.index}</td><td class='num'>{s.mean:.3f}</td>{set_f1(s)}{length_cell(s)}<td class='num'>{s.n}</td>"
        f"<td>{escape(_cell_text(s.best))}</td></tr>"
        for rank, s in enumerate(top, 1)
    )
    paper_head = ("<th>paper set F1</th>" if paper else "") + ("<th>right length</th>" if length else "")
    paper_note = (" <i>paper set F1</i> is the paper's own figure in the same cell: 2&middot;mean(P)&middot;mean(R) / "
                  "(mean(P) + mean(R)) of its lower-cased, anagram-tolerant character precision and recall "
                  "(docs/metrics.md), so it compares directly with the paper's tables." if paper else "")
    if length:
        paper_note += (" <i>right length</i> is the rate, in the same cell, at which the reading has as many "
                       "characters as the text (whitespace removed): character F1 does not see a leftover glyph.")
    return (
        f"<section id='sites'><h2>Localized sites</h2><p class='note'>The {len(top)} sites with the {better} "
        f"{escape(metric)}: each site's mean over pairs and seeds in its best cell (step window, head), "
        f"unfinished cells left out; the same ranking as <code>ds.dp.best_sites</code> and the CLI.{paper_note}</p>"
        "<table><thead><tr><th>#</th><th>site</th><th>kind</th><th>index</th>"
        f"<th>mean {escape(metric)}</th>{paper_head}<th>n</th><th>best cell</th></tr></thead>"
        f"<tbody>{rows}</tbody></table></section>"
    )


def _cell_text(cell: dict[str, Any]) -> str:
    return ", ".join(f"{k} = {v}" for k, v in cell.items()) or "-"


def _figures_section(figures: list[tuple[str, go.Figure]]) -> str:
    divs = "".join(f'<div class="card"><div class="plot" id="{fid}"></div></div>' for fid, _ in figures)
    return (
        "<section id='figures'><h2>Figures</h2><p class='note'>Hover a cell for the site's name, index, the value "
        f"and n, the number of finished cells behind it.</p>{divs}</section>"
    )


def _png_uri(pixels: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(buffer, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _tile(pixels: np.ndarray | None, what: str, ocr: str | None, *notes: str) -> str:
    """One image with its caption: what it is, notes (site name, cell, value), and the OCR text read from it."""
    if pixels is None:
        image = '<div class="missing">no image</div>'
    else:  # small images are scaled up without blurring; large ones are scaled down smoothly
        small = ' class="small"' if pixels.shape[1] < 170 else ""
        image = f'<img{small} src="{_png_uri(pixels)}" alt="{escape(what)}">'
    ocr_html = f'<span class="ocr" title="OCR text">{escape(ocr) or "&nbsp;"}</span>' if ocr is not None else ""
    lines = "".join(f'<span class="detail">{escape(n)}</span>' for n in notes if n)
    return f'<figure>{image}<figcaption><span class="what">{escape(what)}</span>{lines}{ocr_html}</figcaption></figure>'


def _get(ds: xr.Dataset, name: str, **where: Any) -> Any:
    """``ds[name]`` at ``where`` (only the dims it has), or None when the variable is absent."""
    if name not in ds:
        return None
    var = ds[name]
    return var.sel({k: v for k, v in where.items() if k in var.dims}).values


def _grid_section(ds: xr.Dataset, top: list[SiteScore], metric: str, max_pairs: int) -> str:
    if not {"source_image", "target_image", "patched_image"} & set(ds.data_vars):
        return "<section id='images'><h2>Images</h2><p class='note'>This dataset holds no images.</p></section>"
    seed = ds["seed"].values[0].item() if "seed" in ds.dims else None
    where = {"seed": seed} if seed is not None else {}
    rows = [_pair_row(ds, pair.item(), top, metric, where) for pair in ds["pair"].values[:max_pairs]]
    shown = f"first {max_pairs} of {ds.sizes['pair']} pairs, " if ds.sizes["pair"] > max_pairs else ""
    note = (
        f"Source, target, then the patched image at each localized site (at its best cell), {shown}"
        f"seed {seed}. The OCR text is under each image."
    )
    return f"<section id='images'><h2>Images</h2><p class='note'>{escape(note)}</p>{''.join(rows)}</section>"


def _pair_row(ds: xr.Dataset, pair: int, top: list[SiteScore], metric: str, where: dict[str, Any]) -> str:
    at = {"pair": pair, **where}
    tiles = [
        _tile(_get(ds, "source_image", **at), "source", _text(_get(ds, "source_ocr_text", **at))),
        _tile(_get(ds, "target_image", **at), "target", _text(_get(ds, "target_ocr_text", **at))),
    ]
    for s in top:
        cell = {**at, "site": s.index, **s.best}
        value = _get(ds, metric, **cell)
        done = _get(ds, "done", **cell)
        score = f"{metric} = {float(value):.3f}" if done is None or bool(done) else "not finished"
        what = f"patched @ site {s.index}" + (f" ({s.kind})" if s.kind else "")
        ocr = _text(_get(ds, "ocr_text", **cell))
        tiles.append(_tile(_get(ds, "patched_image", **cell), what, ocr, s.name, _cell_text(s.best), score))
    prompts = _prompts(ds, pair)
    return f'<div class="pair"><h3>pair {pair}</h3>{prompts}<div class="grid">{"".join(tiles)}</div></div>'


def _text(value: Any) -> str | None:
    return None if value is None else str(value.item() if hasattr(value, "item") else value)


def _prompts(ds: xr.Dataset, pair: int) -> str:
    parts = []
    for side in ("source", "target"):
        prompt = _text(_get(ds, f"{side}_prompt", pair=pair))
        text = _text(_get(ds, f"{side}_text", pair=pair))
        if prompt is not None:
            words = f" (text <q>{escape(text)}</q>)" if text is not None else ""
            parts.append(f"<b>{side}</b> <q>{escape(prompt)}</q>{words}")
    return f'<p class="prompts">{" → ".join(parts)}</p>' if parts else ""


def _pretty_json(raw: Any) -> str:
    try:
        return json.dumps(json.loads(raw), indent=2, ensure_ascii=False, sort_keys=False)
    except (TypeError, ValueError):
        return str(raw)


def _provenance_section(ds: xr.Dataset) -> str:
    try:
        versions = json.loads(ds.attrs.get("versions", "{}"))
        rows = "".join(
            f"<tr><td>{escape(str(k))}</td><td class='mono'>{escape(str(v))}</td></tr>" for k, v in versions.items()
        )
        versions_html = f"<table><tbody>{rows}</tbody></table>"
    except (TypeError, ValueError, AttributeError):
        versions_html = f"<pre>{escape(str(ds.attrs.get('versions')))}</pre>"
    spec = _pretty_json(ds.attrs["spec"]) if "spec" in ds.attrs else "(no spec recorded)"
    return (
        f"<section id='provenance'><h2>Model and versions</h2><p>model: <span class='mono'>"
        f"{escape(str(ds.attrs.get('model', 'unknown')))}</span></p>{versions_html}"
        f"<h2>Spec</h2><pre id='spec'>{escape(spec)}</pre></section>"
    )


def write_attention_page(result, out, title: str = "diffprobe attention maps") -> Path:
    """DIR/images/*.png, DIR/overlays/*.png (one per sample and word), DIR/maps.npz and DIR/attention.html."""
    from diffprobe.attention import overlay_png

    out = Path(out)
    for sub in ("images", "overlays"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(result.images):
        Image.fromarray(image).save(out / "images" / f"sample{i:03d}.png")
        if result.words is not None:
            for j, w in enumerate(result.words["word"].values):
                if np.isnan(result.words.isel(sample=i, word=j).values).all():
                    continue
                safe = re.sub(r"[^0-9A-Za-z_-]+", "_", str(w))[:40] or "word"
                png = overlay_png(image, result.words.isel(sample=i, word=j).values)
                Image.fromarray(png).save(out / "overlays" / f"sample{i:03d}_{j}_{safe}.png")
    arrays = {"maps": result.maps.values}
    if result.words is not None:
        arrays.update(words=result.words.values, word_names=np.asarray(result.words["word"].values, dtype=str))
    np.savez_compressed(out / "maps.npz", images=result.images, **arrays)
    body, figures = attention_section(result)
    header = f"<header><h1>{escape(title)}</h1></header>"
    return write_page(out / "attention.html", title, header + body, figures)
