"""The diffprobe command line: layers, count, sweep (with resume), report; errors as one line."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from _browser import needs_chromium, visit
from typer.testing import CliRunner

from diffprobe.bench import PromptPair, write_jsonl
from diffprobe.cli import app
from diffprobe.zoo.tiny import save_tiny

runner = CliRunner()
XSS = "<script>alert(1)</script>"


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_help_lists_every_command_with_examples():
    out = invoke("--help").output
    for cmd in ("layers", "count", "sweep", "report", "demo", "metrics"):
        assert cmd in out
    assert "Example" in invoke("sweep", "--help").output
    assert "--t-start" in invoke("sweep", "--help").output
    bad = runner.invoke(app, ["sweep", "--threads", "0"])
    assert bad.exit_code == 2 and "positive number of CPU threads" in bad.output


def test_layers_json_has_the_catalogue_fields():
    result = invoke("layers", "sdxl-base-1.0:meta", "--kind", "cross", "--json")
    rows = json.loads(result.output)
    assert len(rows) == 70
    assert {"index", "kind", "name", "block", "heads", "head_dim", "kv_params"} <= set(rows[0])
    assert rows[55]["name"] == "up_blocks.0.attentions.2.transformer_blocks.1.attn2"


@pytest.mark.parametrize(
    "model, sites, n, params, fraction",
    [("sdxl-base-1.0:meta", "cross:55-57", 3, 15.7e6, 0.0061),
     ("if-i-xl:meta", "cross:17", 1, 8.9e6, 0.0021),
     ("sd3-medium:meta", "joint:10", 1, 4.7e6, 0.0023)],
)
def test_count_reproduces_table_1(model, sites, n, params, fraction):
    out = json.loads(invoke("count", model, "--sites", sites, "--json").output)
    assert len(out["sites"]) == n
    assert round(out["localized_params"] / 1e5) == round(params / 1e5)
    assert round(out["fraction"], 4) == fraction


def test_errors_are_one_line_with_the_fix():
    result = runner.invoke(app, ["count", "sdxl-base-1.0:meta", "--sites", "cros:55"])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert "Did you mean 'cross'" in result.output
    missing = runner.invoke(app, ["layers", "./no/such/model"])
    assert missing.exit_code == 2 and "does not exist" in missing.output


def test_verbose_shows_the_traceback():
    from diffprobe.errors import SiteError

    with pytest.raises(SiteError):
        runner.invoke(app, ["--verbose", "count", "sdxl-base-1.0:meta", "--sites", "cros:55"], catch_exceptions=False)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    model = save_tiny("sd15", root / "sd15")
    pairs = root / "pairs.jsonl"
    write_jsonl([PromptPair(f'A sign that says "{XSS}".', 'A sign that says "OPEN".', XSS, "OPEN"),
                 PromptPair('A sign that says "CAT".', 'A sign that says "DOG".', "CAT", "DOG")], pairs)
    out = root / "out"
    args = ["sweep", "--model", str(model), "--pairs", str(pairs), "--sites", "cross:0-2", "--steps", "2",
            "--t-start", "0,1", "--out", str(out), "--quiet"]
    first = invoke(*args)
    return {"out": out, "args": args, "first": first}


def test_sweep_writes_results_report_and_images(swept):
    out = swept["out"]
    assert swept["first"].exit_code == 0, swept["first"].output
    assert (out / "results.nc").exists() and (out / "report.html").exists()
    assert list((out / "images").glob("*.png"))
    assert "results:" in swept["first"].output and "top sites" in swept["first"].output


def test_rerunning_the_command_resumes(swept, monkeypatch):
    import diffprobe.probe

    def boom(*a, **k):
        raise AssertionError("a finished sweep must not run the model again")

    monkeypatch.setattr(diffprobe.probe.Probe, "run", boom)
    again = invoke(*swept["args"])
    assert again.exit_code == 0


def test_report_command_rebuilds_the_report(swept, tmp_path):
    target = tmp_path / "r.html"
    result = invoke("report", str(swept["out"]), "--out", str(target))
    assert result.exit_code == 0 and target.exists()
    bad = runner.invoke(app, ["report", str(tmp_path / "nothing")])
    assert bad.exit_code == 2 and "No results" in bad.output


@pytest.mark.browser
@needs_chromium
def test_sweep_report_passes_the_browser_check(swept):
    seen = visit(swept["out"] / "report.html")
    assert seen["errors"] == []
    assert all(u.startswith(("file:", "data:")) for u in seen["requests"])
    assert seen["dialogs"] == []
    assert seen["traces"] and all(n >= 1 for n in seen["traces"])
    assert XSS in seen["text"]  # the hostile prompt shows as text


def test_ctrl_c_stops_cleanly_and_keeps_finished_batches(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    model = save_tiny("sd15", tmp_path / "sd15")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "diffprobe.cli", "sweep", "--model", str(model), "--bench", "simple", "--n", "2",
           "--sites", "cross:0-3", "--steps", "2", "--batch-size", "2", "--metrics", "mse", "--out", str(out), "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and not list(out.glob("batches/cell-*.nc")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "resume" in err
    assert "Traceback" not in err
    kept = list(out.glob("batches/*.nc"))
    assert kept
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert (out / "results.nc").exists()


@pytest.mark.parametrize("delay", [0.2, 4.0])
def test_ctrl_c_during_start_up_is_one_line_and_exit_130(tmp_path, delay):
    """While diffprobe imports (0.2 s) or loads the model (4 s), Ctrl-C exits 130 with a sentence, no traceback."""
    import signal
    import subprocess
    import sys
    import time

    exe = Path(sys.executable).parent / "diffprobe"  # the console command, installed with the package
    assert exe.exists(), "the console command is installed by make test"
    proc = subprocess.Popen([str(exe), "sweep", "--bench", "glyph", "--n", "1", "--out", str(tmp_path / "o")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err
