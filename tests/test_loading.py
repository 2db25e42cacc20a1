"""Loading: save_pretrained directories, pipeline objects, bundled meta configs, and clear failures."""
from __future__ import annotations

import numpy as np
import pytest

import diffprobe
from conftest import META_NAMES
from diffprobe import DiffprobeError, ModelLoadError, Probe


def test_load_from_a_save_pretrained_directory(probe_factory, tiny_dirs):
    probe = probe_factory("sd15")
    assert isinstance(probe, Probe)
    assert probe.name == str(tiny_dirs("sd15"))
    assert type(probe.pipeline).__name__ == "StableDiffusionPipeline"
    assert probe.denoiser is probe.pipeline.unet
    assert probe.sites.counts() == {"self": 7, "cross": 7}
    assert probe.total_params == sum(p.numel() for p in probe.pipeline.unet.parameters())


def test_load_every_tiny_architecture(tiny_probe, arch):
    assert tiny_probe.model is not None
    assert len(tiny_probe.sites) > 0
    assert tiny_probe.adapter.denoiser_attr in ("unet", "transformer")


def test_load_from_a_pipeline_object_matches_the_directory(probe_factory):
    """nnsight 0.8.1 takes paths only; diffprobe wraps an already built pipeline itself."""
    from diffprobe.zoo.tiny import build_tiny

    from_object = diffprobe.load(build_tiny("sd15"))
    assert from_object.name == "StableDiffusionPipeline"
    assert from_object.sites.names == probe_factory("sd15").sites.names
    a = from_object.generate("a red sign", steps=2, seed=3).images
    b = probe_factory("sd15").generate("a red sign", steps=2, seed=3).images
    np.testing.assert_array_equal(a, b)  # same seeded weights, same image


@pytest.mark.parametrize("name", META_NAMES)
def test_meta_builds(meta_factory, name):
    probe = meta_factory(name)
    assert probe.model is None and probe.pipeline is None
    assert probe.name == f"{name}:meta"
    assert len(probe.sites) > 0 and probe.total_params > 500_000_000
    assert next(probe.denoiser.parameters()).device.type == "meta"


def test_unknown_meta_name_suggests_the_close_one():
    with pytest.raises(ModelLoadError, match=r"No bundled config 'sdxl-base':meta.*Did you mean 'sdxl-base-1.0'"):
        diffprobe.load("sdxl-base:meta")


def test_meta_probe_refuses_to_generate(meta_factory):
    probe = meta_factory("sd3-medium")
    with pytest.raises(DiffprobeError, match=r"weightless meta build.*load a real pipeline"):
        probe.generate("a sign", steps=2)
    with pytest.raises(DiffprobeError, match=r"weightless meta build"):
        probe.run([diffprobe.Variant("a sign")], steps=2)


def test_missing_path_names_the_path(tmp_path):
    missing = tmp_path / "no" / "such" / "model"
    with pytest.raises(ModelLoadError, match=r"the directory does not exist") as err:
        diffprobe.load(str(missing))
    assert str(missing.resolve()) in str(err.value)
    with pytest.raises(ModelLoadError, match=r"does not exist"):
        diffprobe.load(missing)  # a Path as well as a str
    with pytest.raises(ModelLoadError, match=r"does not exist"):
        diffprobe.load("./relative/missing-model")


def test_directory_without_model_index(tmp_path):
    (tmp_path / "unet").mkdir()
    with pytest.raises(ModelLoadError, match=r"no model_index\.json") as err:
        diffprobe.load(tmp_path)
    assert str(tmp_path) in str(err.value) and "save_pretrained" in str(err.value)


def test_absent_hub_weights_offline_say_where_and_how(monkeypatch, tmp_path):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    repo = "diffprobe-tests/no-such-pipeline"
    with pytest.raises(ModelLoadError) as err:
        diffprobe.load(repo)
    msg = str(err.value)
    assert repr(repo) in msg
    assert "Hugging Face cache" in msg and str(tmp_path / "hub-cache") in msg
    assert "HF_HUB_OFFLINE is set" in msg
    assert f"huggingface-cli download {repo}" in msg
    assert err.value.__cause__ is None and err.value.__suppress_context__  # raised `from None`


def test_cannot_load_other_objects():
    with pytest.raises(ModelLoadError, match=r"Cannot load a int"):
        diffprobe.load(42)
