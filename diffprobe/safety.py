"""Toxic-text prevention with the localized layers (the paper's safety application).

Why it works. The localization study (docs/science.md) finds the few attention layers whose text keys/values decide
the text an image renders. When a prompt asks for a word that must not be written, giving *only those layers* the
same prompt with that word replaced by a harmless one, from step ``t_s`` on, makes the model write the harmless
word while every other layer -- and so layout, colours and background -- still reads the user's prompt. This is
the editing method of :mod:`diffprobe.edit` applied as a filter: the same :class:`~diffprobe.Inject` on cross
sites (:class:`~diffprobe.Patch` on joint/single sites), built by :func:`diffprobe.edit.edit_intervention`; no new
hook path. When the screen does not fire nothing is changed at all.

The screen (:class:`Screen`) scores the text a prompt asks to render (its quoted text) with the offline classifier
of the ``alt-profanity-check`` package (a linear SVM on a bag of words, calibrated to a probability; the model
ships inside the wheel, nothing is downloaded) and checks it against a user block list (whole words, case-
insensitive; one word a line, ``#`` comments). It fires when the score reaches the threshold or a block-list word
occurs; the score, the threshold and the matched words are recorded (:class:`Verdict`).

The benign word is given, or drawn with a seeded ``random.Random`` from a list (the paper draws it at random), skipping
any word the screen itself would flag.

:func:`compare` measures the defences on the same prompts and seeds: no defence; the localized fix; the same fix
at every text site; a negative prompt naming the word; prompt swap (the prompt with the benign word, same noise).
Metrics: the rendered text read by OCR and scored by the same screen (rate of toxic text left), OCR similarity to
the benign word, SSIM / PSNR / MSE to the undefended image outside the text box, and wall time per image.
diffusers' safe-latent-diffusion pipeline (``StableDiffusionPipelineSafe``) is a Stable Diffusion 1.x pipeline
(latent UNet with a VAE and CLIP text encoder); it has no equivalent for pixel-space IF pipelines such as the
embedded glyph model, so :func:`compare` leaves it out there.
"""
from __future__ import annotations

import random
import re
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .edit import _QUOTED, check_expressible, edit_intervention, glyph_text_box, image_scores, target_prompt
from .edit import markdown_table as edit_table
from .errors import InterventionError, MetricError
from .plan import Variant

__all__ = ["Screen", "Verdict", "GuardResult", "guard", "read_blocklist", "quoted_text", "default_sites",
           "compare", "markdown_table", "DEFAULT_BENIGN", "GLYPH_BLOCKLIST"]

#: benign replacement words (all in the embedded glyph model's 32-word vocabulary, so they work there too)
DEFAULT_BENIGN = ("LOVE", "HOPE", "SUN", "BIRD", "TREE", "ROSE", "BOOK", "CAFE")

#: the block list the glyph comparison uses (package data): the 4 words of glyph's vocabulary the classifier scores
#: highest (DOG 0.499, STOP 0.242, EXIT 0.081, MOON 0.069); at the default threshold 0.5 it flags none of the 32.
GLYPH_BLOCKLIST = Path(__file__).resolve().parent / "bench_data" / "glyph_blocklist.txt"

_WORD = re.compile(r"[a-z0-9']+")


def classifier_scores(texts: Sequence[str]) -> np.ndarray:
    """alt-profanity-check's probability that each text is offensive (0..1)."""
    try:
        with warnings.catch_warnings():  # its pickled scikit-learn model warns on a newer scikit-learn
            warnings.simplefilter("ignore")
            from profanity_check import predict_prob
    except ImportError:
        raise MetricError("the text screen needs the alt-profanity-check package: pip install alt-profanity-check "
                          "(or pip install -e '.[test]')") from None
    if not texts:
        return np.zeros(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(predict_prob([str(t) for t in texts]), dtype=float)


def read_blocklist(path) -> tuple[str, ...]:
    """Words of a block-list file: one a line, ``#`` starts a comment, blank lines skipped; lower-cased."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InterventionError(f"cannot read the block list {path}: {type(exc).__name__}: {exc}", field="blocklist"
                                ) from None
    words = [ln.split("#", 1)[0].strip().lower() for ln in lines]
    return tuple(w for w in words if w)


@dataclass(frozen=True)
class Verdict:
    """The screen's answer for one text: the classifier's score, the threshold, the block-list words found."""

    text: str
    score: float
    threshold: float
    blocked: tuple[str, ...] = ()

    @property
    def flagged(self) -> bool:
        return self.score >= self.threshold or bool(self.blocked)

    @property
    def reason(self) -> str:
        parts = [f"classifier score {self.score:.3f} >= {self.threshold}"] if self.score >= self.threshold else []
        parts += [f"block list: {', '.join(self.blocked)}"] if self.blocked else []
        return "; ".join(parts) or f"passed (classifier score {self.score:.3f} < {self.threshold})"

    def to_dict(self) -> dict:
        return dict(asdict(self), blocked=list(self.blocked), flagged=self.flagged, reason=self.reason)


@dataclass(frozen=True)
class Screen:
    """Scores texts with alt-profanity-check's classifier and a block list; fires at ``score >= threshold``."""

    threshold: float = 0.5
    blocklist: tuple[str, ...] = field(default=())

    def __post_init__(self):
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) or not (
                0.0 <= float(self.threshold) <= 1.0):
            raise InterventionError(f"the screen's threshold must be a number in [0, 1]; got {self.threshold!r}.",
                                    field="threshold")
        if isinstance(self.blocklist, str):
            raise InterventionError("blocklist takes a list of words (or read_blocklist(path)), not one string.",
                                    field="blocklist")
        words = tuple(str(w).strip().lower() for w in self.blocklist)
        if any(not w or not _WORD.fullmatch(w) for w in words):
            raise InterventionError(f"block-list entries must be single words; got {list(self.blocklist)!r}.",
                                    field="blocklist")
        object.__setattr__(self, "threshold", float(self.threshold))
        object.__setattr__(self, "blocklist", words)

    @classmethod
    def from_file(cls, path, threshold: float = 0.5) -> "Screen":
        return cls(threshold=threshold, blocklist=read_blocklist(path))

    def __call__(self, texts: str | Sequence[str]):
        """One :class:`Verdict` for a string, a list of them for a list."""
        single = isinstance(texts, str)
        items = [texts] if single else list(texts)
        scores = classifier_scores(items)
        out = []
        for text, score in zip(items, scores):
            words = set(_WORD.findall(text.lower()))
            out.append(Verdict(text, float(score), self.threshold, tuple(w for w in self.blocklist if w in words)))
        return out[0] if single else out


def quoted_text(prompt: str) -> str:
    """The text a prompt asks to render: its one quoted text (``a sign that says "STOP"`` -> ``STOP``)."""
    found = _QUOTED.findall(prompt)
    if len(found) != 1:
        raise InterventionError(f"guard screens the text a prompt asks to render, written in double quotes; {prompt!r}"
                                f" has {len(found)} quoted texts (it needs exactly one).", field="prompt")
    return found[0]


def default_sites(probe) -> str:
    """The localized sites of ``probe``'s model: its saved ``diffprobe localize`` result (``localized.json`` in the
    model folder; for the embedded glyph model the one shipped with it)."""
    candidates = [Path(probe.name) / "localized.json"]
    if probe.name == "glyph":
        from .zoo.glyph import default_model_path

        candidates.insert(0, default_model_path().parent / "localized.json")
    for path in candidates:
        if path.is_file():
            return str(path)
    raise InterventionError(f"no saved localization for {probe.name}: name the sites (e.g. --sites cross:9), a "
                            "`diffprobe localize` folder / localized.json, or a sweep's results folder.", field="sites")


def pick_benign(screen: Screen, words: Sequence[str], seed: int) -> str:
    """A word from ``words`` that the screen passes, drawn with ``random.Random(seed)``."""
    verdicts = screen(list(words)) if words else []
    ok = [v.text for v in verdicts if not v.flagged]
    if not ok:
        raise InterventionError(f"none of the benign words {list(words)!r} passes the screen; give another list.",
                                field="benign")
    return random.Random(seed).choice(ok)


@dataclass
class GuardResult:
    """What :func:`guard` decided and made. ``image`` is the defended image (uint8, height x width x rgb);
    ``undefended`` the same prompt and seed without the fix (when asked)."""

    prompt: str
    verdict: Verdict
    image: np.ndarray
    benign: str | None = None
    safe_prompt: str | None = None
    sites: tuple[str, ...] = ()
    t_start: int | None = None
    seed: int = 0
    steps: int = 25
    seconds: float = 0.0
    undefended: np.ndarray | None = None

    @property
    def fired(self) -> bool:
        return self.verdict.flagged

    def to_dict(self) -> dict:
        return dict(prompt=self.prompt, screen=self.verdict.to_dict(), fired=self.fired, benign=self.benign,
                    safe_prompt=self.safe_prompt, sites=list(self.sites), t_start=self.t_start, seed=self.seed,
                    steps=self.steps, seconds=round(self.seconds, 3))


def resolve(probe, sites, t_start):
    """(site selection, t_s) from ``sites`` (None: the model's saved localization) and ``t_start``."""
    from .edit import resolve_sites

    spec, found = resolve_sites(probe, default_sites(probe) if sites is None else sites)
    t_s = t_start if t_start is not None else (found if found is not None else 0)
    return spec, t_s


def guard(probe, prompt: str, *, screen: Screen | None = None, sites=None, t_start: int | None = None,
          benign: str | None = None, benign_words: Sequence[str] = DEFAULT_BENIGN, benign_seed: int = 0,
          steps: int = 25, seed: int = 0, guidance: float | None = None, undefended: bool = False) -> GuardResult:
    """Generate ``prompt``; if the screen flags its quoted text, the localized sites read the prompt with that text
    replaced by a benign word from step ``t_s`` on (nothing else changes).

    ``sites``: a selection, a ``localize`` folder / ``localized.json`` (which also gives t_s) or a sweep's folder;
    None: the model's saved localization (:func:`default_sites`). ``benign``: the replacement, else drawn from
    ``benign_words`` with ``benign_seed``. ``undefended=True`` also returns the image without the fix (same batch)."""
    screen = screen or Screen()
    verdict = screen(quoted_text(prompt))
    variants = [Variant(prompt, (), seed)] if undefended or not verdict.flagged else []
    word = safe = None
    labels: tuple[str, ...] = ()
    t_s = None
    if verdict.flagged:
        word = benign if benign is not None else pick_benign(screen, benign_words, benign_seed)
        safe = target_prompt(prompt, word)
        check_expressible(probe, safe, word)
        spec, t_s = resolve(probe, sites, t_start)
        labels = tuple(s.label for s in probe.sites.parse(spec))
        variants.append(Variant(prompt, (edit_intervention(probe, safe, spec, t_s),), seed))
    t0 = time.perf_counter()
    images = probe.run(variants, steps=steps, guidance=guidance).images
    seconds = time.perf_counter() - t0
    return GuardResult(prompt, verdict, images[-1], word, safe, labels, t_s, seed, steps, seconds,
                       images[0] if undefended else None)


def write_outputs(result: GuardResult, out) -> Path:
    """DIR/image.png (the defended image), DIR/undefended.png when made, DIR/guard.json (the screen's record)."""
    import json

    from PIL import Image

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    Image.fromarray(result.image).save(out / "image.png")
    if result.undefended is not None:
        Image.fromarray(result.undefended).save(out / "undefended.png")
    path = out / "guard.json"
    path.write_text(json.dumps(result.to_dict(), indent=1), encoding="utf-8")
    return path


# -- the comparison ------------------------------------------------------------------------------------------------
def _methods(probe, top: str, t_start: int):
    """name -> function(prompt, word, safe prompt) -> (prompt, interventions, negative prompt) of the defended row."""
    text_sites = " ".join(s.label for s in probe.sites if s.carries_text)
    return {
        "no defence": lambda p, w, s: (p, (), ""),
        f"localized fix ({top}) from t_s={t_start}": lambda p, w, s: (p, (edit_intervention(probe, s, top, t_start),),
                                                                     ""),
        f"all text sites from t_s={t_start}": lambda p, w, s: (p, (edit_intervention(probe, s, text_sites, t_start),),
                                                               ""),
        "negative prompt naming the word": lambda p, w, s: (p, (), w),
        "prompt swap (benign word, same noise)": lambda p, w, s: (s, (), ""),
    }


def compare(probe, prompts: Sequence[str], *, screen: Screen, sites=None, t_start: int | None = None,
            steps: int = 25, seeds: Sequence[int] = (0,), benign_words: Sequence[str] = DEFAULT_BENIGN,
            benign_seed: int = 0, guidance=None, box=None, progress=None) -> list[dict]:
    """One row per defence over ``prompts`` x ``seeds`` (every prompt must be flagged by ``screen``): the rate of
    toxic text left (OCR read, scored by ``screen``), OCR char F1 / exact to the benign word, MSE / PSNR / SSIM to
    the undefended image outside the text box, and seconds per image (each defence's batch timed in turn).
    ``box``: a function (word, benign) -> (x0, y0, x1, y1), or one box (default for glyph: the renderer's box)."""
    from .metrics.ocr import read_texts
    from .metrics.text import char_f1, exact_match

    top, t_s = resolve(probe, sites, t_start)
    rng = random.Random(benign_seed)
    cells = []
    for p in prompts:
        word = quoted_text(p)
        if not screen(word).flagged:
            raise InterventionError(f"{p!r}: the screen does not flag {word!r}, so no defence would act; compare "
                                    "prompts the screen flags.", field="prompt")
        benign = pick_benign(screen, benign_words, rng.randrange(2 ** 31))
        safe = target_prompt(p, benign)
        check_expressible(probe, safe, benign)
        cells += [(p, word, benign, safe, s) for s in seeds]
    if box is None and probe.name == "glyph":
        box = lambda w, b: glyph_text_box([w, b])  # noqa: E731
    rows, reference = [], None
    for name, make in _methods(probe, top, t_s).items():
        if progress:
            progress(name)
        variants = []
        for p, w, b, s, seed in cells:
            prompt, ivs, negative = make(p, w, s)
            variants.append(Variant(prompt, ivs, seed, negative))
        t0 = time.perf_counter()
        images = probe.run(variants, steps=steps, guidance=guidance).images
        seconds = (time.perf_counter() - t0) / len(cells)
        reference = images if reference is None else reference
        texts = read_texts(images)
        verdicts = screen(texts)
        per = []
        for img, ref, text, v, (p, w, b, s, seed) in zip(images, reference, texts, verdicts, cells):
            bx = box(w, b) if callable(box) else box
            scores = image_scores(img, ref, bx)
            per.append(dict(toxic_left=float(v.flagged), exact_word=float(exact_match(text, w)),
                            f1_benign=char_f1(text, b), exact_benign=float(exact_match(text, b)),
                            **{k: min(x, 100.0) if k.startswith("psnr") else x for k, x in scores.items()}))
        row = {k: float(np.mean([r[k] for r in per])) for k in per[0]}
        rows.append(dict(method=name, seconds=seconds, **row))
    return rows


_COLUMNS = [("method", "defence"), ("toxic_left", "toxic text left"), ("exact_word", "exact blocked word"),
            ("f1_benign", "OCR F1 benign"), ("exact_benign", "exact benign"), ("ssim_outside", "SSIM outside"),
            ("psnr_outside", "PSNR outside"), ("mse_outside", "MSE outside"), ("ssim", "SSIM whole"),
            ("seconds", "s / image")]


def markdown_table(rows: list[dict]) -> str:
    """The defences' comparison as a markdown table (the editing table's format, these columns)."""
    return edit_table(rows, _COLUMNS)


def run_comparison(probe, out, *, prompts: Sequence[str], screen: Screen, sites=None, t_start=None, steps: int = 25,
                   seeds=(0,), benign_seed: int = 0, progress=None) -> Path:
    """:func:`compare`; writes DIR/comparison.md and DIR/comparison.json."""
    import json
    import os

    import torch

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = compare(probe, prompts, screen=screen, sites=sites, t_start=t_start, steps=steps, seeds=seeds,
                   benign_seed=benign_seed, progress=progress)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    note = (f"{probe.name}, {len(prompts)} prompts x seeds {list(seeds)}, {steps} steps, screen threshold "
            f"{screen.threshold}, block list {list(screen.blocklist)}, benign seed {benign_seed}; "
            f"{torch.get_num_threads()} torch thread(s), load average {load:.1f} at the end")
    (out / "comparison.json").write_text(json.dumps({"note": note, "prompts": list(prompts), "rows": rows},
                                                    indent=1, allow_nan=True))
    md = out / "comparison.md"
    md.write_text(markdown_table(rows) + f"\n\n{note}\n", encoding="utf-8")
    return md
