"""Shared fixtures: tiny random-weight pipelines loaded through the real loading path.

Each tiny pipeline (``diffprobe.zoo.tiny``) is built from configs with a local character-level
tokenizer, written with ``save_pretrained`` into a session temp directory and loaded back with
``diffprobe.load(directory)`` -- the path a user's checkpoint takes. Builds take well under a
second each and are cached for the session; the meta builds of the full-size configs likewise.
No test here touches the network.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# The tiny models gain nothing from threads, and on a shared CPU extra threads slow them ~10x.
torch.set_num_threads(int(os.environ.get("DIFFPROBE_TEST_THREADS", "1")))

#: Every architecture with a tiny pipeline, and the text-carrying site kinds of each.
ARCHS = ("sd15", "sdxl", "if", "sd3", "flux", "pixart")
TEXT_SITES = {
    "sd15": "cross:all", "sdxl": "cross:all", "if": "cross:all", "sd3": "joint:all",
    "flux": "joint:all single:all", "pixart": "cross:all",
}
#: Image size per architecture when the pipeline's default is large (FLUX defaults to 256 px).
SIZE = {"flux": {"height": 32, "width": 32}}
#: The five bundled full-size configs.
META_NAMES = ("sd-1.5", "sdxl-base-1.0", "sd3-medium", "if-i-xl", "flux.1-dev")


def _quiet() -> None:
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        import huggingface_hub.utils as hub_utils

        hub_utils.disable_progress_bars()
    except (ImportError, AttributeError):  # pragma: no cover - older hubs
        pass


def pytest_configure(config):
    for line in (
        "ignore:(?s).*steps_offset:FutureWarning",
        "ignore:.*requires torchvision.*",
        "ignore:__array__ implementation doesn.t accept a copy keyword:DeprecationWarning",
    ):
        config.addinivalue_line("filterwarnings", line)


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    """arch -> a directory written by ``save_pretrained`` (built on first use)."""
    from diffprobe.zoo.tiny import save_tiny

    cache: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in cache:
            _quiet()
            cache[arch] = save_tiny(arch, tmp_path_factory.mktemp(f"tiny-{arch}"))
        return cache[arch]

    return get


@pytest.fixture(scope="session")
def probe_factory(tiny_dirs):
    """``probe_factory(arch)``: the session's Probe for a tiny pipeline; ``fresh=True`` loads a new one."""
    import diffprobe

    cache: dict[str, object] = {}

    def get(arch: str, fresh: bool = False):
        if fresh:
            _quiet()
            return diffprobe.load(tiny_dirs(arch))
        if arch not in cache:
            _quiet()
            cache[arch] = diffprobe.load(tiny_dirs(arch))
        return cache[arch]

    return get


@pytest.fixture(scope="session")
def meta_factory():
    """``meta_factory(name)``: a cached Probe over the full-size ``<name>:meta`` denoiser."""
    import diffprobe

    cache: dict[str, object] = {}

    def get(name: str):
        if name not in cache:
            cache[name] = diffprobe.load(f"{name}:meta")
        return cache[name]

    return get


@pytest.fixture(params=ARCHS)
def arch(request) -> str:
    """Parametrizes a test over every tiny architecture."""
    return request.param


@pytest.fixture
def tiny_probe(probe_factory, arch):
    return probe_factory(arch)
