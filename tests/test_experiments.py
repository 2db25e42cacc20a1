"""Experiments: spec validation and round-trips, the runner's grid, resume and kill-safety."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import diffprobe as dp
from diffprobe.bench import PromptPair
from diffprobe.errors import MetricError, ResultsError, SpecError
from diffprobe.experiments import Experiment, layer_count_sweep, layer_sweep, run, timestep_sweep
from diffprobe.results import open_results
from diffprobe.zoo.tiny import save_tiny

FAST = ("mse", "psnr", "ssim")
PAIRS = (
    PromptPair('A sign that says "STOP".', 'A sign that says "OPEN".', "STOP", "OPEN"),
    PromptPair('A sign that says "CAT".', 'A sign that says "DOG".', "CAT", "DOG"),
)


@pytest.fixture(scope="module")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("exp_models")
    return {arch: str(save_tiny(arch, root / arch)) for arch in ("sd15", "sdxl", "sd3")}


@pytest.fixture(scope="module")
def sdxl(tiny_dirs):
    return dp.load(tiny_dirs["sdxl"])


@pytest.fixture(scope="module")
def sd3(tiny_dirs):
    return dp.load(tiny_dirs["sd3"])


def spec_for(model: str, **kw) -> Experiment:
    base = dict(model=model, pairs=PAIRS, steps=2, metrics=FAST, batch_size=4)
    base.update(kw)
    return Experiment(**base)


def test_spec_round_trips_json_and_toml(tiny_dirs):
    spec = spec_for(tiny_dirs["sdxl"], t_starts=(0, 1), heads=(0, 1), seeds=(0, 3), guidance=5.0)
    assert Experiment.from_json(spec.to_json()) == spec
    assert Experiment.from_toml(spec.to_toml()) == spec
    assert spec.fingerprint() == Experiment.from_json(spec.to_json()).fingerprint()
    assert spec.replace(steps=3).fingerprint() != spec.fingerprint()


@pytest.mark.parametrize(
    "changes, needle",
    [
        (dict(pairs=()), "no prompt pairs"),
        (dict(intervention="injekt"), "Did you mean 'inject'"),
        (dict(t_starts=(5,)), "[0, 2)"),
        (dict(grouping="cumulative"), "needs counts"),
        (dict(seeds=()), "seeds is empty"),
    ],
)
def test_bad_specs_say_what_is_wrong(tiny_dirs, changes, needle):
    with pytest.raises(SpecError, match=None) as info:
        spec_for(tiny_dirs["sdxl"], **changes)
    assert needle in str(info.value)


def test_unknown_metric_names_the_close_one(tiny_dirs):
    with pytest.raises(MetricError, match="Did you mean 'ssim'"):
        spec_for(tiny_dirs["sdxl"], metrics=("sim",))


def test_spec_that_does_not_match_the_model(sd3, tiny_dirs):
    with pytest.raises(SpecError, match="do not match the model.*joint"):
        run(spec_for(tiny_dirs["sd3"], sites="cross:all"), probe=sd3)
    with pytest.raises(SpecError, match="intervention='patch'"):
        run(spec_for(tiny_dirs["sd3"], sites="joint:all", intervention="inject"), probe=sd3)


def test_layer_sweep_on_all_cross_sites_of_tiny_sdxl(sdxl, tiny_dirs):
    ds = layer_sweep(sdxl, PAIRS, sites="cross:all", steps=2, metrics=FAST, batch_size=8)
    n_cross = len(sdxl.sites.of_kind("cross"))
    assert dict(ds["ssim"].sizes) == {"pair": 2, "site": n_cross, "t_start": 1, "seed": 1}
    assert list(ds.site_label.values) == [f"cross:{i}" for i in range(n_cross)]
    assert bool(ds.done.all())
    assert ds.patched_image.dtype == np.uint8 and ds.patched_image.shape[-1] == 3
    spec = json.loads(ds.attrs["spec"])
    assert spec["sites"] == "cross:all"
    assert set(json.loads(ds.attrs["versions"])) >= {"diffprobe", "torch", "diffusers", "nnsight"}
    # the source baseline compared with itself is perfect
    assert np.all(ds.baseline_ssim.sel(role="source").values == pytest.approx(1.0))


def test_joint_patch_sweep_on_tiny_sd3(sd3, tiny_dirs):
    spec = spec_for(tiny_dirs["sd3"], intervention="patch", sites="joint:all", t_starts=(0, 1))
    ds = run(spec, probe=sd3)
    assert dict(ds["mse"].sizes) == {"pair": 2, "site": 3, "t_start": 2, "seed": 1}
    assert ds.dp.best_sites("mse", k=2).sizes["site"] == 2
    assert dict(ds["moved_target"].sizes) == dict(ds["mse"].sizes)  # derived from the stored images
    assert (ds["baseline_moved_target"].sel(role="source") == 0).all()
    assert (ds["baseline_moved_target"].sel(role="target") == 1).all()


def test_named_sweeps_share_the_one_runner(sdxl):
    ts = timestep_sweep(sdxl, PAIRS[:1], sites="cross:0-1", t_starts=(0, 1), steps=2, metrics=FAST)
    assert list(ts.t_start.values) == [0, 1]
    lc = layer_count_sweep(sdxl, PAIRS[:1], sites=["cross:3", "cross:0", "cross:1"], counts=(1, 3), steps=2, metrics=FAST)
    assert list(lc.n_sites.values) == [1, 3]
    assert list(lc.sites_used.values) == ["cross:3", "cross:3 cross:0 cross:1"]


def test_resume_recomputes_nothing_finished(sdxl, tiny_dirs, tmp_path, monkeypatch):
    spec = spec_for(tiny_dirs["sdxl"], sites="cross:0-3")
    first = run(spec, probe=sdxl, store=tmp_path / "s")
    calls = []
    monkeypatch.setattr(type(sdxl), "run", lambda self, *a, **k: calls.append(1))
    again = run(spec, probe=sdxl, store=tmp_path / "s")
    assert calls == []
    xr.testing.assert_identical(first.drop_attrs(), again.drop_attrs())
    reopened = open_results(tmp_path / "s")
    np.testing.assert_array_equal(reopened.ssim.values, first.ssim.values)


def test_store_of_another_spec_is_refused(sdxl, tiny_dirs, tmp_path):
    run(spec_for(tiny_dirs["sdxl"], sites="cross:0"), probe=sdxl, store=tmp_path / "s")
    with pytest.raises(ResultsError, match="different experiment.*sites: stored 'cross:0' vs asked 'cross:1'"):
        run(spec_for(tiny_dirs["sdxl"], sites="cross:1"), probe=sdxl, store=tmp_path / "s")


def test_corrupted_batch_file_names_the_fix(sdxl, tiny_dirs, tmp_path):
    run(spec_for(tiny_dirs["sdxl"], sites="cross:0"), probe=sdxl, store=tmp_path / "s")
    victim = sorted((tmp_path / "s" / "batches").glob("cell-*.nc"))[0]
    victim.write_bytes(b"not a netcdf file")
    (tmp_path / "s" / "results.nc").unlink()
    with pytest.raises(ResultsError, match="corrupted.*Delete it and re-run"):
        open_results(tmp_path / "s")


_KILL_SCRIPT = r"""
import sys
import diffusers, transformers
diffusers.utils.logging.set_verbosity_error(); transformers.utils.logging.set_verbosity_error()
from diffprobe.experiments import Experiment, run
spec = Experiment.from_json(open(sys.argv[1]).read())
run(spec, store=sys.argv[2])
"""


def test_sigkill_mid_sweep_resumes_to_the_same_numbers(sdxl, tiny_dirs, tmp_path):
    spec = spec_for(tiny_dirs["sdxl"], sites="cross:all", batch_size=2)
    (tmp_path / "spec.json").write_text(spec.to_json())
    script = tmp_path / "sweep.py"
    script.write_text(_KILL_SCRIPT)
    store = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "spec.json"), str(store)])
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if len(list(store.glob("batches/cell-*.nc"))) >= 1:
            break
        time.sleep(0.02)
    proc.kill()  # SIGKILL: no cleanup handlers run
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the sweep finished before it could be killed"
    assert not (store / "results.nc").exists()
    partial = open_results(store)  # an interrupted store opens
    done, total = partial.dp.progress()
    assert 0 < done < total
    resumed = run(spec, probe=sdxl, store=store)
    clean = run(spec, probe=sdxl, store=tmp_path / "clean")
    for name in FAST + ("done",):
        np.testing.assert_array_equal(resumed[name].values, clean[name].values)
    np.testing.assert_array_equal(resumed.patched_image.values, clean.patched_image.values)


def test_accessor_reductions(sdxl, tiny_dirs):
    ds = run(spec_for(tiny_dirs["sdxl"], sites="cross:0-2", seeds=(0, 1)), probe=sdxl)
    ci = ds.dp.mean_ci("mse")
    assert set(ci.data_vars) == {"mean", "ci", "n"} and int(ci.n.max()) == 4
    manual = ds.mse.mean(("pair", "seed"))
    np.testing.assert_allclose(ci["mean"].values, manual.values)
    best = ds.dp.best_sites("mse", k=1)  # lower is better for mse
    assert float(best.values[0]) == pytest.approx(float(manual.min()))
    assert ds.dp.localized("ssim", threshold=-1.0) == [f"cross:{i}" for i in range(3)]
    with pytest.raises(MetricError, match="Did you mean 'ssim'"):
        ds.dp.mean("ssimm")


def test_spec_from_a_toml_file_and_a_broken_one(tiny_dirs, tmp_path):
    spec = spec_for(tiny_dirs["sdxl"], t_starts=(0, 1))
    (tmp_path / "spec.toml").write_text(spec.to_toml())
    assert Experiment.from_toml(tmp_path / "spec.toml") == spec
    assert Experiment.from_toml(str(tmp_path / "spec.toml")) == spec
    (tmp_path / "bad.toml").write_text("steps = [unclosed\n")
    with pytest.raises(SpecError, match="Cannot read the experiment TOML .*bad.toml"):
        Experiment.from_toml(tmp_path / "bad.toml")
    with pytest.raises(SpecError, match="Unknown experiment field 'step'.*Did you mean 'steps'"):
        Experiment.from_toml('step = 3\n')


def test_shared_baselines_are_not_recomputed(sdxl, tiny_dirs, tmp_path, monkeypatch):
    from diffprobe.results import share_baselines

    first = run(spec_for(tiny_dirs["sdxl"], sites="cross:0-1"), probe=sdxl, store=tmp_path / "a")
    assert share_baselines(tmp_path / "a", tmp_path / "b") == 1
    ran = []
    real = type(sdxl).run
    monkeypatch.setattr(type(sdxl), "run", lambda self, variants, **k: ran.append(len(variants)) or real(self, variants, **k))
    second = run(spec_for(tiny_dirs["sdxl"], sites="cross:2-3"), probe=sdxl, store=tmp_path / "b")
    assert ran == [4]  # the four cells only: no baseline batch
    np.testing.assert_array_equal(second.source_image.values, first.source_image.values)


def test_store_written_with_other_weights_is_refused(tiny_dirs, tmp_path):
    import torch

    probe = dp.load(tiny_dirs["sd15"])
    spec = spec_for(tiny_dirs["sd15"], sites="cross:0")
    run(spec, probe=probe, store=tmp_path / "s")
    run(spec, probe=dp.load(tiny_dirs["sd15"]), store=tmp_path / "s")  # same weights, reloaded: resumes
    retrained = dp.load(tiny_dirs["sd15"])
    with torch.no_grad():
        next(retrained.denoiser.parameters()).add_(0.01)
    with pytest.raises(ResultsError, match="other weights.*model changed"):
        run(spec, probe=retrained, store=tmp_path / "s")


def test_count_follow_up_ranks_the_sweep_sites_and_keeps_the_rest_of_the_spec():
    from _synthetic import make_results

    from diffprobe.bench import PromptPair
    from diffprobe.experiments import Experiment, count_follow_up

    labels = [f"cross:{i}" for i in range(6)]
    ds = make_results(n_sites=6).assign_coords(site_label=("site", labels))  # site 2 localizes, site 3 half-way
    spec = Experiment(model="tiny-glyph", pairs=(PromptPair("a", "b", "a", "b"),), sites="cross:all", t_starts=(0, 2, 4), steps=5)
    follow = count_follow_up(spec, ds)
    assert follow.sites[:2] == (labels[2], labels[3]) and sorted(follow.sites) == sorted(labels)
    assert follow.counts == (1, 2, 3, 5, 6) and follow.grouping == "cumulative" and follow.t_starts == (0,)
    assert follow.replace(sites=spec.sites, grouping="each", counts=(), t_starts=spec.t_starts) == spec


# -- intervention templates: every intervention can be swept --------------------------------------------------

@pytest.mark.parametrize("template, changes", [
    ({"kind": "scale", "factor": 0.0}, True),
    ({"kind": "scale", "factor": 1.0}, False),
    ({"kind": "ablate", "mode": "empty"}, True),
    ({"kind": "ablate", "mode": "zero", "target": "output"}, True),
])
def test_any_intervention_template_can_be_swept(sdxl, template, changes):
    spec = spec_for(sdxl.name, sites="cross:0-1", intervention=template, metrics=("mse",))
    ds = run(spec, probe=sdxl)
    assert bool(ds["done"].all())
    assert json.loads(ds.attrs["intervention"]) == template
    assert bool((ds["mse"] > 0).any()) == changes  # Scale(1.0) is the identity: mse 0 everywhere


def test_a_template_that_names_the_target_prompt_itself(sdxl):
    spec = spec_for(sdxl.name, sites="cross:0", intervention={"kind": "inject", "prompt": "a blank sign"},
                    metrics=("mse",))
    assert Experiment.from_json(spec.to_json()) == spec
    assert bool(run(spec, probe=sdxl)["done"].all())


def test_an_interrupted_store_reopens_without_loading_the_model(sdxl, tmp_path, monkeypatch):
    import diffprobe.loading

    spec = spec_for(sdxl.name, sites="cross:0-1")
    full = run(spec, probe=sdxl, store=tmp_path / "s")
    (tmp_path / "s" / "results.nc").unlink()
    sorted((tmp_path / "s" / "batches").glob("cell-*.nc"))[-1].unlink()  # as if killed before the last batch
    monkeypatch.setattr(diffprobe.loading, "load", lambda *a, **k: pytest.fail("reopening loaded the model"))
    partial = open_results(tmp_path / "s")
    assert int(partial["done"].sum()) < int(full["done"].sum())
    assert list(partial.site_label.values) == list(full.site_label.values)


def test_the_ocr_engine_is_part_of_the_spec(sdxl):
    spec = spec_for(sdxl.name, pairs=PAIRS[:1], sites="cross:0", metrics=("exact_target", "ocr_f1_target"),
                    ocr_engine="easyocr")
    assert spec.replace(ocr_engine="tesseract").fingerprint() != spec.fingerprint()
    ds = run(spec, probe=sdxl)
    assert json.loads(ds.attrs["spec"])["ocr_engine"] == "easyocr"
    assert ds["ocr_text"].dtype == object and bool(ds["done"].all())
    with pytest.raises(SpecError, match="ocr_engine='tesserakt' unknown.*Did you mean 'tesseract'"):
        spec.replace(ocr_engine="tesserakt")
