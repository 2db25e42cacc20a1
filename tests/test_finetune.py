"""LoRA fine-tuning of chosen sites (diffprobe.lora), load(..., lora=DIR) and the `finetune` command.

- adapters sit only on the named sites' chosen projections, and only they train (the base weights stay put);
- round trip: the adapters saved in peft's format and loaded with ``load(model, lora=DIR)`` give images bit-identical
  to the in-memory fine-tuned model (same batch composition), with an intervention on the adapted site;
- resume: N steps in one go == N/2 steps, then the same command with N steps, bit for bit on the adapter weights;
- the full fine-tune writes a pipeline folder; bad input is one DiffprobeError naming the option.
Tiny step counts: the tiny SD1.5 pipeline (VAE latents, epsilon) and the embedded glyph model (pixels, v-prediction).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from typer.testing import CliRunner

import diffprobe
from diffprobe import Capture, Inject, ModelLoadError, Patch, SpecError, Variant
from diffprobe.cli import app
from diffprobe.lora import FinetuneSpec, finetune, load_data, lora_params, random_sites_like

PROMPT = 'A sign that says "STOP".'
GLYPH = 'a red sign that says "STOP"'
runner = CliRunner()


@pytest.fixture(scope="module")
def jsonl(tmp_path_factory):
    """Two 32x32 images with prompts, as a JSONL data file."""
    folder = tmp_path_factory.mktemp("data")
    rng = np.random.default_rng(0)
    lines = []
    for i, text in enumerate(("STOP", "GO")):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        lines.append(json.dumps({"prompt": f'A sign that says "{text}".', "image": f"{i}.png"}))
    (folder / "data.jsonl").write_text("\n".join(lines))
    return folder / "data.jsonl"


def _adapter(folder) -> dict:
    return load_file(str(folder / "adapter_model.safetensors"))


def test_adapters_only_on_the_named_sites(tiny_dirs, jsonl, tmp_path):
    probe = diffprobe.load(str(tiny_dirs("sd15")))
    base = {k: v.clone() for k, v in probe.denoiser.state_dict().items()}
    site = probe.sites.parse("cross:2")[0]
    res = finetune(probe, jsonl, tmp_path / "ft", sites="cross:2", targets=("to_k", "to_v"), steps=2, batch=2,
                   progress=False)
    assert res.trainable_params == lora_params(probe, "cross:2", ("to_k", "to_v")) > 0
    config = json.loads((tmp_path / "ft" / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == [f"{site.name}.to_k", f"{site.name}.to_v"]
    weights = _adapter(tmp_path / "ft")
    assert weights and all(site.name in k and ("to_k" in k or "to_v" in k) and "lora_" in k for k in weights)
    assert any(v.abs().max() > 0 for k, v in weights.items() if "lora_B" in k)  # it trained
    after = res.probe.denoiser.state_dict()
    for name, value in base.items():  # every base weight is where it was (peft keeps them under base_layer)
        key = name if name in after else name.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        assert torch.equal(after[key], value), name
    info = json.loads((tmp_path / "ft" / "finetune.json").read_text())
    assert info["steps_done"] == 2 and info["trainable_params"] == res.trainable_params


def test_adapter_round_trip_is_bit_identical_on_glyph(tmp_path):
    res = finetune("glyph", "glyph:heldout", tmp_path / "ft", sites="cross:9", steps=2, batch=2, lr=1e-2,
                   progress=False)
    other = 'a red sign that says "OPEN"'
    variants = [Variant(GLYPH, (Inject(prompt=other, sites="cross:9", steps="1:"), Capture(what="kv", sites="cross:9"))),
                Variant(GLYPH, (Patch(source=other, sites="cross:9 cross:10", steps="1:"),))]

    def run(probe):
        return probe.run(variants, steps=2)

    in_memory = run(res.probe)
    loaded = diffprobe.load("glyph", lora=tmp_path / "ft", device="cpu", dtype="float32")
    again = run(loaded)
    assert np.array_equal(again.images, in_memory.images)
    for key in ("kv:cross:9:k", "kv:cross:9:v"):  # the adapted projections, read through the trace
        assert np.array_equal(again.captures[key].values, in_memory.captures[key].values)
    plain = run(diffprobe.load("glyph", device="cpu", dtype="float32"))
    assert not np.array_equal(plain.captures["kv:cross:9:k"].values, in_memory.captures["kv:cross:9:k"].values)
    assert loaded.weights_digest() != diffprobe.load("glyph").weights_digest()


def test_resume_is_bit_identical(tiny_dirs, jsonl, tmp_path):
    spec = FinetuneSpec(sites="cross:1 cross:2", steps=4, batch=2, ckpt_every=2, seed=3, noisy_frac=0.5)
    whole = finetune(str(tiny_dirs("sd15")), jsonl, tmp_path / "a", spec, progress=False)
    finetune(str(tiny_dirs("sd15")), jsonl, tmp_path / "b", spec, steps=2, progress=False)
    resumed = finetune(str(tiny_dirs("sd15")), jsonl, tmp_path / "b", spec, progress=False)
    a, b = _adapter(tmp_path / "a"), _adapter(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.losses == whole.losses and resumed.steps == 4


def test_full_fine_tune_writes_a_pipeline(tiny_dirs, jsonl, tmp_path):
    res = finetune(str(tiny_dirs("sd15")), jsonl, tmp_path / "full", mode="full", sites=None, steps=1, batch=1,
                   lr=1e-3, progress=False)
    assert res.trainable_params == res.probe.total_params
    reloaded = diffprobe.load(str(tmp_path / "full" / "pipeline"))
    assert np.array_equal(reloaded.generate(PROMPT, steps=2).images, res.probe.generate(PROMPT, steps=2).images)
    with pytest.raises(ModelLoadError, match="full fine-tune"):
        diffprobe.load(str(tiny_dirs("sd15")), lora=tmp_path / "full")


def test_random_sites_have_the_same_parameter_count(probe_factory):
    probe = probe_factory("sd15")
    other = random_sites_like(probe, "cross:2", seed=1)
    assert "cross:2" not in other.split() and lora_params(probe, other) == lora_params(probe, "cross:2")


def test_bad_input_is_refused(tiny_dirs, jsonl, tmp_path):
    for bad, field in ((dict(mode="half"), "mode"), (dict(rank=0), "rank"), (dict(sites=" "), "sites"),
                       (dict(lr=0.0), "lr"), (dict(noisy_frac=2.0), "noisy_frac"), (dict(targets=()), "targets")):
        with pytest.raises(SpecError) as err:
            FinetuneSpec(**bad)
        assert err.value.field == field
    with pytest.raises(SpecError, match="glyph:heldout"):
        load_data("glyph:nope")
    with pytest.raises(SpecError, match="no training data"):
        load_data(tmp_path / "missing.jsonl")
    path = str(tiny_dirs("sd15"))
    with pytest.raises(SpecError, match="has no submodule 'to_x'") as err:
        finetune(path, jsonl, tmp_path / "x", sites="cross:0", targets=("to_x",), steps=1, progress=False)
    assert err.value.field == "targets"
    finetune(path, jsonl, tmp_path / "y", sites="cross:0", steps=1, batch=1, progress=False)
    with pytest.raises(SpecError, match="another fine-tuning run") as err:
        finetune(path, jsonl, tmp_path / "y", sites="cross:1", steps=1, progress=False)
    assert err.value.field == "out"
    with pytest.raises(ModelLoadError, match="not a folder"):
        diffprobe.load(path, lora=tmp_path / "nothing")


def test_finetune_command_resumes(tiny_dirs, jsonl, tmp_path):
    args = ["finetune", "--model", str(tiny_dirs("sd15")), "--sites", "cross:0", "--data", str(jsonl), "--batch", "1",
            "--out", str(tmp_path / "c"), "--quiet"]
    first = runner.invoke(app, args + ["--steps", "1"])
    assert first.exit_code == 0, first.output
    second = runner.invoke(app, args + ["--steps", "2"])
    assert second.exit_code == 0 and "2 steps" in second.output
    assert json.loads((tmp_path / "c" / "finetune.json").read_text())["steps_done"] == 2
    bad = runner.invoke(app, args + ["--steps", "1", "--rank", "0"])
    assert bad.exit_code == 2 and "--rank" in bad.output


def test_a_sweep_runs_on_the_adapted_model(tmp_path):
    """``Experiment(lora=DIR)`` / ``sweep --lora DIR``: the runner loads the adapters; the results equal a sweep
    on ``load(model, lora=DIR)`` passed as probe (same batches, so bit for bit), and differ from the base model's."""
    from diffprobe import Experiment
    from diffprobe.bench import PromptPair
    from diffprobe.experiments import run

    finetune("glyph", "glyph:heldout", tmp_path / "ft", sites="cross:9", steps=2, batch=2, lr=5e-2, progress=False)
    pair = PromptPair(GLYPH, 'a red sign that says "OPEN"', "STOP", "OPEN")
    spec = Experiment(model="glyph", lora=str(tmp_path / "ft"), pairs=(pair,), sites="cross:9 cross:10", steps=2,
                      metrics=("mse",), device="cpu", dtype="float32")
    by_spec = run(spec, store=tmp_path / "a", progress=None)
    adapted = diffprobe.load("glyph", lora=tmp_path / "ft", device="cpu", dtype="float32")
    by_probe = run(spec, probe=adapted, store=tmp_path / "b", progress=None)
    np.testing.assert_array_equal(by_spec["mse"].values, by_probe["mse"].values)
    base = run(spec.replace(lora=None), store=tmp_path / "c", progress=None)
    assert not np.array_equal(base["baseline_mse"].values, by_spec["baseline_mse"].values) or \
        not np.array_equal(base["mse"].values, by_spec["mse"].values)
    with pytest.raises(SpecError, match="lora"):
        Experiment(model="glyph", lora="", pairs=(pair,))
