"""One error family for everything diffprobe refuses.

Internal code raises these with a message that says what was wrong and what would be right.
Every public entry point lets them through unchanged, so a user catches ``DiffprobeError`` and
gets a message that teaches ("did you mean ...?", the valid range, the install command).
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "DiffprobeError",
    "SiteError",
    "InterventionError",
    "ModelLoadError",
    "UnsupportedArchitectureError",
    "MetricError",
    "SpecError",
    "ResultsError",
    "did_you_mean",
]


class DiffprobeError(Exception):
    """Base class of every error diffprobe raises on purpose.

    ``field`` names the spec field or argument the error is about (``"heads"``, ``"t_starts"``), when one
    is; the CLI turns it into the option the user typed (``--heads``, ``--t-start``)."""

    def __init__(self, *args, field: str | None = None):
        super().__init__(*args)
        self.field = field


class SiteError(DiffprobeError, KeyError):
    """A site name, index or selection that does not exist in the model's catalogue."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class InterventionError(DiffprobeError, ValueError):
    """An intervention that cannot be applied as asked (kind, heads, steps)."""


class ModelLoadError(DiffprobeError, OSError):
    """A model that cannot be found or loaded."""


class UnsupportedArchitectureError(DiffprobeError, TypeError):
    """A denoiser whose architecture has no adapter."""


class MetricError(DiffprobeError, ValueError):
    """An unknown metric, or one whose dependency (Tesseract, CLIP weights) is missing."""


class SpecError(DiffprobeError, ValueError):
    """An experiment spec that is invalid or does not match the model."""


class ResultsError(DiffprobeError, OSError):
    """A results store that is missing, corrupted, or written by a different spec."""


def did_you_mean(word: str, choices: Iterable[str], n: int = 3) -> str:
    """A ' Did you mean ...?' suffix for an error message, or '' when nothing is close."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=n, cutoff=0.5)
    if not close:
        return ""
    return " Did you mean " + " or ".join(repr(c) for c in close) + "?"
