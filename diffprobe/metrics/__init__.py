"""Scores for generated images: OCR text metrics, image alignment, CLIP-T, selectable by name.

See ``docs/metrics.md`` for the definitions (diffprobe's own and, side by side, the paper's ``paper_*``). ``compute`` is the entry point experiments use;
the per-sample functions are re-exported for notebooks.
"""
from diffprobe.metrics.clip import clip_score
from diffprobe.metrics.image import moved, mse, psnr, ssim
from diffprobe.metrics.ocr import ENGINES as OCR_ENGINES
from diffprobe.metrics.ocr import read_text, read_texts
from diffprobe.metrics.registry import (
    DEFAULT_METRICS, DERIVED, METRICS, compute, list_metrics, lower_is_better, unavailable, validate,
)
from diffprobe.metrics.text import (
    char_f1, char_precision_recall, exact_match, length_error, length_match, levenshtein, paper_accuracy,
    paper_levenshtein, paper_precision_recall, paper_set_f1, rendered_length, set_f1,
)

__all__ = [
    "read_text",
    "read_texts",
    "char_precision_recall",
    "char_f1",
    "set_f1",
    "paper_precision_recall",
    "paper_accuracy",
    "paper_levenshtein",
    "paper_set_f1",
    "OCR_ENGINES",
    "exact_match",
    "levenshtein",
    "rendered_length",
    "length_match",
    "length_error",
    "mse",
    "psnr",
    "ssim",
    "moved",
    "clip_score",
    "compute",
    "list_metrics",
    "validate",
    "lower_is_better",
    "unavailable",
    "METRICS",
    "DEFAULT_METRICS",
    "DERIVED",
]
