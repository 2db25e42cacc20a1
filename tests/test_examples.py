"""The scripts in examples/ run as documented."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize("script", ["quickstart.py", "sweep_tiny.py"])
def test_example_runs(script, tmp_path):
    args = [sys.executable, str(EXAMPLES / script)] + ([str(tmp_path)] if script == "sweep_tiny.py" else [])
    done = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    if script == "sweep_tiny.py":
        assert (tmp_path / "sweep" / "report.html").exists()
        assert "best sites" in done.stdout
    else:
        assert "pixels changed by the edit" in done.stdout


@pytest.mark.parametrize("model, kind, n_sites, words", [
    ("glyph-mmdit", "joint", 8, ["--max-letters", "3", "--font", "mono"]),
    ("spell", "cross", 12, ["--bench", "simple"])])
def test_open_vocab_localization_runs_on_both_spelling_models_and_ranks_the_count_by_moved_target(
        tmp_path, model, kind, n_sites, words):
    """The SD3 study of docs/science.md (Patch per joint block) on held-out 3-letter words in mono and the UNet one
    on spell (Inject per cross-attention layer) on the paper's SimpleBench pair, one pair, no t_s sweep (about a
    minute each on one thread)."""
    import xarray as xr

    summary = tmp_path / "summary.md"
    args = [sys.executable, str(EXAMPLES / "open_vocab_localization.py"), "--pairs", "1", "--ts-sites", "0",
            "--t-starts", "", "--rank-by", "moved", "--out", str(tmp_path / "out"), "--summary", str(summary),
            "--model", model, *words]
    done = subprocess.run(args, capture_output=True, text=True, timeout=900, cwd=EXAMPLES,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    text = summary.read_text()
    assert "### Layer sweep" in text and text.count(f"| {kind}:") >= n_sites
    assert ("SimpleBench pairs" in text) == ("simple" in words)
    assert (tmp_path / "out" / "report.html").exists()
    with xr.open_dataset(tmp_path / "out" / "layers" / "results.nc", engine="h5netcdf") as ds:
        moved = ds.moved_target.isel(pair=0, t_start=0, seed=0)
        assert moved.ndim == 1  # one value a site
        best = str(ds.site_label.values[int(moved.values.argmax())])
    with xr.open_dataset(tmp_path / "out" / "counts-moved" / "results.nc", engine="h5netcdf") as dc:
        assert str(dc.sites_used.values[0]) == best  # the layer count starts from the block that moved most


def test_open_vocab_localization_refuses_a_face_or_length_for_the_simple_bench_before_loading(tmp_path):
    args = [sys.executable, str(EXAMPLES / "open_vocab_localization.py"), "--model", "spell", "--bench", "simple",
            "--font", "mono", "--out", str(tmp_path / "out")]
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=EXAMPLES)
    assert done.returncode == 2 and "drop --max-letters and --font" in done.stderr
    assert not (tmp_path / "out").exists()  # nothing generated
