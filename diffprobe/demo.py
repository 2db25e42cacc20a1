"""``make demo``: the paper's localization study, end to end, on the embedded glyph model.

It is :func:`diffprobe.localize` with small settings: 8 sweep pairs and 4 held-out pairs, 25 steps,
every cross-attention site alone, the t_s sweep on the top 3, the layer-count trade-off, and the
confirmation on the held-out pairs; one report with the finding at the top and ``localized.json``
(see docs/localize.md). When the embedded model's weights are missing, the same study runs on a tiny
random SD1.5 so every stage is exercised, and the output says what is missing.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from rich.console import Console

__all__ = ["run_demo", "DEMO"]

#: the demo's study settings (docs/localize.md): small enough for ~10 minutes on 2 CPU cores
DEMO = {"held_out": 4, "top": 3, "steps": 25, "batch_size": 16}


def _probe_and_pairs(n: int, held_out: int, console: Console):
    from .bench import simple_bench
    from .display import quiet
    from .errors import ModelLoadError
    from .glyph_bench import glyph_pairs
    from .loading import load

    try:
        with quiet():
            return load("glyph"), glyph_pairs(n + held_out, seed=0), "glyph", DEMO["steps"]
    except ModelLoadError as exc:
        console.print(f"[yellow]missing:[/] {exc}\nRunning the same study on a tiny random SD1.5 instead "
                      "(its numbers mean nothing; it shows the pipeline works).")
        from .zoo.tiny import save_tiny

        folder = save_tiny("sd15", Path(tempfile.mkdtemp()) / "tiny-sd15")
        with quiet():
            return load(str(folder)), simple_bench(n + held_out, seed=0), str(folder), 4


def run_demo(out: Path, *, n: int = 8, quiet: bool = False) -> Path:
    """Run (or resume) the demo study into ``out``; returns the report's path."""
    from .localization import localize

    console = Console(stderr=True, quiet=quiet)
    probe, pairs, model, steps = _probe_and_pairs(n, DEMO["held_out"], console)
    console.print(f"[bold]localize[/] on {model}: {len(probe.sites.of_kind('cross'))} cross sites, {n} sweep pairs "
                  f"+ {DEMO['held_out']} held out, {steps} steps -> {out}", highlight=False)
    result = localize(probe, pairs, out, progress=not quiet, **{**DEMO, "steps": steps},
                      title=f"diffprobe demo: which cross-attention layers write the text? ({model})")
    summary = "\n".join(result.summary) + f"\nreport: {result.report}\nsites:  {result.file}"
    Console().print(summary, markup=False, highlight=False)  # --quiet silences progress, not the finding
    return result.report
