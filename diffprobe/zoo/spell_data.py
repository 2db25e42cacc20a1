"""Data of the open-vocabulary models (`spell`, `glyph-mmdit`): templates, fonts, word lists, held-out splits and
a PIL renderer.

Everything is rendered locally and deterministically from the three DejaVu bold faces of Debian's
``fonts-dejavu-core``. A *sample* is (template, font, word, jitter); the jitter (template colours, text colour,
text position and size) is drawn from a numpy Generator, so a batch is a pure function of (seed, step).

Splits
- words: ``spell_words.txt`` = ``wordfreq.top_n_list('en', 20000)``, alphabetic ASCII, 1-8 letters, upper-cased, deduplicated.
  A word is HELD OUT when ``crc32(word) % 20 == 7`` (~5%); held-out words are never rendered for training,
  neither as list words nor as random letter strings. ``EVAL_HELDOUT`` / ``EVAL_TRAIN`` are fixed lists of
  frequent 3-8 letter words used by the probe and the evaluation.
- random strings: a quarter of the training words are random A-Z strings of 1-8 letters (not held-out words),
  so that every letter is seen at every position, not only in frequent English spellings.
- template x font: the combinations in ``HELD_OUT_COMBOS`` are never rendered for training.

Legibility for diffprobe's OCR (``diffprobe.metrics.ocr``: 8x upscale, crop 4% of each side, Otsu): no frame
lines above or below the text (the vertical crop is only ~1.3 source pixels at 32 px height); decorations are
side bars inside the outer 4 columns (cropped away) or low-contrast bands in a shade of the background.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
import re
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

HEIGHT = 32
WIDTH = 128
MAX_LETTERS = 8
FONT_DIR = os.environ.get("DIFFPROBE_FONT_DIR", "/usr/share/fonts/truetype/dejavu")  # Debian fonts-dejavu-core
FONTS = {  # name used in prompts -> file
    "sans": "DejaVuSans-Bold.ttf",
    "serif": "DejaVuSerif-Bold.ttf",
    "mono": "DejaVuSansMono-Bold.ttf",
}
FONT_NAMES = tuple(FONTS)
BASE_SIZE = 20  # px; cap height ~15 px at 32 px image height
TEXT_X = 8  # words are LEFT-aligned near x=8 (+-2 px jitter): letter k sits at roughly the same columns
MARGIN_R = 6  # the word is shrunk until it ends before WIDTH - MARGIN_R


@dataclass(frozen=True)
class Template:
    name: str  # prompt prefix, e.g. "a red sign"
    background: tuple[int, int, int]
    text: tuple[int, int, int]
    deco: str  # "plain", "bars", "spine", "band", "glow"
    deco_colour: tuple[int, int, int] | None = None


TEMPLATES: tuple[Template, ...] = (
    Template("a red sign", (200, 30, 30), (255, 255, 255), "bars", (255, 255, 255)),
    Template("a blue book cover", (30, 60, 170), (255, 210, 40), "spine", (15, 35, 110)),
    Template("a green road sign", (20, 120, 50), (255, 255, 255), "band", (15, 95, 40)),
    Template("a black chalkboard", (30, 30, 30), (235, 235, 235), "bars", (140, 90, 40)),
    Template("a white paper note", (245, 245, 235), (20, 20, 20), "plain"),
    Template("a yellow taxi sign", (250, 200, 20), (20, 20, 20), "band", (215, 170, 15)),
    Template("a pink neon sign", (25, 10, 35), (255, 90, 210), "glow", (255, 90, 210)),
    Template("a navy shirt", (25, 35, 80), (255, 255, 255), "plain"),
    Template("an orange label", (245, 140, 30), (50, 25, 5), "spine", (200, 105, 15)),
    Template("a purple banner", (110, 40, 150), (255, 255, 255), "band", (85, 25, 120)),
    Template("a brown wooden sign", (130, 85, 45), (250, 230, 180), "bars", (95, 60, 30)),
    Template("a teal screen", (0, 120, 125), (200, 255, 240), "plain"),
)
TEMPLATE_NAMES = tuple(t.name for t in TEMPLATES)

# template x font combinations never rendered for training (template index, font name)
HELD_OUT_COMBOS = frozenset({(6, "serif"), (1, "mono"), (7, "sans"), (8, "serif")})

PROMPT_FORMAT = '{template}{font} that says "{word}"'
FONT_PHRASE = " in {font} letters"

COLOUR_JITTER = 18  # +- per channel, background and text independently
SIZE_JITTER = 1  # +- px
X_JITTER = 2
Y_JITTER = 2


def prompt(template: int | str, word: str, font: str | None = None) -> str:
    """``a red sign that says "STOP"``, or with a font ``a red sign in serif letters that says "STOP"``."""
    name = TEMPLATES[template].name if isinstance(template, int) else template
    return PROMPT_FORMAT.format(template=name, font=FONT_PHRASE.format(font=font) if font else "", word=word)


# ----------------------------------------------------------------------------------------------------- words
def check_word_prompt(text: str, name: str) -> str | None:
    """What is wrong with the prompt ``text`` for the spelling model ``name`` (None when nothing): the quoted word
    must be 1-8 letters A-Z (lower case is fine); its tokenizer would silently drop anything else."""
    for word in re.findall(r'"([^"]*)"', text):
        bad = sorted({c for c in word.upper() if not ("A" <= c <= "Z")})
        if bad or not 1 <= len(word) <= MAX_LETTERS:
            why = f"it cannot write {''.join(bad)!r}" if bad else f"{len(word)} letters"
            return (f'{text!r}: {name} writes words of 1-{MAX_LETTERS} letters A-Z in quotes; '
                    f'"{word}" is not one ({why}). Try e.g. {prompt(0, "HELLO")!r}.')
    return None


def is_held_out_word(word: str) -> bool:
    return zlib.crc32(word.upper().encode()) % 20 == 7


WORDS_FILE = pathlib.Path(__file__).resolve().parent / "spell_words.txt"


@functools.lru_cache(maxsize=None)
def all_words() -> tuple[str, ...]:
    """The word list, shipped as ``spell_words.txt`` so the splits never drift with wordfreq's data (and training
    needs no wordfreq): see :func:`build_word_list`."""
    return tuple(WORDS_FILE.read_text().split())


def build_word_list(n: int = 20000) -> tuple[str, ...]:
    """How ``spell_words.txt`` was made (wordfreq 3.1): the top ``n`` English words, ASCII letters, 1-8 long."""
    import wordfreq

    seen: dict[str, None] = {}
    for w in wordfreq.top_n_list("en", n):
        if w.isascii() and w.isalpha() and 1 <= len(w) <= MAX_LETTERS:
            seen.setdefault(w.upper(), None)
    return tuple(seen)


@functools.lru_cache(maxsize=None)
def train_words(max_letters: int = MAX_LETTERS) -> tuple[str, ...]:
    return tuple(w for w in all_words() if not is_held_out_word(w) and len(w) <= max_letters)


@functools.lru_cache(maxsize=None)
def held_out_words() -> tuple[str, ...]:
    return tuple(w for w in all_words() if is_held_out_word(w))


def _eval_list(words, k: int | None, max_letters):
    """The first ``k`` (``None``: all) of ``words`` that have 3 to ``max_letters`` letters."""
    ws = [w for w in words if 3 <= len(w) <= max_letters]
    return tuple(ws[:k])


@functools.lru_cache(maxsize=None)
def eval_heldout(max_letters: int = MAX_LETTERS) -> tuple[str, ...]:
    """64 frequent held-out words of 3-8 letters (never trained); ``max_letters`` < 8: of 3 to that many letters
    (a curriculum stage's gate)."""
    return _eval_list(held_out_words(), 64, max_letters)


@functools.lru_cache(maxsize=None)
def eval_train(max_letters: int = MAX_LETTERS) -> tuple[str, ...]:
    """64 training words of 3-8 letters, spread over the frequency list (every 40th); ``max_letters`` < 8: 64 of
    3 to that many letters, spread likewise."""
    if max_letters == MAX_LETTERS:
        return _eval_list(train_words()[::40], 64, max_letters)
    words = _eval_list(train_words(max_letters), None, max_letters)
    return words[::max(1, len(words) // 64)][:64]


def random_string(rng: np.random.Generator, max_letters: int = MAX_LETTERS) -> str:
    while True:
        n = int(rng.integers(1, max_letters + 1))
        s = "".join(chr(65 + int(c)) for c in rng.integers(0, 26, size=n))
        if s not in _held_set():
            return s


@functools.lru_cache(maxsize=None)
def _held_set() -> frozenset:
    return frozenset(held_out_words())


# ---------------------------------------------------------------------------------------------- rendering
@dataclass(frozen=True)
class Sample:
    template: int
    font: str
    word: str
    bg: tuple[int, int, int]
    fg: tuple[int, int, int]
    deco: tuple[int, int, int] | None
    size: int
    dx: int
    dy: int


@functools.lru_cache(maxsize=None)
def _font(name: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(f"{FONT_DIR}/{FONTS[name]}", size)


def canonical(template: int, word: str, font: str = "mono") -> Sample:
    tp = TEMPLATES[template]
    return Sample(template, font, word.upper(), tp.background, tp.text, tp.deco_colour, BASE_SIZE, 0, 0)


def _jit(c, rng, a):
    return tuple(int(np.clip(v + rng.integers(-a, a + 1), 0, 255)) for v in c)


def jittered(template: int, word: str, font: str, rng: np.random.Generator) -> Sample:
    tp = TEMPLATES[template]
    bg = _jit(tp.background, rng, COLOUR_JITTER)
    deco = None
    if tp.deco_colour is not None:  # decoration keeps its offset from the background
        deco = tuple(int(np.clip(d + b - b0, 0, 255)) for d, b, b0 in zip(tp.deco_colour, bg, tp.background))
    return Sample(
        template, font, word.upper(), bg, _jit(tp.text, rng, COLOUR_JITTER), deco,
        BASE_SIZE + int(rng.integers(-SIZE_JITTER, SIZE_JITTER + 1)),
        int(rng.integers(-X_JITTER, X_JITTER + 1)), int(rng.integers(-Y_JITTER, Y_JITTER + 1)),
    )


def _layout(s: Sample) -> tuple[str, ImageFont.FreeTypeFont, int, int]:
    """(word, font, x, y) of the text of ``s``: shrunk until it ends before ``WIDTH - MARGIN_R``, on a common
    baseline from the cap height."""
    word = s.word.upper()
    size = s.size
    x0 = TEXT_X + s.dx
    while size > 8:
        font = _font(s.font, size)
        if x0 + font.getlength(word) <= WIDTH - MARGIN_R:
            break
        size -= 1
    font = _font(s.font, size)
    top, bottom = font.getbbox("H")[1], font.getbbox("H")[3]
    y = (HEIGHT - (bottom - top)) // 2 - top + s.dy
    return word, font, x0, y


def text_box(s: Sample, pad: int = 1) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) pixel box, exclusive right/bottom, clipped to the image, that holds every pixel
    the text of ``s`` draws (its neon halo aside), grown by ``pad``: where a training loss can weight the text."""
    word, font, x0, y = _layout(s)
    left, top, right, bottom = ImageDraw.Draw(Image.new("L", (1, 1))).textbbox((x0, y), word, font=font)
    return (max(0, left - pad), max(0, top - pad), min(WIDTH, right + pad), min(HEIGHT, bottom + pad))


def render(s: Sample) -> Image.Image:
    tp = TEMPLATES[s.template]
    img = Image.new("RGB", (WIDTH, HEIGHT), s.bg)
    d = ImageDraw.Draw(img)
    if tp.deco == "bars":  # vertical bars in the outer 3 columns (inside OCR's side crop)
        d.rectangle([0, 0, 2, HEIGHT - 1], fill=s.deco)
        d.rectangle([WIDTH - 3, 0, WIDTH - 1, HEIGHT - 1], fill=s.deco)
    elif tp.deco == "spine":  # a darker spine on the left, 4 columns
        d.rectangle([0, 0, 3, HEIGHT - 1], fill=s.deco)
    elif tp.deco == "band":  # low-contrast bands (a shade of the background) top and bottom
        d.rectangle([0, 0, WIDTH - 1, 2], fill=s.deco)
        d.rectangle([0, HEIGHT - 3, WIDTH - 1, HEIGHT - 1], fill=s.deco)
    word, font, x0, y = _layout(s)
    if tp.deco == "glow":  # neon: a soft halo of the text colour, then the text
        halo = Image.new("L", (WIDTH, HEIGHT), 0)
        ImageDraw.Draw(halo).text((x0, y), word, fill=110, font=font)
        halo = halo.filter(ImageFilter.GaussianBlur(2))
        img = Image.composite(Image.new("RGB", img.size, s.fg), img, halo)
        d = ImageDraw.Draw(img)
    d.text((x0, y), word, fill=s.fg, font=font)
    return img


def to_array(images) -> np.ndarray:
    return np.stack([np.asarray(im, dtype=np.uint8) for im in images])


def to_tensor(images):
    """float tensor in [-1, 1], shape (N, 3, H, W)."""
    import torch

    return torch.from_numpy(to_array(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def train_combos(fonts: tuple[str, ...] = FONT_NAMES) -> list[tuple[int, str]]:
    unknown = set(fonts) - set(FONT_NAMES)
    if unknown or not fonts:
        from diffprobe.errors import SpecError

        raise SpecError(f"fonts {sorted(unknown) or '()'}: choose among {', '.join(FONT_NAMES)}")
    return [(t, f) for t in range(len(TEMPLATES)) for f in FONT_NAMES if f in fonts and (t, f) not in HELD_OUT_COMBOS]


def train_combos_of(fonts: tuple[str, ...] = FONT_NAMES, templates: tuple[int, ...] | None = None):
    """:func:`train_combos` narrowed to ``templates`` (indices; None: all); a SpecError when none is left."""
    from diffprobe.errors import SpecError

    combos = train_combos(fonts)
    if templates is None:
        return combos
    bad = [t for t in templates if not 0 <= t < len(TEMPLATES)]
    if bad or not templates:
        raise SpecError(f"templates {bad or '()'}: choose indices 0 to {len(TEMPLATES) - 1} ({', '.join(TEMPLATE_NAMES)})")
    combos = [(t, f) for t, f in combos if t in templates]
    if not combos:
        raise SpecError(f"templates {list(templates)} in {', '.join(fonts)}: every such combination is held out "
                        f"({sorted(HELD_OUT_COMBOS)}); add a template or a face")
    return combos


def sample_batch(seed: int, step: int, n: int, random_frac: float = 0.25, font_in_prompt: float = 0.5,
                 fonts: tuple[str, ...] = FONT_NAMES, max_letters: int = MAX_LETTERS,
                 templates: tuple[int, ...] | None = None, jitter: bool | float = True):
    """(images, prompts, samples) of training batch ``step``: a pure function of its arguments. ``fonts``,
    ``max_letters`` and ``templates`` narrow the faces, the word lengths and the templates, and ``jitter=False``
    draws every sample in its template's own colours, size and place, for a curriculum (mono alone puts letter k
    in fixed columns; with one-letter words on one unjittered template, the letter is all that varies). A
    ``jitter`` between 0 and 1 jitters that share of the samples (a ramp between the two); ``True`` and ``False``
    (1 and 0) draw the same batches as before the ramp existed."""
    from diffprobe.errors import SpecError

    if not 1 <= max_letters <= MAX_LETTERS:
        raise SpecError(f"max_letters={max_letters}: choose 1 to {MAX_LETTERS}")
    if not 0 <= float(jitter) <= 1:
        raise SpecError(f"jitter={jitter}: the share of jittered samples, 0 to 1 (True = 1, False = 0)")
    rng = np.random.default_rng([seed, step, 7919])
    words, combos = train_words(max_letters), train_combos_of(tuple(fonts), templates)
    samples, prompts = [], []
    for _ in range(n):
        t, f = combos[int(rng.integers(len(combos)))]
        w = random_string(rng, max_letters) if rng.random() < random_frac else words[int(rng.integers(len(words)))]
        shaken = jitter >= 1 or (jitter > 0 and rng.random() < jitter)  # no draw at 0 or 1: same batches as before
        s = jittered(t, w, f, rng) if shaken else canonical(t, w, f)
        samples.append(s)
        prompts.append(prompt(t, w, f if rng.random() < font_in_prompt else None))
    return [render(s) for s in samples], prompts, samples


def replace(s: Sample, **kw) -> Sample:
    return dataclasses.replace(s, **kw)
