"""Prompt sets: source/target prompt pairs that differ only in the text to be drawn.

A localization experiment generates an image from a *source* prompt, then swaps in the
activations of a *target* prompt at chosen sites and asks whether the image now shows the target
text. The two prompts must be identical except for the text, so every pair comes from one
template with a ``{text}`` slot filled with two different words.

Two built-in sets follow the paper:

- ``simple_bench``: ``A sign that says "<word>".`` with words from frequency buckets of English
  (the ``wordfreq`` package's ranked list; alphabetic ASCII words of 3-8 letters). A bucket is a
  half-open rank range, so ``(1000, 5000)`` is the 1,000th to 5,000th most frequent words; the
  paper used four buckets of 100 pairs. Rare words are harder to draw, so the buckets let a
  result be reported per frequency band. Pairs are grouped by bucket, in bucket order.
- ``creative_bench``: our own scene templates (``bench_data/creative_templates.txt``, e.g.
  ``Little panda holding a sign that says "{text}"``) filled with common words.

In every set the target word is another word of the same list, never the source word. The sets
are deterministic for a ``seed``; pair ``i`` gets the generation seed ``seed + i`` (change it with
``dataclasses.replace``). ``read_jsonl``/``write_jsonl`` let users bring their own pairs: one
JSON object per line with the four ``PromptPair`` text fields and an optional ``seed``.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from diffprobe import checks
from diffprobe.errors import SpecError, did_you_mean

__all__ = [
    "PromptPair",
    "SLOT",
    "SIMPLE_TEMPLATE",
    "DEFAULT_BUCKETS",
    "frequency_words",
    "creative_templates",
    "template_pairs",
    "simple_bench",
    "creative_bench",
    "read_jsonl",
    "write_jsonl",
]

SLOT = "{text}"
SIMPLE_TEMPLATE = 'A sign that says "{text}".'
DEFAULT_BUCKETS: tuple[tuple[int, int], ...] = ((0, 1000), (1000, 5000), (5000, 20000), (20000, 50000))
CREATIVE_WORD_RANKS = (0, 5000)  # creative_bench draws common words: the scene, not the word, is the challenge
WORD_LENGTHS = (3, 8)


@dataclass(frozen=True)
class PromptPair:
    """A source and a target prompt that differ only in the text the image should show."""

    source_prompt: str
    target_prompt: str
    source_text: str
    target_text: str
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("source_prompt", "target_prompt", "source_text", "target_text"):
            checks.text(getattr(self, name), f"PromptPair.{name}", SpecError, allow_empty=name.endswith("text"))
        object.__setattr__(self, "seed", checks.seed(self.seed, "PromptPair.seed", SpecError))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PromptPair:
        """Build from a mapping with the four text fields and an optional ``seed``; strict on keys."""
        if not isinstance(data, dict):
            raise SpecError(f"a prompt pair must be a JSON object; got {type(data).__name__}.")
        fields = [f.name for f in dataclasses.fields(cls)]
        required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING]
        for key in data:
            if key not in fields:
                raise SpecError(f"unknown key {key!r}.{did_you_mean(key, fields)} Valid keys: {', '.join(fields)}.")
        missing = [key for key in required if key not in data]
        if missing:
            raise SpecError(f"missing key {missing[0]!r}; a prompt pair needs {', '.join(required)} (seed optional).")
        return cls(**data)


def frequency_words(start: int, stop: int, lang: str = "en") -> list[str]:
    """Alphabetic ASCII words of 3-8 letters ranked ``[start, stop)`` by frequency in ``wordfreq``."""
    if not (isinstance(start, int) and isinstance(stop, int) and 0 <= start < stop):
        raise SpecError(
            f"a frequency bucket is a rank range (start, stop) with 0 <= start < stop; got ({start!r}, {stop!r})."
        )
    lo, hi = WORD_LENGTHS
    return [w for w in _top_words(lang, stop)[start:stop] if w.isascii() and w.isalpha() and lo <= len(w) <= hi]


def creative_templates() -> list[str]:
    """The packaged creative templates (``{text}`` marks the slot)."""
    raw = resources.files("diffprobe").joinpath("bench_data/creative_templates.txt").read_text(encoding="utf-8")
    return [line.strip() for line in raw.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def template_pairs(templates: Sequence[str], words: Sequence[str], n: int, seed: int = 0) -> list[PromptPair]:
    """``n`` pairs, each one template filled with a source word and a different target word.

    Templates are used in a shuffled cycle; source words are drawn without replacement until the
    list is used up, then reshuffled; each target word is another word of the same list.
    """
    pairs = _fill(templates, words, n, np.random.default_rng(_check_seed(seed)))
    return _with_seeds(pairs, seed)


def simple_bench(
    n: int, seed: int = 0, buckets: Sequence[tuple[int, int]] = DEFAULT_BUCKETS, lang: str = "en"
) -> list[PromptPair]:
    """SimpleBench-style pairs ``A sign that says "<word>".``, ``n`` split evenly over the buckets."""
    _check_n(n)
    seed = _check_seed(seed)
    buckets = [tuple(b) for b in buckets]
    if not buckets:
        raise SpecError("simple_bench needs at least one frequency bucket, e.g. (0, 1000).")
    k = len(buckets)
    pairs: list[PromptPair] = []
    for i, (start, stop) in enumerate(buckets):
        count = n // k + (1 if i < n % k else 0)
        if count:
            words = frequency_words(start, stop, lang)
            pairs += _fill([SIMPLE_TEMPLATE], words, count, np.random.default_rng([seed, i]))
    return _with_seeds(pairs, seed)


def creative_bench(n: int, seed: int = 0, words: Sequence[str] | None = None) -> list[PromptPair]:
    """CreativeBench-style pairs from the packaged templates, with common words by default."""
    words = frequency_words(*CREATIVE_WORD_RANKS) if words is None else words
    return template_pairs(creative_templates(), words, n, seed)


def read_jsonl(path: str | os.PathLike) -> list[PromptPair]:
    """Prompt pairs from a JSON-lines file (blank lines skipped); ``SpecError`` names the bad line."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"prompt file {str(path)!r} does not exist.")
    pairs = []
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as err:
        line = path.read_bytes()[: err.start].count(b"\n") + 1
        raise SpecError(f"{path}:{line}: not UTF-8 text (byte {err.object[err.start]:#04x}); save the file as UTF-8.") from None
    except OSError as err:
        raise SpecError(f"cannot read the prompt file {path}: {err.strerror or err}.") from None
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            pairs.append(PromptPair.from_dict(json.loads(line)))
        except json.JSONDecodeError as err:
            raise SpecError(f"{path}:{lineno}: not valid JSON ({err.msg} at column {err.colno}).") from None
        except SpecError as err:
            raise SpecError(f"{path}:{lineno}: {err}") from None
    if not pairs:
        raise SpecError(f"prompt file {str(path)!r} holds no prompt pairs.")
    return pairs


def write_jsonl(pairs: Iterable[PromptPair], path: str | os.PathLike) -> None:
    """Write prompt pairs as JSON lines (UTF-8, one object per pair) that ``read_jsonl`` reads back."""
    pairs = list(pairs)
    if not pairs:
        raise SpecError("no prompt pairs to write; the prompt set is empty.")
    for i, pair in enumerate(pairs):
        if not isinstance(pair, PromptPair):
            raise SpecError(f"write_jsonl takes PromptPair objects; item {i} is {type(pair).__name__}.")
    text = "".join(json.dumps(p.to_dict(), ensure_ascii=False) + "\n" for p in pairs)
    Path(path).write_text(text, encoding="utf-8")


@functools.lru_cache(maxsize=8)
def _top_words(lang: str, n: int) -> tuple[str, ...]:
    from wordfreq import top_n_list

    return tuple(top_n_list(lang, n))


def _fill(templates: Sequence[str], words: Sequence[str], n: int, rng: np.random.Generator) -> list[PromptPair]:
    _check_n(n)
    if isinstance(templates, str) or isinstance(words, str):
        raise SpecError("templates and words must be sequences of strings, not a single string.")
    templates = list(templates)
    if not templates:
        raise SpecError("no templates given; the prompt set would be empty.")
    for t in templates:
        if not isinstance(t, str) or t.count(SLOT) != 1:
            raise SpecError(f"each template needs exactly one {SLOT} slot; got {t!r}.")
    words = list(dict.fromkeys(w for w in words if isinstance(w, str) and w.strip()))
    if len(words) < 2:
        raise SpecError(f"need at least two distinct words to make source/target pairs; got {len(words)}.")
    order = _cycle(rng, len(templates), n)
    source = _cycle(rng, len(words), n)
    target = (source + rng.integers(1, len(words), size=n)) % len(words)  # never the source word
    return [
        PromptPair(
            source_prompt=templates[t].replace(SLOT, words[s]),
            target_prompt=templates[t].replace(SLOT, words[g]),
            source_text=words[s],
            target_text=words[g],
        )
        for t, s, g in zip(order, source, target)
    ]


def _cycle(rng: np.random.Generator, size: int, n: int) -> np.ndarray:
    """``n`` indices into ``range(size)``: shuffled permutations, concatenated."""
    reps = -(-n // size)
    return np.concatenate([rng.permutation(size) for _ in range(reps)])[:n]


def _with_seeds(pairs: list[PromptPair], seed: int) -> list[PromptPair]:
    return [dataclasses.replace(p, seed=seed + i) for i, p in enumerate(pairs)]


MAX_PAIRS = 100_000


def _check_n(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= MAX_PAIRS:
        raise SpecError(f"a prompt set needs 1 <= n <= {MAX_PAIRS:,} pairs; got n={n!r}.", field="n")


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise SpecError(f"seed must be a non-negative integer; got {seed!r}.")
    return int(seed)
