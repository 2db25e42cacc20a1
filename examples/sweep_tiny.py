"""A layer sweep, its dataset, the ds.dp reductions and the HTML report, on a tiny random SD3.

    python examples/sweep_tiny.py [OUT_DIR]

Numbers from random weights mean nothing; the same code runs a real study (see docs/experiments.md).
Run it twice: the second run resumes from the store and recomputes nothing.
"""
import sys
import tempfile
from pathlib import Path

import diffprobe as dp
from diffprobe.bench import simple_bench
from diffprobe.experiments import Experiment, run
from diffprobe.zoo.tiny import save_tiny

out = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp()) / "sweep"
model = save_tiny("sd3", out.parent / "tiny-sd3") if not (out.parent / "tiny-sd3").exists() else out.parent / "tiny-sd3"
probe = dp.load(str(model))

spec = Experiment(
    model=str(model), pairs=tuple(simple_bench(4, seed=0)), intervention="patch", sites="joint:all",
    t_starts=(0, 1), steps=3, batch_size=8,
)
print(spec.to_toml())
ds = run(spec, probe=probe, store=out, progress=lambda done, total: print(f"batch {done}/{total}"))
print(ds)
print("best sites by SSIM to the source image:", list(ds.dp.best_sites("ssim", k=2).site_label.values))
print(ds.dp.mean_ci("ocr_f1_target").to_dataframe().head())
print("report:", ds.dp.report(out / "report.html"))
