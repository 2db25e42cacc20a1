"""CLIP-T: does the image still match its prompt? CLIPScore from local CLIP weights only.

CLIPScore (Hessel et al. 2021) is ``2.5 * max(cos(E_image, E_text), 0)`` with CLIP's projected
image and text embeddings; the paper uses CLIP ViT-B/32 and scores each image against the prompt
it was generated for. A text edit that breaks the scene shows up as a drop in CLIP-T.

diffprobe never downloads weights on its own. The metric runs only when the user points it at a
directory holding a saved ``CLIPModel`` and ``CLIPProcessor`` (``save_pretrained`` layout), e.g.::

    huggingface-cli download openai/clip-vit-base-patch32 --local-dir ~/weights/clip-b32

and passes ``clip_dir=~/weights/clip-b32``. Without it the metric is reported unavailable
(``clip_unavailable_reason``) and asking for it raises ``MetricError``; it is never faked.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from jaxtyping import Float, UInt8

from diffprobe.errors import MetricError

__all__ = ["clip_score", "clip_unavailable_reason", "CLIP_HINT"]

CLIP_HINT = (
    "Pass clip_dir=<directory> holding a saved CLIPModel and CLIPProcessor, e.g. after "
    "`huggingface-cli download openai/clip-vit-base-patch32 --local-dir <directory>`."
)
SCALE = 2.5  # CLIPScore's weight w


def clip_unavailable_reason(weights_dir: str | os.PathLike | None) -> str | None:
    """Why CLIP-T cannot run with these weights, or None when the directory looks usable."""
    if weights_dir is None:
        return f"clip_t needs local CLIP weights and none were given. {CLIP_HINT}"
    path = Path(weights_dir).expanduser()
    if not path.is_dir():
        return f"clip_t weights directory {str(path)!r} does not exist. {CLIP_HINT}"
    if not (path / "config.json").is_file():
        return f"clip_t weights directory {str(path)!r} has no config.json (not a saved CLIPModel). {CLIP_HINT}"
    return None


def clip_score(
    images: UInt8[np.ndarray, "sample height width 3"],
    prompts: Sequence[str],
    weights_dir: str | os.PathLike | None,
    *,
    device: str | None = None,
    batch_size: int = 32,
) -> Float[np.ndarray, "sample"]:
    """CLIPScore ``2.5 * max(cos, 0)`` of each image with its prompt, from local CLIP weights."""
    reason = clip_unavailable_reason(weights_dir)
    if reason:
        raise MetricError(reason)
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise MetricError(f"clip_score expects images shaped (sample, height, width, 3); got {images.shape}.")
    if len(prompts) != len(images):
        raise MetricError(
            f"clip_score needs one prompt per image; got {len(prompts)} prompts for {len(images)} images."
        )
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, processor = _load(str(Path(weights_dir).expanduser().resolve()), device)
    scores = [
        _score_batch(model, processor, images[i : i + batch_size], list(prompts[i : i + batch_size]), device)
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(scores) if scores else np.zeros(0, dtype=np.float64)


@functools.lru_cache(maxsize=2)
def _load(path: str, device: str):
    from transformers import CLIPModel, CLIPProcessor

    try:
        model = CLIPModel.from_pretrained(path, local_files_only=True).to(device).eval()
        processor = CLIPProcessor.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as err:
        raise MetricError(f"could not load CLIP weights from {path!r}: {err}. {CLIP_HINT}") from None
    return model, processor


def _score_batch(model, processor, images: np.ndarray, prompts: list[str], device: str) -> np.ndarray:
    import torch
    from PIL import Image

    inputs = processor(
        text=prompts,
        images=[Image.fromarray(img) for img in images],
        return_tensors="pt",
        padding=True,
        truncation=True,
    ).to(device)
    with torch.no_grad():
        out = model(**inputs)
    img = torch.nn.functional.normalize(out.image_embeds.double(), dim=-1)
    txt = torch.nn.functional.normalize(out.text_embeds.double(), dim=-1)
    cos = (img * txt).sum(dim=-1)
    return (SCALE * cos.clamp(min=0)).cpu().numpy()
