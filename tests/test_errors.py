"""Bad input gets one clear error before any compute: a DiffprobeError from the API, exit 2 and one line from the CLI.

Each case below was, before, a traceback, a plain TypeError/ValueError or a silent wrong result. The property
tests at the end throw arbitrary values at the spec, the intervention constructors and the ``sweep`` command and
check the only outcomes are "works" or one DiffprobeError (CLI: exit 2) -- never another exception type.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import diffprobe
from diffprobe import (
    Ablate, Capture, DiffprobeError, Experiment, Inject, InterventionError, Patch, ResultsError, Scale, SpecError,
    Variant,
)
from diffprobe.bench import PromptPair
from diffprobe.cli import app
from diffprobe.interventions import KINDS

PAIR = PromptPair('A sign that says "STOP".', 'A sign that says "GO".', "STOP", "GO")
runner = CliRunner()


def spec(**fields) -> Experiment:
    return Experiment(pairs=(PAIR,), **fields)


# -- the spec: silent wrong results and tracebacks, now refused where the spec is built -----------------------

@pytest.mark.parametrize("fields, field, words", [
    (dict(guidance=float("nan")), "guidance", "not a finite number"),
    (dict(guidance="high"), "guidance", "must be a number"),
    (dict(seeds=(0, 0)), "seeds", "more than once"),
    (dict(t_starts=(0, 0)), "t_starts", "more than once"),
    (dict(seeds=(2**64,)), "seeds", "does not fit a 64-bit seed"),
    (dict(seeds=(1.5,)), "seeds", "integer seed"),
    (dict(seeds=5), "seeds", "must be a list"),
    (dict(batch_size="8"), "batch_size", "give a positive integer or 'auto'"),
    (dict(steps=3.5), "steps", "must be an integer"),
    (dict(pairs="oops"), "pairs", "must be a list"),
    (dict(heads=(1, 1)), "heads", "more than once"),
    (dict(intervention="injekt"), "intervention", "Did you mean 'inject'"),
    (dict(intervention={"kind": "scale", "factor": "big"}), "intervention", "Scale.factor must be a number"),
    (dict(intervention={"kind": "patch", "sites": "cross:0"}), "intervention", "each cell takes from the spec"),
    (dict(intervention={"kind": "capture"}), "intervention", "unknown"),
    (dict(model=""), "model", "non-empty"),
], ids=lambda v: str(v)[:40])
def test_bad_spec_fields_name_the_field(fields, field, words):
    with pytest.raises(SpecError) as err:
        Experiment(pairs=(PAIR,), **fields) if "pairs" not in fields else Experiment(**fields)
    assert err.value.field == field
    assert words in str(err.value)


@pytest.mark.parametrize("text, words", [
    ('seeds = 5', "seeds"), ('guidance = "high"', "guidance"), ('batch_size = "8"', "batch_size"),
    ('pairs = "oops"', "pairs"),
])
def test_wrong_types_in_a_toml_spec(text, words):
    pairs = '[[pairs]]\nsource_prompt = "a"\ntarget_prompt = "b"\nsource_text = "a"\ntarget_text = "b"\n'
    body = text + "\n" + (pairs if "pairs" not in text else "")
    with pytest.raises(SpecError) as err:
        Experiment.from_toml(body)
    assert err.value.field == words


def test_a_missing_config_file_is_named(tmp_path):
    with pytest.raises(SpecError, match="No experiment file at .*nope.toml"):
        Experiment.from_toml(tmp_path / "nope.toml")
    with pytest.raises(SpecError, match="No experiment file"):
        Experiment.from_toml(str(tmp_path / "nope.toml"))


@pytest.mark.parametrize("prompt, words", [("a\x00b", "NUL character"), ("a\ud800b", "lone surrogate")])
def test_prompts_must_be_text(prompt, words):
    with pytest.raises(SpecError, match=words):
        PromptPair(prompt, "b", "a", "b")
    with pytest.raises(InterventionError, match=words):
        Variant(prompt)
    with pytest.raises(InterventionError, match=words):
        Patch(source=prompt)


# -- interventions ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make, words", [
    (lambda: Scale(float("nan")), "not a finite number"),
    (lambda: Scale("big"), "must be a number"),
    (lambda: Patch(sites="cross:0"), "Patch needs source="),
    (lambda: Inject(sites="cross:0"), "Inject needs prompt="),
    (lambda: Patch(source="x", steps=3.5), "cannot read steps=3.5"),
    (lambda: Patch(source="x", heads=[0.5]), "must be an integer"),
    (lambda: Patch(source="x", sites=42), "cannot read sites=42"),
    (lambda: Ablate(prompts="a dog"), "list of prompts"),
    (lambda: Capture(name=""), "non-empty"),
    (lambda: Variant("a", Scale(0.5)), "must be a list"),
    (lambda: Variant("a", ["Scale(0.5)"]), "not an intervention"),
    (lambda: Variant("a", seed=-1), "64-bit seed"),
], ids=lambda v: getattr(v, "__name__", str(v))[:30])
def test_bad_interventions(make, words):
    with pytest.raises(InterventionError, match=words):
        make()


def test_explicit_empty_prompts_are_still_allowed():
    assert Patch(source="").source == "" and Inject(prompt="").prompt == ""


def test_interventions_round_trip_through_their_dicts():
    from diffprobe.interventions import from_dict

    for iv in (Patch(source="x", sites="cross:0", steps="2:", heads=[1]), Inject(prompt="y", steps=[0, 1]),
               Ablate(mode="mean", prompts=("a", "b")), Scale(0.5, cfg="cond"), Capture(what="kv", name="k")):
        assert from_dict(json.loads(json.dumps(iv.to_dict()))) == iv
    with pytest.raises(InterventionError, match="Did you mean 'patch'"):
        from_dict({"kind": "pach"})
    with pytest.raises(InterventionError, match="has no field 'sorce'.*Did you mean 'source'"):
        from_dict({"kind": "patch", "sorce": "x"})


@pytest.mark.parametrize("kwargs, words", [
    (dict(guidance="high"), "guidance must be a number"),
    (dict(guidance=float("nan")), "not a finite number"),
    (dict(negative_prompt=123), "negative_prompt must be a string"),
    (dict(seed="0"), "seed must be an integer"),
    (dict(steps=3.5), "steps must be an integer"),
])
def test_bad_generate_arguments(probe_factory, kwargs, words):
    probe = probe_factory("sd15")
    with pytest.raises(InterventionError, match=words):
        probe.generate("a sign", [Scale(0.5)], **{"steps": 2, **kwargs})
    with pytest.raises(InterventionError, match="must be a list"):
        probe.generate("a sign", Scale(0.5), steps=2)


# -- the store and results files ----------------------------------------------------------------------------

def test_a_foreign_netcdf_file_is_not_a_results_dataset(tmp_path):
    import xarray as xr

    from diffprobe.results import open_results

    xr.Dataset({"t": ("x", np.arange(3.0))}).to_netcdf(tmp_path / "other.nc", engine="h5netcdf")
    with pytest.raises(ResultsError, match="not a diffprobe results dataset"):
        open_results(tmp_path / "other.nc")


def test_out_that_is_a_file_or_unwritable(tmp_path):
    from diffprobe.results import check_out

    (tmp_path / "file").write_text("x")
    with pytest.raises(ResultsError, match="is a file, not a folder"):
        check_out(tmp_path / "file")
    with pytest.raises(ResultsError, match="cannot write to"):
        check_out(tmp_path / "file" / "below")


def test_a_temporary_batch_left_by_a_kill_is_removed_on_reopen(tmp_path):
    from diffprobe.results import Layout, Store

    s = spec(sites=("cross:0",))
    Store.open(tmp_path, s, layout=Layout((), ()))
    (tmp_path / "batches").mkdir()
    stale = tmp_path / "batches" / "cell-00000.nc.abc.tmp"
    stale.write_bytes(b"half a file")
    Store.open(tmp_path, s)
    assert not stale.exists()


# -- the command line: exit 2, one line, the option the user typed, before any compute -------------------------

def _sweep(tmp_path, *args):
    return runner.invoke(app, ["sweep", "--bench", "simple", "--n", "1", "--out", str(tmp_path / "out"), *args])


@pytest.mark.parametrize("args, words", [
    (["--seeds", "0,0"], "--seeds: seeds lists 0 more than once"),
    (["--t-start", "0,0"], "--t-start: t_starts lists 0 more than once"),
    (["--seeds", "99999999999999999999999"], "--seeds: seeds entry=99999999999999999999999 does not fit"),
    (["--seeds", "a"], "--seeds: takes comma-separated integers"),
    (["--guidance", "nan"], "--guidance: guidance=nan is not a finite number"),
    (["--intervention", "injekt"], "--intervention: intervention='injekt' unknown"),
    (["--intervention", "{bad json"], "--intervention: cannot read"),
    (["--config", "/no/such/spec.toml"], "No experiment file at /no/such/spec.toml"),
])
def test_sweep_refuses_bad_options_in_one_line(tmp_path, args, words):
    result = _sweep(tmp_path, *args)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert words in " ".join(result.output.split())


def test_sweep_refuses_a_bad_out_before_loading(tmp_path, monkeypatch):
    import diffprobe.loading

    monkeypatch.setattr(diffprobe.loading, "load", lambda *a, **k: pytest.fail("loaded a model"))
    (tmp_path / "file").write_text("x")
    result = runner.invoke(app, ["sweep", "--bench", "simple", "--n", "1", "--out", str(tmp_path / "file")])
    assert result.exit_code == 2 and "--out:" in result.output and "is a file" in result.output


@pytest.mark.parametrize("content, words", [
    (b'{"source_prompt": "a\xff", "target_prompt": "b", "source_text": "a", "target_text": "b"}\n', "not UTF-8"),
    (b'{"source_prompt": "a\\u0000", "target_prompt": "b", "source_text": "a", "target_text": "b"}\n', "NUL"),
    (b'{"source_prompt": "a\\ud800", "target_prompt": "b", "source_text": "a", "target_text": "b"}\n', "surrogate"),
])
def test_bad_pairs_files(tmp_path, content, words):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_bytes(content)
    result = runner.invoke(app, ["sweep", "--pairs", str(pairs), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and words in result.output and "pairs.jsonl:1" in result.output


def test_heads_out_of_range_is_refused_before_the_first_step(tmp_path, tiny_dirs, monkeypatch):
    import diffprobe.probe

    monkeypatch.setattr(diffprobe.probe.Probe, "run", lambda *a, **k: pytest.fail("computed before validating"))
    result = runner.invoke(app, ["sweep", "--model", str(tiny_dirs("sd15")), "--bench", "simple", "--n", "1",
                                 "--sites", "cross:0", "--steps", "2", "--heads", "99", "--out", str(tmp_path / "o")])
    assert result.exit_code == 2, result.output
    assert "--heads:" in result.output and "valid heads are 0-" in result.output


def test_report_on_a_foreign_file_and_to_an_unwritable_place(tmp_path):
    import xarray as xr

    xr.Dataset({"t": ("x", np.arange(3.0))}).to_netcdf(tmp_path / "other.nc", engine="h5netcdf")
    result = runner.invoke(app, ["report", str(tmp_path / "other.nc")])
    assert result.exit_code == 2 and "not a diffprobe results dataset" in result.output
    from _synthetic import make_results

    make_results().to_netcdf(tmp_path / "results.nc", engine="h5netcdf")
    (tmp_path / "file").write_text("x")
    result = runner.invoke(app, ["report", str(tmp_path / "results.nc"), "--out", str(tmp_path / "file" / "r.html")])
    assert result.exit_code == 2 and "--out:" in result.output and "cannot write the report" in result.output


# -- property tests: any input works or raises one DiffprobeError ------------------------------------------

VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.lists(st.one_of(st.integers(-3, 3), st.text(max_size=4), st.floats(allow_nan=True)), max_size=3),
    st.dictionaries(st.text(max_size=6), st.integers(-2, 2), max_size=2),
)
SPEC_FIELDS = ["model", "intervention", "sites", "grouping", "counts", "t_starts", "heads", "per_head", "seeds",
               "steps", "guidance", "height", "width", "metrics", "batch_size", "clip_dir", "pairs"]
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(st.dictionaries(st.sampled_from(SPEC_FIELDS), VALUES, max_size=4))
def test_property_experiment_works_or_raises_a_diffprobe_error(fields):
    fields.setdefault("pairs", (PAIR,))
    try:
        Experiment(**fields)
    except DiffprobeError as exc:
        assert str(exc)


@FAST
@given(st.sampled_from(sorted(KINDS.values(), key=lambda c: c.__name__)),
       st.dictionaries(st.sampled_from(["sites", "heads", "steps", "cfg", "source", "prompt", "negative_prompt",
                                        "mode", "target", "prompts", "factor", "what", "name", "reduce", "per_step"]),
                       VALUES, max_size=3))
def test_property_interventions_work_or_raise_a_diffprobe_error(cls, kwargs):
    """Every registered intervention kind, including ones added later (they register in KINDS)."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in kwargs.items() if k in names}
    try:
        cls(**kwargs)
    except DiffprobeError as exc:
        assert str(exc)


class _Reached(Exception):
    """Raised instead of loading a model: the input passed every check."""


OPTION_VALUES = st.one_of(st.text(max_size=10), st.integers(-5, 2**66).map(str),
                          st.lists(st.integers(-2, 30), max_size=3).map(lambda v: ",".join(map(str, v))),
                          st.sampled_from(["nan", "inf", "-1", "0", "1e400", "cross:0", "{\"kind\": 1}", "1,1"]))
OPTIONS = ["--seeds", "--t-start", "--heads", "--guidance", "--steps", "--batch-size", "--sites", "--intervention",
           "--metrics", "--n", "--counts", "--grouping", "--pair-seed", "--model"]


@FAST
@given(st.dictionaries(st.sampled_from(OPTIONS), OPTION_VALUES, max_size=4))
def test_property_sweep_options_work_or_exit_2_with_one_error(options):
    import tempfile

    import diffprobe.loading

    def reached(*a, **k):
        raise _Reached

    original = diffprobe.loading.load
    diffprobe.loading.load = reached
    try:
        with tempfile.TemporaryDirectory() as out:
            args = ["sweep", "--bench", "simple", "--out", out, "--quiet"]
            for option, value in options.items():
                args += [option, value]
            result = runner.invoke(app, args)
    finally:
        diffprobe.loading.load = original
    if isinstance(result.exception, _Reached):
        return
    assert result.exit_code == 2, (args, result.output, result.exception)
    assert "Traceback" not in result.output
