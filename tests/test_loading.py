"""Loading: save_pretrained directories, pipeline objects, bundled meta configs, and clear failures."""
from __future__ import annotations

from pathlib import Path

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


# -- hub ids, the HF cache, and folders diffprobe refuses to run ------------------------------------

def _fake_hub_cache(cache: Path, repo_id: str, folder: Path, commit: str = "0" * 40) -> Path:
    """Lay out ``folder`` as the Hugging Face cache does: models--owner--name/{refs/main, snapshots/<commit>}."""
    import shutil

    repo = cache / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    return repo / "snapshots" / commit


@pytest.mark.parametrize("repo_id", ["diffprobe-tests/stable-diffusion-xl-base-1.0", "diffprobe-tests/FLUX.1-dev"])
def test_dotted_hub_id_loads_from_the_hf_cache(monkeypatch, tmp_path, tiny_dirs, repo_id):
    """The README's own ids have dots; they are hub ids, not file names (a folder of that name wins, if any)."""
    import huggingface_hub.constants as hub_constants

    monkeypatch.chdir(tmp_path)  # no folder named like the repo id here
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    _fake_hub_cache(tmp_path / "hub", repo_id, tiny_dirs("sd15"))
    probe = diffprobe.load(repo_id)
    assert probe.name == repo_id
    assert probe.sites.counts() == {"self": 7, "cross": 7}
    np.testing.assert_array_equal(
        probe.generate("a red sign", steps=2, seed=3).images,
        diffprobe.load(tiny_dirs("sd15")).generate("a red sign", steps=2, seed=3).images,
    )


def test_a_missing_dotted_hub_id_is_not_called_a_missing_folder(monkeypatch, tmp_path):
    import huggingface_hub.constants as hub_constants

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelLoadError) as err:
        diffprobe.load("stabilityai/stable-diffusion-xl-base-1.0")
    msg = str(err.value)
    assert "directory does not exist" not in msg and "Hugging Face cache" in msg
    assert "stacktrace" not in msg and "huggingface-cli download stabilityai/stable-diffusion-xl-base-1.0" in msg


def test_pickle_checkpoints_are_refused_with_the_reason(tmp_path):
    from diffprobe.zoo.tiny import build_tiny

    build_tiny("sd15").save_pretrained(tmp_path / "pickled", safe_serialization=False)
    with pytest.raises(ModelLoadError) as err:
        diffprobe.load(tmp_path / "pickled")
    msg = str(err.value)
    assert "pickle" in msg and "arbitrary code" in msg and "save_pretrained" in msg


def test_custom_code_is_refused_without_suggesting_an_argument_load_lacks(tmp_path, tiny_dirs):
    import json
    import shutil

    folder = tmp_path / "custom"
    shutil.copytree(tiny_dirs("sd15"), folder)
    index = json.loads((folder / "model_index.json").read_text())
    index["_class_name"] = "MyCustomPipeline"
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError) as err:
        diffprobe.load(folder)
    msg = str(err.value)
    assert "MyCustomPipeline" in msg and "diffprobe.load(pipeline)" in msg
    assert "pass the object" in msg


def test_broken_model_index_is_named(tmp_path):
    (tmp_path / "model_index.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match=r"model_index\.json is not a valid pipeline index"):
        diffprobe.load(tmp_path)
