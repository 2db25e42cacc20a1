"""The metric registry: names, validation, batch compute with shared OCR, and CLIP-T's code path."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from diffprobe.errors import MetricError
from diffprobe.metrics import DEFAULT_METRICS, METRICS, clip_score, compute, list_metrics, ocr, unavailable, validate
from diffprobe.metrics import registry

FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf")
REQUIRED = [
    *(f"{stem}_{against}" for against in ("target", "source")
      for stem in ("ocr_precision", "ocr_recall", "ocr_f1", "exact", "lev")),
    "mse", "psnr", "ssim", "clip_t",
]


def render(text, size=(192, 64), font_size=36):
    font = ImageFont.truetype(str(FONT), font_size) if FONT.exists() else ImageFont.load_default(size=font_size)
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    draw.text(((size[0] - right + left) / 2 - left, (size[1] - bottom + top) / 2 - top), text, font=font, fill="black")
    return np.asarray(img)


def test_registry_names_and_defaults():
    names = [name for name, _ in list_metrics()]
    assert set(REQUIRED) <= set(names)
    assert all(desc for _, desc in list_metrics())
    assert DEFAULT_METRICS == [n for n in names if n not in ("clip_t", "moved_target")]
    assert METRICS["mse"].needs == {"source_images"}
    assert METRICS["moved_target"].needs == {"source_images", "target_images"}
    assert METRICS["ocr_f1_source"].needs == {"ocr"}


def test_unknown_metric_suggests_the_close_name():
    with pytest.raises(MetricError, match=r"unknown metric 'ocr_f1_targt'.*Did you mean 'ocr_f1_target'"):
        validate(["ocr_f1_targt"])
    with pytest.raises(MetricError, match="more than once"):
        validate(["mse", "mse"])
    with pytest.raises(MetricError, match="no metrics"):
        validate([])
    assert validate("psnr") == ["psnr"]


def test_a_derived_metric_is_not_asked_for_but_says_where_it_is():
    with pytest.raises(MetricError, match=r"'moved_target' is in every result.*--metric moved_target"):
        validate(["ocr_f1_target", "moved_target"])
    with pytest.raises(MetricError) as err:
        validate(["moved_targe"])
    assert "moved_target" not in str(err.value).split("Valid metrics:")[1]  # offered only where it can be used


def test_compute_with_given_ocr_texts_hand_checked():
    images = np.stack([np.full((8, 8, 3), 100, np.uint8), np.full((8, 8, 3), 50, np.uint8)])
    sources = np.stack([np.full((8, 8, 3), 110, np.uint8), np.full((8, 8, 3), 50, np.uint8)])
    out = compute(
        DEFAULT_METRICS,
        images=images,
        source_images=sources,
        source_texts=["stop", "cat"],
        target_texts=["go", "chat"],
        ocr_texts=["go", "cat"],
    )
    assert set(out) == set(DEFAULT_METRICS) | {"ocr_text"}
    assert list(out["ocr_text"]) == ["go", "cat"]
    for name in DEFAULT_METRICS:
        assert out[name].dtype == np.float64 and out[name].shape == (2,)
    np.testing.assert_allclose(out["ocr_precision_target"], [1.0, 1.0])
    np.testing.assert_allclose(out["ocr_recall_target"], [1.0, 0.75])
    np.testing.assert_allclose(out["exact_target"], [1.0, 0.0])
    np.testing.assert_allclose(out["exact_source"], [0.0, 1.0])
    np.testing.assert_allclose(out["lev_target"], [0.0, 1.0])
    np.testing.assert_allclose(out["lev_source"], [3.0, 0.0])  # go -> stop: s+, g->t, p+
    np.testing.assert_allclose(out["ocr_precision_source"], [0.5, 1.0])  # 'go' vs 'stop' shares 'o'
    np.testing.assert_allclose(out["ocr_recall_source"], [0.25, 1.0])
    np.testing.assert_allclose(out["mse"], [100.0, 0.0])
    assert out["psnr"][0] == pytest.approx(10 * math.log10(255**2 / 100)) and out["psnr"][1] == math.inf
    assert out["ssim"][1] == pytest.approx(1.0)


@pytest.mark.skipif(not ocr.tesseract_available(), reason="tesseract-ocr not installed")
def test_compute_runs_ocr_once_and_shares_it(monkeypatch):
    calls = []
    real = ocr.read_texts
    monkeypatch.setattr(ocr, "read_texts", lambda imgs: calls.append(len(imgs)) or real(imgs))
    images = np.stack([render("STOP"), render("GO")])
    out = compute(
        ["ocr_f1_target", "ocr_f1_source", "exact_target"],
        images=images, source_images=None, source_texts=["go", "stop"], target_texts=["stop", "go"],
    )
    assert calls == [2]
    assert list(out["ocr_text"]) == ["stop", "go"]
    np.testing.assert_allclose(out["ocr_f1_target"], [1.0, 1.0])
    np.testing.assert_allclose(out["exact_target"], [1.0, 1.0])


def test_compute_without_text_metrics_needs_no_ocr(monkeypatch):
    monkeypatch.setattr(ocr, "read_texts", lambda imgs: pytest.fail("OCR should not run"))
    img = np.zeros((1, 8, 8, 3), np.uint8)
    out = compute(["mse"], images=img, source_images=img, source_texts=["a"], target_texts=["b"])
    assert set(out) == {"mse"}


def test_compute_refuses_missing_or_mismatched_inputs():
    img = np.zeros((2, 8, 8, 3), np.uint8)
    kw = dict(images=img, source_texts=["a", "b"], target_texts=["c", "d"])
    with pytest.raises(MetricError, match="pass source_images"):
        compute(["ssim"], source_images=None, **kw)
    with pytest.raises(MetricError, match="source_images has shape"):
        compute(["ssim"], source_images=img[:1], **kw)
    with pytest.raises(MetricError, match="target_texts has 1 entries"):
        compute(["mse"], source_images=img, images=img, source_texts=["a", "b"], target_texts=["c"])
    with pytest.raises(MetricError, match="ocr_texts has 3 entries"):
        compute(["exact_target"], source_images=None, ocr_texts=["x"] * 3, **kw)
    with pytest.raises(MetricError, match="pass prompts"):
        compute(["clip_t"], source_images=None, **kw)


def test_clip_t_unavailable_without_weights_is_never_faked(tmp_path):
    img = np.zeros((1, 8, 8, 3), np.uint8)
    assert "clip_t" in unavailable()
    assert "clip_t" not in unavailable(DEFAULT_METRICS)
    for clip_dir in (None, tmp_path / "absent", tmp_path):
        with pytest.raises(MetricError, match="clip_dir"):
            compute(["clip_t"], images=img, source_images=None, source_texts=["a"], target_texts=["b"],
                    prompts=["a sign"], clip_dir=clip_dir)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A random CLIPModel with tiny dims and a locally built character tokenizer, saved to disk."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    path = tmp_path_factory.mktemp("tiny-clip")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for ch in "abcdefghijklmnopqrstuvwxyz.\"'":
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    (path / "vocab.json").write_text(json.dumps(vocab))
    (path / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(path / "vocab.json"), str(path / "merges.txt"), model_max_length=32)
    small = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), max_position_embeddings=32, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1, **small),
        vision_config=dict(image_size=32, patch_size=8, **small),
        projection_dim=8,
    )
    CLIPModel(config).save_pretrained(path)
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(path)
    return path


def test_clip_score_code_path_with_tiny_local_model(tiny_clip):
    import torch
    from transformers import CLIPModel, CLIPProcessor

    images = np.random.default_rng(0).integers(0, 256, (3, 40, 48, 3), dtype=np.uint8)
    prompts = ["a sign that says stop", "a cat", "hello there"]
    scores = clip_score(images, prompts, tiny_clip, device="cpu")
    assert scores.shape == (3,) and scores.dtype == np.float64
    assert np.all((scores >= 0) & (scores <= 2.5))
    # Cross-check against CLIP's own logits: logits_per_image = exp(logit_scale) * cos.
    model, processor = CLIPModel.from_pretrained(tiny_clip), CLIPProcessor.from_pretrained(tiny_clip)
    inputs = processor(text=prompts, images=[Image.fromarray(i) for i in images], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**inputs)
        cos = (out.logits_per_image.diagonal() / model.logit_scale.exp()).double().numpy()
    np.testing.assert_allclose(scores, 2.5 * np.maximum(cos, 0), atol=1e-5)
    via_registry = compute(["clip_t"], images=images, source_images=None, source_texts=[""] * 3,
                           target_texts=[""] * 3, prompts=prompts, clip_dir=tiny_clip)
    np.testing.assert_allclose(via_registry["clip_t"], scores, atol=1e-6)
    assert "clip_t" not in unavailable(["clip_t"], clip_dir=tiny_clip)


def test_clip_score_refuses_mismatched_prompts(tiny_clip):
    with pytest.raises(MetricError, match="one prompt per image"):
        clip_score(np.zeros((2, 32, 32, 3), np.uint8), ["only one"], tiny_clip)
