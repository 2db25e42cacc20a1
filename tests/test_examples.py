"""The scripts in examples/ run as documented."""
from __future__ import annotations

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
