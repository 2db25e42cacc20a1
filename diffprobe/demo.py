"""``make demo``: the paper's localization study, end to end, on the embedded glyph model.

1. layer x t_s sweep: inject the target prompt into one cross-attention site at a time, from
   several start steps, for ``n`` source/target pairs;
2. layer-count trade-off: inject into the top 1, 2, 3, ... sites together (ranked by step 1);
3. one self-contained HTML report with both.
When the embedded model's weights are missing, the same pipeline runs on a tiny random SD1.5 so
every stage is exercised, and the output says what is missing.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from rich.console import Console

__all__ = ["run_demo"]


def _probe_and_pairs(n: int, console: Console):
    from .bench import simple_bench
    from .errors import ModelLoadError
    from .glyph_bench import glyph_pairs
    from .loading import load

    try:
        return load("glyph"), glyph_pairs(n, seed=0), "glyph", 25
    except ModelLoadError as exc:
        console.print(f"[yellow]missing:[/] {exc}\nRunning the same study on a tiny random SD1.5 instead "
                      "(its numbers mean nothing; it shows the pipeline works).")
        from .zoo.tiny import save_tiny

        folder = save_tiny("sd15", Path(tempfile.mkdtemp()) / "tiny-sd15")
        return load(str(folder)), simple_bench(n, seed=0), str(folder), 4


def run_demo(out: Path, *, n: int = 8, quiet: bool = False) -> Path:
    from .experiments import Experiment, count_follow_up, run
    from .report import write_report
    from .results import share_baselines

    console = Console(stderr=True, quiet=quiet)
    probe, pairs, model, steps = _probe_and_pairs(n, console)
    t_starts = (0, steps // 5, 2 * steps // 5)
    console.print(f"[bold]1/2[/] layer x t_s sweep on {model}: {len(probe.sites.of_kind('cross'))} cross sites, "
                  f"{len(pairs)} pairs, t_s in {t_starts}")
    spec = Experiment(model=model, pairs=tuple(pairs), sites="cross:all", t_starts=t_starts, steps=steps,
                      batch_size=16)
    ds = run(spec, probe=probe, store=out / "layers", progress=_printer(console, "layers"))
    count_spec = count_follow_up(spec, ds)
    console.print(f"[bold]2/2[/] layer-count trade-off: top {list(count_spec.counts)} of {list(count_spec.sites)}")
    share_baselines(out / "layers", out / "counts")  # same pairs, seeds and settings
    ds_count = run(count_spec, probe=probe, store=out / "counts", progress=_printer(console, "counts"))
    report = write_report(ds, out / "report.html", counts=ds_count,
                          title=f"diffprobe demo: which cross-attention layers write the text? ({model})")
    best = ds.dp.best_sites("ocr_f1_target", k=3)
    console.print(f"top sites: {', '.join(f'{l} ({v:.2f})' for l, v in zip(best.site_label.values, best.values))}")
    console.print(f"report: {report}")
    return report


def _printer(console: Console, what: str):
    def progress(done: int, total: int) -> None:
        console.print(f"  {what}: batch {done}/{total}", highlight=False)

    return progress
