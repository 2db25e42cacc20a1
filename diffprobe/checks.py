"""Input checks shared by every public constructor: one wording for one mistake.

Each check returns the value it accepted (normalised: ``numpy`` integers become ``int``) or raises the
:class:`~diffprobe.errors.DiffprobeError` subclass its caller names, with a message that says what was
wrong and what would be right. They run where a request enters (spec, intervention, variant, pair),
so nothing reaches a pipeline call unchecked.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence

from .errors import DiffprobeError

__all__ = ["text", "integer", "seed", "number", "unique", "int_list", "SEED_RANGE"]

#: torch generators take seeds in [0, 2**64); diffprobe stores them as int64, so [0, 2**63).
SEED_RANGE = (0, 2**63)


def _kind(value) -> str:
    return type(value).__name__


def text(value, what: str, error: type[DiffprobeError], *, allow_empty: bool = True) -> str:
    """A prompt-like string: a ``str``, encodable as UTF-8 (no lone surrogates), without NUL characters."""
    if not isinstance(value, str):
        raise error(f"{what} must be a string; got {_kind(value)} {value!r}.")
    if "\x00" in value:
        raise error(f"{what} contains a NUL character (\\x00) at position {value.index(chr(0))}; remove it.")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise error(
            f"{what} contains a lone surrogate {value[exc.start]!r} at position {exc.start}, which is not text "
            "(often a broken \\ud8xx escape in JSON); fix the string."
        ) from None
    if not allow_empty and not value.strip():
        raise error(f"{what} must be a non-empty string; got {value!r}.")
    return value


def integer(value, what: str, error: type[DiffprobeError], *, lo: int | None = None, hi: int | None = None) -> int:
    """An integer (not a bool, not a float such as 3.5 or 3.0) in ``[lo, hi)``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise error(f"{what} must be an integer; got {_kind(value)} {value!r}.")
    value = int(value)
    if (lo is not None and value < lo) or (hi is not None and value >= hi):
        named = {0: "a non-negative integer", 1: "a positive integer"}
        bounds = (named.get(lo, f"at least {lo}") if hi is None
                  else f"in [{lo if lo is not None else '-inf'}, {hi})")
        raise error(f"{what}={value} is out of range: it must be {bounds}.")
    return value


def seed(value, what: str, error: type[DiffprobeError]) -> int:
    """A generator seed: an integer in [0, 2**63)."""
    lo, hi = SEED_RANGE
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise error(f"{what} must be an integer seed in [0, 2**63); got {_kind(value)} {value!r}.")
    if not lo <= int(value) < hi:
        raise error(f"{what}={int(value)} does not fit a 64-bit seed: use an integer in [0, 2**63).")
    return int(value)


def number(value, what: str, error: type[DiffprobeError], *, lo: float | None = None) -> float:
    """A finite real number (not a bool, not NaN or infinity), at least ``lo`` when given."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise error(f"{what} must be a number; got {_kind(value)} {value!r}.")
    value = float(value)
    if not math.isfinite(value):
        raise error(f"{what}={value} is not a finite number; pass a real value such as 1.0.")
    if lo is not None and value < lo:
        raise error(f"{what}={value} must be at least {lo}.")
    return value


def unique(values: Sequence, what: str, error: type[DiffprobeError]) -> None:
    """Refuse repeated entries: each would be computed twice and share one label."""
    seen, repeated = set(), []
    for v in values:
        if v in seen and v not in repeated:
            repeated.append(v)
        seen.add(v)
    if repeated:
        raise error(f"{what} lists {', '.join(map(repr, repeated))} more than once; give each value once.")


def int_list(values, what: str, error: type[DiffprobeError], *, lo: int | None = None,
             hi: int | None = None, allow_empty: bool = False) -> tuple[int, ...]:
    """A sequence of distinct integers (a single int or a string is refused: say ``(0,)``)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise error(f"{what} must be a list of integers such as [0, 1]; got {_kind(values)} {values!r}.")
    out = tuple(integer(v, f"{what} entry", error, lo=lo, hi=hi) for v in values)
    if not out and not allow_empty:
        raise error(f"{what} is empty; give at least one value.")
    unique(out, what, error)
    return out
