"""diffprobe.localize and `diffprobe localize`: every stage runs, outputs round-trip, reruns resume, bad input is one line.

Tiny random pipelines (SD1.5: cross sites, inject; SD3: joint sites, patch; IF: added-KV cross sites) with
2 steps, 3 pairs (one held out) and cheap image metrics: the numbers mean nothing, the mechanics are the point.
"""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import diffprobe as dp
from diffprobe.bench import PromptPair, simple_bench, write_jsonl
from diffprobe.cli import app
from diffprobe.errors import DiffprobeError, ResultsError, SpecError
from diffprobe.localization import LOCALIZED_FILE, Localized, StudySettings, load_localized

CHEAP = dict(steps=2, t_starts=(0, 1), held_out=1, metrics=("mse", "ssim"), metric="ssim", batch_size=8)
XSS = "<script>alert(1)</script>"
runner = CliRunner()


def _pairs():
    return [PromptPair(f'A sign that says "{XSS}".', 'A sign that says "OPEN".', XSS, "OPEN"), *simple_bench(2, seed=3)]


@pytest.fixture(scope="module", params=["sd15", "sd3", "if"])
def study(request, probe_factory, tmp_path_factory):
    arch = request.param
    probe = probe_factory(arch)
    out = tmp_path_factory.mktemp(f"localize-{arch}")
    return {"arch": arch, "probe": probe, "out": out, "result": dp.localize(probe, _pairs(), out, progress=False, **CHEAP)}


def test_every_stage_ran_and_finished(study):
    result = study["result"]
    assert set(result.stages) == {"sites", "timesteps", "counts", "confirm"}
    for name, ds in result.stages.items():
        assert bool(ds["done"].all()), name
    n_text = sum(1 for s in study["probe"].sites if s.carries_text)
    assert result.stages["sites"].sizes["site"] == n_text
    assert result.stages["timesteps"].sizes["site"] == min(3, n_text)
    assert list(result.stages["timesteps"].t_start.values) == [0, 1]
    assert result.stages["confirm"].sizes["pair"] == 1  # the held-out pair only
    assert result.stages["confirm"].source_prompt.values[0] not in result.stages["sites"].source_prompt.values
    expected = "inject" if study["arch"] in ("sd15", "if") else "patch"
    assert result.localized.intervention["kind"] == expected
    assert 1 <= len(result.sites) <= n_text and result.localized.t_start in (0, 1)


def test_localized_json_round_trips(study):
    result = study["result"]
    file = study["out"] / LOCALIZED_FILE
    assert result.file == file
    loaded = load_localized(study["out"])
    assert loaded == result.localized == load_localized(file)
    data = json.loads(file.read_text())
    assert data["model"] == study["probe"].name and data["metric"] == "ssim"
    assert data["settings"]["keep"] == 0.9 and data["settings"]["t_starts"] == [0, 1]
    assert 0 < data["params"]["fraction"] < 1
    sites = loaded.sites_on(study["probe"])
    assert [s.label for s in sites] == list(loaded.labels)
    assert [s.label for s in study["probe"].sites.parse(loaded.site_spec)] == sorted(
        loaded.labels, key=lambda la: [s.label for s in study["probe"].sites].index(la))


def test_report_has_the_summary_at_the_top(study):
    result = study["result"]
    html = result.report.read_text()
    assert result.report == study["out"] / "report.html"
    assert "id='summary'" in html and html.index("id='summary'") < html.index("id='sites'")
    assert f"{len(result.sites)} site" in result.summary[0] and "% of the parameters" in result.summary[0]
    assert "from t_s" in result.summary[0]
    assert XSS not in html  # the hostile prompt is escaped everywhere
    assert "Localization(" in repr(result) and "<b>" in result._repr_html_()
    assert "id='attention'" in html  # where the source word lands at the localized sites


def test_rerun_resumes_without_running_the_model(study, monkeypatch):
    import diffprobe.probe

    def boom(*a, **k):
        raise AssertionError("a finished study must not run the model again")

    monkeypatch.setattr(diffprobe.probe.Probe, "run", boom)
    again = dp.localize(study["probe"], _pairs(), study["out"], progress=False, **CHEAP)
    assert again.localized == study["result"].localized
    assert again.summary == study["result"].summary


@pytest.mark.parametrize("settings, field", [
    (dict(held_out=3), "held_out"),
    (dict(held_out=0), "held_out"),
    (dict(keep=1.5), "keep"),
    (dict(top=0), "top"),
    (dict(metric="ocr_f1_target"), "metric"),   # not among metrics=("mse", "ssim")
    (dict(metric="sim"), "metric"),
    (dict(t_starts=(0, 5)), "t_starts"),       # past a 2-step run
    (dict(sites="cros:all"), "sites"),
    (dict(stepz=3), "stepz"),
])
def test_bad_input_is_refused_before_anything_runs(probe_factory, tmp_path, settings, field):
    kwargs = {**CHEAP, **settings}
    with pytest.raises(SpecError) as err:
        dp.localize(probe_factory("sd15"), _pairs(), tmp_path / "out", progress=False, **kwargs)
    assert err.value.field == field
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out" / "1-sites").exists()


def test_a_meta_build_and_a_bad_out_are_refused(meta_factory, probe_factory, tmp_path):
    with pytest.raises(SpecError, match="meta build"):
        dp.localize(meta_factory("sd-1.5"), _pairs(), tmp_path / "a", **CHEAP)
    (tmp_path / "file").write_text("x")
    with pytest.raises(ResultsError) as err:
        dp.localize(probe_factory("sd15"), _pairs(), tmp_path / "file", **CHEAP)
    assert err.value.field == "out"


def test_load_localized_refuses_missing_and_damaged_files(tmp_path):
    with pytest.raises(ResultsError, match="No localized sites"):
        load_localized(tmp_path)
    (tmp_path / LOCALIZED_FILE).write_text("{not json")
    with pytest.raises(ResultsError, match="not JSON"):
        load_localized(tmp_path)
    (tmp_path / LOCALIZED_FILE).write_text(json.dumps({"format": "other"}))
    with pytest.raises(ResultsError, match="not a diffprobe localization file"):
        load_localized(tmp_path)
    (tmp_path / LOCALIZED_FILE).write_text(json.dumps({"format": "diffprobe.localized/1", "model": "m"}))
    with pytest.raises(ResultsError, match="damaged"):
        load_localized(tmp_path)


def test_settings_defaults_are_the_documented_ones():
    s = StudySettings()
    assert (s.metric, s.top, s.keep, s.held_out, s.steps, s.batch_size) == ("ocr_f1_target", 3, 0.9, 4, 25, 16)
    assert s.windows() == (0, 5, 10)
    assert StudySettings(steps=50).windows() == (0, 10, 20)
    assert StudySettings(metric="moved_target", metrics=("mse",)).metric == "moved_target"  # in every result
    assert Localized.from_dict(Localized("m", ("cross:1",), ("a.attn2",), 2, 25, "ssim", 0.5, 0.4,
                                         {"kind": "inject"}, {"fraction": 0.1}).to_dict()).labels == ("cross:1",)


def test_the_command_runs_resumes_and_fails_in_one_line(tiny_dirs, tmp_path, monkeypatch):
    pairs = tmp_path / "pairs.jsonl"
    write_jsonl(_pairs(), pairs)
    out = tmp_path / "out"
    args = ["localize", "--model", str(tiny_dirs("sd15")), "--pairs", str(pairs), "--held-out", "1", "--steps", "2",
            "--t-start", "0,1", "--metrics", "mse,ssim", "--metric", "ssim", "--sites", "cross:0-2", "--out", str(out),
            "--quiet"]
    first = runner.invoke(app, args, catch_exceptions=False)
    assert first.exit_code == 0, first.output
    assert "% of the parameters" in first.output and (out / "report.html").exists()
    assert load_localized(out).labels[0].startswith("cross:")
    import diffprobe.probe

    monkeypatch.setattr(diffprobe.probe.Probe, "run", lambda *a, **k: (_ for _ in ()).throw(AssertionError("reran")))
    again = runner.invoke(app, args, catch_exceptions=False)
    assert again.exit_code == 0 and again.output == first.output
    for bad, option in ((["--keep", "2"], "--keep"), (["--held-out", "0"], "--held-out"),
                        (["--metric", "ocr_f1_target"], "--metric"), (["--t-start", "0,9"], "--t-start")):
        result = runner.invoke(app, args + bad)
        assert result.exit_code == 2, result.output
        assert result.output.startswith(f"error: {option}:") and result.output.count("\n") == 1, result.output


def test_errors_are_diffprobe_errors():
    assert issubclass(SpecError, DiffprobeError) and issubclass(ResultsError, DiffprobeError)


def test_demo_is_localize_and_falls_back_to_a_tiny_model(tmp_path, monkeypatch, capsys):
    import diffprobe.loading
    from diffprobe.demo import run_demo
    from diffprobe.errors import ModelLoadError

    real = diffprobe.loading.load

    def no_glyph(name, *a, **k):
        if name == "glyph":
            raise ModelLoadError("the glyph weights are missing (test)")
        return real(name, *a, **k)

    monkeypatch.setattr(diffprobe.loading, "load", no_glyph)
    report = run_demo(tmp_path / "demo", n=1, quiet=True)
    assert report == tmp_path / "demo" / "report.html" and report.exists()
    assert load_localized(tmp_path / "demo").settings["held_out"] == 4
    assert "% of the parameters" in capsys.readouterr().out


def test_text_sites_pick_the_papers_intervention_on_every_architecture(tiny_probe, arch):
    from conftest import TEXT_SITES

    from diffprobe.localization import text_sites

    sites, intervention = text_sites(tiny_probe)
    assert sorted(sites.split()) == sorted(TEXT_SITES[arch].split())
    supports = tiny_probe.adapter.supports_inject
    assert intervention == ("inject" if arch in ("sd15", "sdxl", "if") and supports else "patch")
    if "cross" in tiny_probe.sites.kinds:
        assert text_sites(tiny_probe, "cross:0")[0] == "cross:0"
