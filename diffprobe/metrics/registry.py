"""Metrics by name, so a spec, the CLI and a notebook select them the same way.

Each registered ``Metric`` has a name, a one-line description, what it needs (``ocr``,
``source_images``, ``prompts``, ``clip``) and a function of one sample. ``compute`` scores a
batch: it validates the names, runs OCR once when any text metric asks for it (or takes the
readings given as ``ocr_texts``), and returns one float64 array of length ``n`` per metric name,
plus ``"ocr_text"`` (the readings) whenever text metrics were computed.

Text metrics come in two flavours, against the *target* text (did the edit write the new word?)
and against the *source* text (is the old word gone?). Image metrics compare each image with the
unpatched image of the same pair and seed. ``clip_t`` needs local CLIP weights and is not in
``DEFAULT_METRICS``; ``unavailable`` says which metrics cannot run here and why.

``DERIVED`` metrics (``moved_target``: how far the image moved from the unpatched source image towards
the unpatched target image, from pixels) are not asked for in a spec: every results dataset carries
them, computed from the images it stores (:func:`diffprobe.results.add_derived`), so they rank sites
and colour reports like any metric (``--metric moved_target``) without changing a spec's fingerprint.

The ``paper_*`` metrics reproduce the paper's evaluation code (looser than diffprobe's own
``ocr_*`` / ``exact_*`` / ``lev_*``; see ``diffprobe.metrics.text``); they are cheap once OCR ran,
so they are in ``DEFAULT_METRICS`` and sweeps record both. The paper's F1 of a set of samples is
``paper_set_f1(ds["paper_precision_target"], ds["paper_recall_target"])``.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from jaxtyping import UInt8

from diffprobe.errors import MetricError, did_you_mean
from diffprobe.metrics import clip as _clip
from diffprobe.metrics import image as _image
from diffprobe.metrics import ocr as _ocr
from diffprobe.metrics import text as _text

__all__ = ["Metric", "METRICS", "DEFAULT_METRICS", "DERIVED", "compute", "list_metrics", "validate", "unavailable",
           "lower_is_better"]

NEEDS = frozenset({"ocr", "source_images", "target_images", "prompts", "clip"})


@dataclass(frozen=True)
class Metric:
    """One registered metric; ``fn`` scores one sample from the keyword arguments its ``needs`` name."""

    name: str
    description: str
    needs: frozenset[str]
    fn: Callable[..., float] | None = None  # None for batch metrics computed in ``compute`` (clip_t)
    against: str | None = None  # text metrics: "target" or "source"
    lower_is_better: bool = False  # the one place that decides how a metric ranks sites (distances, errors)

    def __post_init__(self) -> None:
        unknown = self.needs - NEEDS
        if unknown:
            raise MetricError(f"metric {self.name!r} needs unknown inputs {sorted(unknown)}; valid: {sorted(NEEDS)}.")


def _text_metrics(against: str) -> list[Metric]:
    what = f"the {against} text"
    specs = [
        ("ocr_precision", f"character-multiset precision of the OCR reading vs {what}",
         lambda ocr, text: _text.char_precision_recall(ocr, text)[0]),
        ("ocr_recall", f"character-multiset recall of the OCR reading vs {what}",
         lambda ocr, text: _text.char_precision_recall(ocr, text)[1]),
        ("ocr_f1", f"per-sample character F1 of the OCR reading vs {what}", _text.char_f1),
        ("exact", f"1 if the OCR reading equals {what} (case/whitespace-insensitive), else 0",
         lambda ocr, text: float(_text.exact_match(ocr, text))),
        ("lev", f"Levenshtein distance from the OCR reading to {what}",
         lambda ocr, text: float(_text.levenshtein(ocr, text))),
        ("length_match", f"1 if the OCR reading has as many characters as {what} (whitespace removed), else 0",
         _text.length_match),
        ("length_error", f"|characters read - characters of {what}| (whitespace removed)", _text.length_error),
    ]
    return [Metric(f"{stem}_{against}", desc, frozenset({"ocr"}), fn, against,
                   lower_is_better=stem in ("lev", "length_error"))
            for stem, desc, fn in specs]


def _paper_metrics(against: str) -> list[Metric]:
    """The paper's own definitions (its evaluation code), for digit-for-digit comparison with its tables."""
    what = f"the {against} text"
    specs = [
        ("paper_precision", f"the paper's character precision vs {what} (whitespace counts, /(len+1e-8))",
         lambda ocr, text: _text.paper_precision_recall(ocr, text)[0]),
        ("paper_recall", f"the paper's character recall vs {what} (whitespace counts, /(len+1e-8))",
         lambda ocr, text: _text.paper_precision_recall(ocr, text)[1]),
        ("paper_acc", f"the paper's accuracy: 1 if the reading is an anagram of {what} (whitespace dropped)",
         _text.paper_accuracy),
        ("paper_lev", f"the paper's Levenshtein distance, lower-cased, whitespace kept, vs {what}",
         lambda ocr, text: float(_text.paper_levenshtein(ocr, text))),
    ]
    return [Metric(f"{stem}_{against}", desc, frozenset({"ocr"}), fn, against, lower_is_better=stem == "paper_lev")
            for stem, desc, fn in specs]


_IMAGE = frozenset({"source_images"})
METRICS: dict[str, Metric] = {
    m.name: m
    for m in [
        *_text_metrics("target"),
        *_text_metrics("source"),
        *_paper_metrics("target"),
        *_paper_metrics("source"),
        Metric("mse", "mean squared error vs the unpatched source image (0-255, float)", _IMAGE, _image.mse,
               lower_is_better=True),
        Metric("psnr", "PSNR in dB vs the unpatched source image (peak 255; inf if identical)", _IMAGE, _image.psnr),
        Metric("ssim", "SSIM vs the unpatched source image (scikit-image, data_range 255)", _IMAGE, _image.ssim),
        Metric("clip_t", "CLIPScore 2.5*max(cos,0) of image vs prompt (needs local CLIP weights)",
               frozenset({"prompts", "clip"})),
        Metric("moved_target", "1 - MSE(image, target image) / MSE(source image, target image): 0 unchanged, 1 = the "
               "target prompt's unpatched image (pixels, no OCR; in every result, derived from its images)",
               frozenset({"source_images", "target_images"}), _image.moved),
    ]
}
#: computed from a results dataset's stored images (diffprobe.results.add_derived), never asked for in a spec
DERIVED: tuple[str, ...] = ("moved_target",)
DEFAULT_METRICS: list[str] = [name for name in METRICS if name != "clip_t" and name not in DERIVED]


def list_metrics() -> list[tuple[str, str]]:
    """Every registered metric as ``(name, description)``, in registry order."""
    return [(m.name, m.description) for m in METRICS.values()]


def lower_is_better(name: str) -> bool:
    """Whether smaller values of metric ``name`` are better (distances, errors); ``MetricError`` if unknown.

    ``baseline_<name>`` variables of a dataset rank like ``<name>``."""
    name = name.removeprefix("baseline_")
    if name not in METRICS:
        raise MetricError(f"unknown metric {name!r}.{did_you_mean(name, METRICS)} Valid metrics: {', '.join(METRICS)}.")
    return METRICS[name].lower_is_better


def validate(names: Sequence[str]) -> list[str]:
    """The names as a list, or ``MetricError`` for an unknown or repeated name, or an empty list."""
    if isinstance(names, str):
        names = [names]
    names = list(names)
    if not names:
        raise MetricError(f"no metrics selected; choose from {sorted(METRICS)}.")
    for name in names:
        if name in DERIVED:
            raise MetricError(f"{name!r} is in every result (derived from the images a sweep stores); leave it out of "
                              "the metrics to compute and rank or report by it directly (--metric " + name + ").")
        if name not in METRICS:
            valid = [m for m in METRICS if m not in DERIVED]
            raise MetricError(f"unknown metric {name!r}.{did_you_mean(name, valid)} Valid metrics: {', '.join(valid)}.")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise MetricError(f"metrics listed more than once: {repeated}.")
    return names


def unavailable(
    names: Sequence[str] | None = None, *, clip_dir: str | os.PathLike | None = None, engine: str = _ocr.DEFAULT_ENGINE
) -> dict[str, str]:
    """For each metric (all by default) that cannot run on this machine, the reason and the fix.

    OCR metrics are checked for the OCR ``engine`` (``"tesseract"`` or ``"easyocr"``)."""
    names = list(METRICS) if names is None else validate(names)
    ocr_reason = _ocr.engine_unavailable_reason(engine)
    reasons = {}
    for name in names:
        needs = METRICS[name].needs
        if "ocr" in needs and ocr_reason:
            reasons[name] = ocr_reason
        elif "clip" in needs and (reason := _clip.clip_unavailable_reason(clip_dir)):
            reasons[name] = reason
    return reasons


def compute(
    names: Sequence[str],
    *,
    images: UInt8[np.ndarray, "sample height width 3"],
    source_images: UInt8[np.ndarray, "sample height width 3"] | None,
    source_texts: Sequence[str],
    target_texts: Sequence[str],
    ocr_texts: Sequence[str] | None = None,
    prompts: Sequence[str] | None = None,
    clip_dir: str | os.PathLike | None = None,
    engine: str = _ocr.DEFAULT_ENGINE,
) -> dict[str, np.ndarray]:
    """Score a batch: one float64 array of length ``n`` per name, plus ``"ocr_text"`` when OCR was used.

    ``engine`` is the OCR engine (``"tesseract"``, the default, or ``"easyocr"``); it is not used
    when ``ocr_texts`` are given."""
    names = validate(names)
    _ocr._check_engine(engine)
    images = np.asarray(images)
    if images.ndim != 4:
        raise MetricError(f"compute expects images shaped (sample, height, width, 3); got {images.shape}.")
    n = len(images)
    _check_length("source_texts", source_texts, n)
    _check_length("target_texts", target_texts, n)
    needs = frozenset().union(*(METRICS[name].needs for name in names))
    if "source_images" in needs:
        if source_images is None:
            wanting = [nm for nm in names if "source_images" in METRICS[nm].needs]
            raise MetricError(f"metrics {wanting} compare with the unpatched image; pass source_images.")
        source_images = np.asarray(source_images)
        if source_images.shape != images.shape:
            raise MetricError(f"source_images has shape {source_images.shape}; images have {images.shape}.")
    if "prompts" in needs:
        if prompts is None:
            raise MetricError("clip_t scores each image against its prompt; pass prompts.")
        _check_length("prompts", prompts, n)
    out: dict[str, np.ndarray] = {}
    if "ocr" in needs:
        if ocr_texts is None:
            ocr_texts = _ocr.read_texts(images, **({} if engine == _ocr.DEFAULT_ENGINE else {"engine": engine}))
        _check_length("ocr_texts", ocr_texts, n)
        out["ocr_text"] = np.asarray([str(t) for t in ocr_texts], dtype=object)
    texts = {"target": list(target_texts), "source": list(source_texts)}
    for name in names:
        metric = METRICS[name]
        if name == "clip_t":
            out[name] = _clip.clip_score(images, list(prompts), clip_dir).astype(np.float64)
        elif "ocr" in metric.needs:
            wanted = texts[metric.against]
            out[name] = np.array([metric.fn(r, t) for r, t in zip(ocr_texts, wanted)], dtype=np.float64)
        else:
            out[name] = np.array([metric.fn(a, b) for a, b in zip(images, source_images)], dtype=np.float64)
    return out


def _check_length(what: str, seq: Sequence, n: int) -> None:
    if len(seq) != n:
        raise MetricError(f"{what} has {len(seq)} entries; there are {n} images.")
