"""Device and precision: auto resolution, the exactness suite in bfloat16, batch_size="auto", CPU offload.

bfloat16 runs on the CPU here (no GPU in CI). The exactness claims that hold by construction in float32
(same row, same batch composition) hold in bfloat16 too, bit for bit: the kernels see identical inputs.
Comparisons across batch rows get a wider tolerance in bfloat16 (``BF16_ROW_TOLERANCE``): a last-bit
difference between two rows is one bfloat16 ulp (2**-8 relative), 65,536 times a float32 ulp.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import diffprobe
from conftest import SIZE, TEXT_SITES
from diffprobe import Capture, Experiment, Inject, ModelLoadError, Patch, ResultsError, Scale, Variant
from diffprobe.bench import PromptPair
from diffprobe.devices import FAMILY_DTYPES, resolve_device, resolve_dtype

SRC, TGT = 'A sign that says "STOP".', 'A sign that says "GO".'
BF16_ARCHS = ("sd15", "sdxl", "if", "sd3", "flux")
#: images of two different batch rows with identical inputs, in bfloat16 (uint8 levels)
BF16_ROW_TOLERANCE = 8


def test_auto_resolves_to_the_cpu_in_float32_here():
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_dtype("auto", torch.device("cpu"), "FluxPipeline") == torch.float32


@pytest.mark.parametrize("pipeline, dtype", [("StableDiffusionXLPipeline", torch.float16),
                                              ("IFPipeline", torch.float16), ("StableDiffusion3Pipeline", torch.bfloat16),
                                              ("FluxPipeline", torch.bfloat16), ("SomethingNew", torch.float16)])
def test_auto_dtype_on_an_accelerator_follows_the_family(pipeline, dtype):
    assert resolve_dtype("auto", torch.device("cuda"), pipeline) == dtype
    assert resolve_dtype("bf16", torch.device("cuda"), pipeline) == torch.bfloat16  # explicit wins
    assert FAMILY_DTYPES.get(pipeline, torch.float16) == dtype


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_an_unavailable_device_is_refused():
    with pytest.raises(ModelLoadError, match="not available on this machine") as err:
        resolve_device("cuda")
    assert err.value.field == "device"
    with pytest.raises(ModelLoadError, match="is not a device"):
        resolve_device("gpu7")
    with pytest.raises(ModelLoadError, match="Did you mean 'bfloat16'"):
        resolve_dtype("bfloat61", torch.device("cpu"), None)


@pytest.fixture(scope="module")
def bf16(tiny_dirs):
    cache = {}

    def get(arch):
        if arch not in cache:
            cache[arch] = diffprobe.load(tiny_dirs(arch), dtype="bfloat16")
        return cache[arch]

    return get


def run(probe, arch, variants, steps=3):
    return probe.run(variants, steps=steps, **SIZE.get(arch, {}))


@pytest.mark.parametrize("arch", BF16_ARCHS)
def test_bf16_edits_keep_the_dtype_and_only_named_steps_change(bf16, arch):
    probe = bf16(arch)
    assert probe.runtime["dtype"] == "bfloat16" and probe.denoiser.dtype == torch.bfloat16
    den = Capture(sites="denoiser")
    patched = run(probe, arch, [Variant(SRC, (den,)), Variant(SRC, (Patch(source=TGT, sites=TEXT_SITES[arch],
                                                                            steps="1:"), den))])
    clean = run(probe, arch, [Variant(SRC, (den,)), Variant(SRC, (den,)), Variant(TGT)])
    a, b = patched.captures["denoiser"].values[1], clean.captures["denoiser"].values[1]
    np.testing.assert_array_equal(a[:1], b[:1])  # step 0: same row, same composition -> bit-identical
    assert np.abs(a[1] - b[1]).max() > 0


@pytest.mark.parametrize("arch", BF16_ARCHS)
def test_bf16_scale_one_and_identity_patch(bf16, arch):
    probe = bf16(arch)
    edited = run(probe, arch, [Variant(SRC), Variant(SRC, (Scale(1.0, sites="all"),))]).images
    clean = run(probe, arch, [Variant(SRC), Variant(SRC)]).images
    np.testing.assert_array_equal(edited, clean)
    site = TEXT_SITES[arch]
    watched = probe.sites.parse(site)[-1].label
    cap = Capture(what="kv", sites=watched)
    result = run(probe, arch, [Variant(SRC, (cap,)), Variant(SRC, (Patch(source=SRC, sites=site), cap))])
    kv = result.captures[f"kv:{watched}:k"].values
    np.testing.assert_array_equal(kv[1], kv[0])  # the copy is exact in any dtype
    diff = np.abs(result.images[1].astype(int) - result.images[0].astype(int)).max()
    assert diff <= BF16_ROW_TOLERANCE, diff


def test_bf16_inject_values_are_cast_to_the_site_dtype(bf16):
    from diffprobe.engine import run_plan
    from diffprobe.plan import make_plan

    probe = bf16("sd15")
    plan = make_plan([Variant(SRC, (Inject(prompt=TGT, sites="cross:2"), Capture(what="kv", sites="cross:2")))],
                     probe.sites, 2)
    result = run_plan(probe, plan, guidance=None, height=None, width=None)
    assert result.captures["kv:cross:2:k"][0].dtype == torch.bfloat16


def test_model_cpu_offload_traces_and_matches(tiny_dirs, probe_factory):
    offloaded = diffprobe.load(tiny_dirs("sd15"), device="cpu", offload="model")
    assert offloaded.runtime["offload"] == "model"
    ivs = [Inject(prompt=TGT, sites="cross:1", steps="1:")]
    np.testing.assert_array_equal(offloaded.generate(SRC, ivs, steps=2, seed=4).images,
                                  probe_factory("sd15").generate(SRC, ivs, steps=2, seed=4).images)
    with pytest.raises(ModelLoadError, match="offload='disk'"):
        diffprobe.load(tiny_dirs("sd15"), offload="disk")


PAIRS = (PromptPair(SRC, TGT, "STOP", "GO"), PromptPair('A sign that says "CAT".', 'A sign that says "DOG".', "CAT", "DOG"))


def test_batch_size_auto_halves_on_out_of_memory_and_writes_each_batch_once(probe_factory, tmp_path, monkeypatch):
    import diffprobe.probe
    from diffprobe.experiments import run as run_spec
    from diffprobe.results import Store

    probe = probe_factory("sd15")
    real_run, writes, calls = diffprobe.probe.Probe.run, [], []

    def small_memory(self, variants, **kw):
        calls.append(len(variants))
        if len(variants) > 3:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_run(self, variants, **kw)

    real_put = Store._put
    monkeypatch.setattr(diffprobe.probe.Probe, "run", small_memory)
    monkeypatch.setattr(Store, "_put", lambda self, kind, i, ds: writes.append((kind, i)) or real_put(self, kind, i, ds))
    spec = Experiment(model=probe.name, pairs=PAIRS, sites="cross:0-4", steps=2, metrics=("mse",), batch_size="auto")
    ds = run_spec(spec, probe=probe, store=tmp_path / "s")
    assert bool(ds["done"].all())
    assert ds.attrs["batch_unit"] == 8 and ds.attrs["batch_size_used"] == 2
    assert len(writes) == len(set(writes))  # nothing written twice
    assert calls[0] == 4 and calls[1:3] == [4, 2]  # the whole baseline batch first, then halves until it fits


def test_a_store_refuses_another_dtype(probe_factory, bf16, tmp_path):
    from diffprobe.experiments import run as run_spec

    spec = Experiment(model=probe_factory("sd15").name, pairs=PAIRS[:1], sites="cross:0", steps=2, metrics=("mse",))
    ds = run_spec(spec, probe=probe_factory("sd15"), store=tmp_path / "s")
    assert json.loads(ds.attrs["runtime"])["dtype"] == "float32"
    with pytest.raises(ResultsError, match="written on cpu in float32, this run is on cpu in bfloat16"):
        run_spec(spec, probe=bf16("sd15"), store=tmp_path / "s")


def test_a_spec_asking_another_dtype_than_the_probe_is_refused(probe_factory):
    from diffprobe.errors import SpecError
    from diffprobe.experiments import run as run_spec

    spec = Experiment(model="x", pairs=PAIRS[:1], sites="cross:0", steps=2, metrics=("mse",), dtype="bf16")
    assert spec.dtype == "bfloat16"
    with pytest.raises(SpecError, match="runs in float32 but the spec asks for dtype='bfloat16'"):
        run_spec(spec, probe=probe_factory("sd15"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cli_device_and_dtype_options(tmp_path):
    from diffprobe.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["sweep", "--bench", "simple", "--n", "1", "--device", "cuda", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--device:" in result.output and "not available" in result.output
    result = runner.invoke(app, ["sweep", "--bench", "simple", "--n", "1", "--dtype", "fp8", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--dtype:" in result.output
    result = runner.invoke(app, ["sweep", "--bench", "simple", "--n", "1", "--batch-size", "lots", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--batch-size:" in result.output and "'auto'" in result.output
