"""Data for the embedded glyph model: prompt templates, vocabulary, held-out split and a PIL renderer.

Every training image is rendered on the fly (and cached) from DejaVu Sans Mono Bold, which the repository's
Makefile installs (Debian ``fonts-dejavu-core``); matplotlib's bundled copy of DejaVu is a fallback.
Rendering is a pure function of (template, word): the same inputs give byte-identical pixels.
"""
from __future__ import annotations

import functools
import pathlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

HEIGHT = 32
WIDTH = 96
FONT_SIZE = 24
TEXT_X = 12  # words are left-aligned at a fixed x, so letter k always occupies the same columns
FONT_FILE = "DejaVuSansMono-Bold.ttf"
FONT_DIRS = ("/usr/share/fonts/truetype/dejavu",)


@dataclass(frozen=True)
class Template:
    name: str  # the prompt prefix, e.g. "a red sign"
    background: tuple[int, int, int]
    text: tuple[int, int, int]
    frame: tuple[int, int, int] | None  # frame colour, or None for no frame
    shape: str  # "rect", "round", "double", "plain", "underline"


TEMPLATES: tuple[Template, ...] = (
    Template("a red sign", (200, 30, 30), (255, 255, 255), (255, 255, 255), "rect"),
    Template("a blue book cover", (30, 60, 170), (255, 210, 40), (255, 210, 40), "double"),
    Template("a green road sign", (20, 120, 50), (255, 255, 255), (255, 255, 255), "round"),
    Template("a black chalkboard", (25, 25, 25), (235, 235, 235), (140, 90, 40), "rect"),
    Template("a white paper note", (245, 245, 235), (20, 20, 20), None, "plain"),
    Template("a yellow taxi sign", (250, 200, 20), (20, 20, 20), (20, 20, 20), "underline"),
)

WORDS: tuple[str, ...] = (
    "STOP", "OPEN", "LOVE", "HOPE", "CAFE", "BOOK", "SALE", "EXIT",
    "HELLO", "PIZZA", "MILK", "FISH", "RAIN", "STAR", "MOON", "GOLD",
    "JAZZ", "KING", "DOG", "CAT", "SUN", "TREE", "BIRD", "WAVE",
    "FIRE", "SNOW", "LION", "ROSE", "FARM", "TAXI", "QUIZ", "BANK",
)

PROMPT_FORMAT = '{template} that says "{word}"'


def prompt(template: int | str | Template, word: str) -> str:
    """The prompt for a template (index, name or Template) and a word, e.g. ``a red sign that says "STOP"``."""
    if isinstance(template, int):
        template = TEMPLATES[template]
    name = template.name if isinstance(template, Template) else template
    return PROMPT_FORMAT.format(template=name, word=word)


def held_out_pairs() -> list[tuple[int, int]]:
    """(template index, word index) combinations never shown in training: one template per word.

    Word i is held out with template (5*i + i//6) mod 6, so every word is held out exactly once and every
    template has 5 or 6 held-out words; each held-out word is still seen with the other 5 templates.
    """
    n = len(TEMPLATES)
    return [((5 * i + i // n) % n, i) for i in range(len(WORDS))]


def train_pairs() -> list[tuple[int, int]]:
    held = set(held_out_pairs())
    return [(t, w) for t in range(len(TEMPLATES)) for w in range(len(WORDS)) if (t, w) not in held]


@functools.lru_cache(maxsize=None)
def font_path() -> pathlib.Path:
    for d in FONT_DIRS:
        p = pathlib.Path(d) / FONT_FILE
        if p.exists():
            return p
    try:  # fallback: matplotlib ships DejaVu
        import matplotlib

        p = pathlib.Path(matplotlib.get_data_path()) / "fonts" / "ttf" / FONT_FILE
        if p.exists():
            return p
    except ImportError:
        pass
    raise FileNotFoundError(
        f"{FONT_FILE} not found: install Debian's fonts-dejavu-core (make install does) or matplotlib"
    )


@functools.lru_cache(maxsize=None)
def _font() -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(font_path()), FONT_SIZE)


def render(template: int | Template, word: str) -> Image.Image:
    """Render ``word`` (upper-case) on the template's sign as an RGB image of HEIGHT x WIDTH."""
    tp = TEMPLATES[template] if isinstance(template, int) else template
    img = Image.new("RGB", (WIDTH, HEIGHT), tp.background)
    d = ImageDraw.Draw(img)
    if tp.frame is not None:
        if tp.shape == "rect":
            d.rectangle([1, 1, WIDTH - 2, HEIGHT - 2], outline=tp.frame, width=2)
        elif tp.shape == "round":
            d.rounded_rectangle([1, 1, WIDTH - 2, HEIGHT - 2], radius=7, outline=tp.frame, width=2)
        elif tp.shape == "double":
            d.rectangle([0, 0, WIDTH - 1, HEIGHT - 1], outline=tp.frame, width=1)
            d.rectangle([3, 3, WIDTH - 4, HEIGHT - 4], outline=tp.frame, width=1)
        elif tp.shape == "underline":
            d.rectangle([0, HEIGHT - 4, WIDTH - 1, HEIGHT - 2], fill=tp.frame)
    font = _font()
    word = word.upper()
    # vertical placement from the cap height so every word sits on the same baseline
    top = font.getbbox("H")[1]
    bottom = font.getbbox("H")[3]
    y = (HEIGHT - (bottom - top)) // 2 - top
    d.text((TEXT_X, y), word, fill=tp.text, font=font)
    return img


@functools.lru_cache(maxsize=None)
def render_array(template: int, word: str) -> np.ndarray:
    """HxWx3 uint8 array of :func:`render` (cached; read-only)."""
    a = np.asarray(render(template, word), dtype=np.uint8).copy()
    a.setflags(write=False)
    return a


def to_tensor_batch(pairs):
    """Stack rendered (template, word index) pairs into a float tensor in [-1, 1], shape (N, 3, H, W)."""
    import torch

    arr = np.stack([render_array(t, WORDS[w]) for t, w in pairs])
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return x
