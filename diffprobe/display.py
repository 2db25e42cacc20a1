"""Notebook display, progress and quiet library calls: what a researcher sees while working in Jupyter.

Why here and not in each class: a notebook shows an object through the standard hooks
(``_repr_html_``, ``_repr_png_``); the classes (:class:`~diffprobe.probe.Generation`,
:class:`~diffprobe.sites.SiteCatalogue`, :class:`~diffprobe.probe.Probe`, the ``ds.dp`` accessor)
keep one-line hooks that call the renderers below, so the markup lives in one place.

Rules every renderer follows:

- **Cheap.** A repr never runs a model or OCR; it shows what the object already holds (a
  generation's OCR reads only when it carries them).
- **Escaped.** Prompts, OCR reads and module names are user or model text (a prompt may hold
  ``<script>``): every string passes through :func:`html.escape`. Images are PNG ``data:`` URIs.
- **Static.** The markup is plain HTML and inline CSS, no JavaScript, so a notebook committed with
  its outputs reads the same on a code host as in Jupyter. Interactive plotly figures stay one call
  away (``ds.dp.heatmap()``).

Progress: :func:`progress_bar` is a tqdm bar (a widget in Jupyter when ipywidgets is installed, else
text: ``tqdm.auto``'s choice, without its warning when ipywidgets is missing), on unless
``progress=False`` is passed or the environment sets ``DIFFPROBE_PROGRESS=0``. :func:`quiet` silences
the libraries' noise (the "requires torchvision" notice, diffusers' and transformers' loading bars)
inside diffprobe calls only, and restores their settings on exit: importing diffprobe changes nothing globally.
"""
from __future__ import annotations

import base64
import contextlib
import io
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from html import escape
from typing import Any

import numpy as np

__all__ = [
    "progress_enabled", "progress_bar", "quiet", "png_bytes", "image_grid_html",
    "generation_html", "catalogue_html", "probe_html", "dataset_html",
]

#: library warnings that are noise for a diffprobe user (regexes on the message)
NOISE = (r".*requires torchvision.*", r"(?s).*steps_offset.*", r".*CLIPImageProcessorPil.*", r"IProgress not found.*")
_OFF = ("0", "false", "no", "off")


# -- progress and quiet ---------------------------------------------------------------------------

def progress_enabled(progress: bool | None = None) -> bool:
    """``progress`` when given, else on unless the environment sets ``DIFFPROBE_PROGRESS=0``."""
    if progress is not None:
        return bool(progress)
    return os.environ.get("DIFFPROBE_PROGRESS", "1").strip().lower() not in _OFF


@contextlib.contextmanager
def progress_bar(desc: str, progress: bool | None = None) -> Iterator[Callable[[int, int], None]]:
    """A ``progress(done, total)`` callback for :func:`diffprobe.experiments.run`, drawn with tqdm.

    ``with progress_bar("layers") as tick: run(spec, probe=probe, progress=tick)``; a no-op when disabled."""
    if not progress_enabled(progress):
        yield lambda done, total: None
        return
    tqdm = _tqdm()
    bars = []  # drawn at the first tick, when the number of batches is known

    def tick(done: int, total: int) -> None:
        if not bars:
            bars.append(tqdm(desc=desc, unit="batch", total=total, leave=True, dynamic_ncols=True))
        bars[0].total = total
        bars[0].n = done
        bars[0].refresh()

    try:
        yield tick
    finally:
        for bar in bars:
            bar.close()


def _tqdm():
    """tqdm's widget bar inside a Jupyter kernel with ipywidgets, else its text bar (what ``tqdm.auto`` picks,
    without its warning when ipywidgets is missing)."""
    import sys

    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    if shell is not None and "IPKernelApp" in getattr(shell, "config", {}):
        try:
            import ipywidgets  # noqa: F401
            from tqdm.notebook import tqdm

            return tqdm
        except ImportError:
            pass
    from tqdm.std import tqdm

    return tqdm


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Inside: the libraries' notices and loading bars are off; on exit every setting is restored."""
    with warnings.catch_warnings():  # first: importing the libraries below can itself warn (tqdm's ipywidgets notice)
        for pattern in NOISE:
            warnings.filterwarnings("ignore", message=pattern)
        restore = _quiet_loggers()
        try:
            yield
        finally:
            for undo in reversed(restore):
                undo()


def _quiet_loggers() -> list[Callable[[], None]]:
    """diffusers' and transformers' verbosity to errors and their progress bars off; returns the undo steps."""
    restore: list[Callable[[], None]] = []
    for module in ("diffusers", "transformers"):
        try:
            logging = __import__(f"{module}.utils.logging", fromlist=["logging"])
        except ImportError:  # pragma: no cover - both are dependencies
            continue
        level, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
        logging.set_verbosity_error()
        logging.disable_progress_bar()
        restore.append(lambda lg=logging, lv=level, b=bars: (lg.set_verbosity(lv),
                                                             lg.enable_progress_bar() if b else None))
    return restore


# -- images -----------------------------------------------------------------------------------------

def png_bytes(pixels: np.ndarray) -> bytes:
    """uint8 ``[height, width, rgb]`` as PNG bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _img(pixels: np.ndarray, alt: str) -> str:
    uri = "data:image/png;base64," + base64.b64encode(png_bytes(pixels)).decode("ascii")
    h, w = pixels.shape[:2]
    scale = max(1, min(4, 256 // max(w, 1)))  # small images are shown larger, without smoothing
    return (f'<img src="{uri}" alt="{escape(alt)}" width="{w * scale}" height="{h * scale}" '
            'style="image-rendering:pixelated;display:block">')


_CAPTION = "font:12px/1.3 monospace;max-width:{w}px;overflow-wrap:anywhere;margin-top:2px"


def image_grid_html(images: np.ndarray, captions: Sequence[Sequence[str]] = (), title: str = "") -> str:
    """Images side by side, each with caption lines (escaped here); ``captions[i]`` goes under image i."""
    tiles = []
    for i, pixels in enumerate(images):
        lines = captions[i] if i < len(captions) else ()
        w = pixels.shape[1] * max(1, min(4, 256 // max(pixels.shape[1], 1)))
        text = "".join(f"<div>{escape(str(line))}</div>" for line in lines)
        tiles.append(f'<figure style="margin:4px">{_img(pixels, f"image {i}")}'
                     f'<figcaption style="{_CAPTION.format(w=w)}">{text}</figcaption></figure>')
    head = f"<div><b>{escape(title)}</b></div>" if title else ""
    return f'<div>{head}<div style="display:flex;flex-wrap:wrap;align-items:flex-start">{"".join(tiles)}</div></div>'


def grid_png(images: np.ndarray, pad: int = 2) -> bytes:
    """The images in one row as a PNG (what a viewer without HTML shows)."""
    images = np.asarray(images, dtype=np.uint8)
    n, h, w = images.shape[:3]
    canvas = np.full((h, n * w + (n - 1) * pad, 3), 255, dtype=np.uint8)
    for i, pixels in enumerate(images):
        canvas[:, i * (w + pad) : i * (w + pad) + w] = pixels[..., :3]
    return png_bytes(canvas)


def generation_html(gen: Any) -> str:
    """A :class:`~diffprobe.probe.Generation`: its images, with prompts and OCR reads when it carries them."""
    images = np.asarray(gen.images)
    prompts = getattr(gen, "prompts", None) or ()
    reads = getattr(gen, "ocr_texts", None) or ()
    captions = []
    for i in range(len(images)):
        lines = [f"#{i}"]
        if i < len(prompts):
            lines.append(str(prompts[i]))
        if i < len(reads):
            lines.append(f"OCR: {reads[i]!s}")
        captions.append(lines)
    shape = "×".join(str(s) for s in images.shape)
    extra = f", captures: {', '.join(map(str, gen.captures))}" if getattr(gen, "captures", None) else ""
    return image_grid_html(images, captions, title=f"Generation: {len(images)} images ({shape}){extra}")


# -- tables -----------------------------------------------------------------------------------------

_TABLE = 'style="border-collapse:collapse;font:12px monospace"'
_CELL = 'style="padding:1px 8px;text-align:{align};border-bottom:1px solid #ddd"'


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], caption: str = "", limit: int = 200) -> str:
    def cells(values, tag):
        return "".join(
            f"<{tag} {_CELL.format(align='right' if isinstance(v, (int, float, np.number)) else 'left')}>"
            f"{escape(f'{v:,}' if isinstance(v, (int, np.integer)) and not isinstance(v, bool) else str(v))}</{tag}>"
            for v in values
        )

    body = "".join(f"<tr>{cells(r, 'td')}</tr>" for r in rows[:limit])
    more = f"<tr><td colspan='{len(header)}'>… {len(rows) - limit} more</td></tr>" if len(rows) > limit else ""
    cap = f"<caption style='text-align:left;font-weight:bold'>{escape(caption)}</caption>" if caption else ""
    return f"<table {_TABLE}>{cap}<thead><tr>{cells(header, 'th')}</tr></thead><tbody>{body}{more}</tbody></table>"


def catalogue_html(catalogue: Any, caption: str | None = None) -> str:
    """A :class:`~diffprobe.sites.SiteCatalogue` as a table: label, module name, block, heads, K/V parameters."""
    counts = ", ".join(f"{n} {k}" for k, n in catalogue.counts().items())
    rows = [(s.label, s.name, s.block, s.heads, s.head_dim, s.kv_params) for s in catalogue]
    return _table(("label", "name", "block", "heads", "head_dim", "kv params"), rows,
                  caption if caption is not None else f"SiteCatalogue: {len(catalogue)} sites ({counts})")


def probe_html(probe: Any) -> str:
    """A :class:`~diffprobe.probe.Probe`: model, denoiser, parameters, generation defaults, then its text sites."""
    facts = [("model", probe.name), ("denoiser", type(probe.denoiser).__name__),
             ("parameters", f"{probe.total_params:,}"),
             ("sites", ", ".join(f"{n} {k}" for k, n in probe.sites.counts().items())),
             ("weights", "none (meta build)" if probe.model is None else "loaded"),
             ("defaults", ", ".join(f"{k}={v}" for k, v in probe.defaults.items()) or "the pipeline's")]
    text = [s for s in probe.sites if s.carries_text]
    head = _table(("", ""), facts, caption="Probe")
    return head + catalogue_html(type(probe.sites)(text), caption=f"text sites ({len(text)})")


def _colour(value: float, lo: float, hi: float) -> str:
    """Viridis-like ramp (dark blue -> green -> yellow) as an inline background, with readable text."""
    if np.isnan(value):
        return "background:#eee;color:#888"
    t = 0.0 if hi <= lo else float(np.clip((value - lo) / (hi - lo), 0, 1))
    stops = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], float)
    pos = t * (len(stops) - 1)
    i = min(int(pos), len(stops) - 2)
    r, g, b = (stops[i] + (stops[i + 1] - stops[i]) * (pos - i)).astype(int)
    return f"background:rgb({r},{g},{b});color:{'#000' if t > 0.55 else '#fff'}"


def dataset_html(ds: Any, metric: str | None = None) -> str:
    """A sweep's heatmap as a static coloured table: sites (or site counts) x step windows, the metric's mean
    over pairs and seeds (and heads); the ranking's best site marked. What evaluating ``ds.dp`` shows."""
    from . import ranking
    from .metrics import lower_is_better

    metric = metric or ranking.default_metric(ds)
    da = ranking.select_metric(ds, metric)
    group = ranking.group_dim(ds)
    cols = "t_start" if "t_start" in da.dims else None
    keep = [d for d in (group, cols) if d]
    mean = da.mean([d for d in da.dims if d not in keep], skipna=True).transpose(*keep)
    values = mean.values.reshape(mean.shape[0], -1)
    lo, hi = (float(np.nanmin(values)), float(np.nanmax(values))) if np.isfinite(values).any() else (0.0, 1.0)
    best = ranking.rank_sites(ds, metric, k=1)
    best_label = best[0].label if best and not np.isnan(best[0].mean) else None
    labels = [s.label for s in ranking.site_scores(ds, metric)]
    col_values = [int(v) for v in ds[cols].values] if cols else ["all"]
    header = "".join(f"<th style='padding:1px 8px'>{escape(str(v))}</th>" for v in col_values)
    rows = []
    for i, label in enumerate(labels):
        mark = " ★" if label == best_label else ""
        name = str(ds["site_name"].values[i]) if "site_name" in ds.coords and group == "site" else ""
        cells = "".join(f"<td style='padding:1px 8px;text-align:right;{_colour(v, lo, hi)}'>"
                        f"{'' if np.isnan(v) else f'{v:.3f}'}</td>" for v in values[i])
        rows.append(f"<tr><td style='padding:1px 8px' title='{escape(name)}'>{escape(label)}{mark}</td>{cells}</tr>")
    done, total = (int(ds["done"].sum()), int(ds["done"].size)) if "done" in ds else (0, 0)
    lower = " (lower is better)" if lower_is_better(metric) else ""
    caption = (f"{ds.attrs.get('model', 'sweep')}: mean {metric}{lower} over pairs and seeds, "
               f"{group or 'site'} × {cols or 'cell'}; {done} of {total} cells finished; ★ the best site")
    return (f"<div style='font:bold 12px monospace'>{escape(caption)}</div><table {_TABLE}>"
            f"<thead><tr><th style='padding:1px 8px'>{escape(group or 'site')} \\ {escape(cols or '')}</th>{header}</tr>"
            f"</thead><tbody>{''.join(rows)}</tbody></table>")
