"""Text editing (diffprobe.edit) and the `attend` / `edit` commands, on tiny pipelines.

- edit_text returns the source image (bit-identical to the same row of an unedited batch) and an edited one;
- Inject on cross sites, Patch on joint sites; sites from a selection, localized.json or a list;
- bad input is one error naming the option: a text the tokenizer cannot express, self-attention sites,
  t_s past the last step, a prompt without a quoted text;
- the comparison yields one row per method with every metric; the commands write their pages.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from diffprobe import Inject, InterventionError, Patch, Variant
from diffprobe.cli import app
from diffprobe.edit import compare, edit_intervention, edit_text, glyph_text_box, image_scores, markdown_table
from diffprobe.edit import resolve_sites, target_prompt

PROMPT = 'A sign that says "STOP".'
runner = CliRunner()


def test_target_prompt_replaces_the_quoted_text():
    assert target_prompt(PROMPT, "GO") == 'A sign that says "GO".'
    with pytest.raises(InterventionError, match="quoted"):
        target_prompt("a sign", "GO")


def test_edit_text_keeps_the_source_and_changes_the_edited_image(probe_factory):
    probe = probe_factory("sd15")
    result = edit_text(probe, PROMPT, "GO", sites="cross:1-3", t_start=1, steps=3)
    plain = probe.run([Variant(PROMPT), Variant(PROMPT, (Inject(prompt="x", sites="cross:0"),))], steps=3).images
    assert np.array_equal(result.source, plain[0])
    assert not np.array_equal(result.edited, result.source)
    assert result.sites == ("cross:1", "cross:2", "cross:3") and result.target_prompt == 'A sign that says "GO".'


def test_joint_sites_are_edited_by_patch_and_cross_by_inject(probe_factory):
    assert isinstance(edit_intervention(probe_factory("sd3"), "a", "joint:0", 1), Patch)
    assert isinstance(edit_intervention(probe_factory("sd15"), "a", "cross:0", 1), Inject)


def test_bad_input_is_refused(probe_factory):
    probe = probe_factory("sd15")
    with pytest.raises(InterventionError, match="cannot express") as err:
        edit_text(probe, PROMPT, "ÉTÉ", sites="cross:0", steps=2)  # outside the character vocabulary
    assert err.value.field == "text"
    with pytest.raises(InterventionError, match="self-attention"):
        edit_text(probe, PROMPT, "GO", sites="self:0", steps=2)
    with pytest.raises(InterventionError, match="outside the run") as err:
        edit_text(probe, PROMPT, "GO", sites="cross:0", t_start=5, steps=3)
    assert err.value.field == "steps"
    with pytest.raises(InterventionError, match="name the sites"):
        edit_text(probe, PROMPT, "GO", steps=2)


def test_sites_come_from_localized_json(probe_factory, tmp_path):
    from diffprobe.localization import Localized

    probe = probe_factory("sd15")
    chosen = probe.sites.parse("cross:2 cross:4")
    loc = Localized(model="tiny", labels=tuple(s.label for s in chosen), names=tuple(s.name for s in chosen),
                    t_start=2, steps=3, metric="ocr_f1_target", score=0.9, threshold=0.5,
                    intervention={"kind": "inject"}, params={})
    (tmp_path / "localized.json").write_text(json.dumps(loc.to_dict()))
    assert resolve_sites(probe, tmp_path) == ("cross:2 cross:4", 2)
    assert resolve_sites(probe, tmp_path / "localized.json") == ("cross:2 cross:4", 2)
    assert resolve_sites(probe, list(chosen)) == ("cross:2 cross:4", None)


def test_image_scores_outside_the_box():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 255, (32, 96, 3), dtype=np.uint8)
    b = a.copy()
    box = glyph_text_box(["STOP", "HELLO"])
    b[box[1]:box[3], box[0]:box[2]] = 0  # change only inside the text box
    s = image_scores(b, a, box)
    assert s["mse_outside"] == 0 and s["mse"] > 0 and s["ssim"] < 1
    assert 0 < box[0] < box[2] <= 96 and 0 <= box[1] < box[3] <= 32


def test_the_comparison_has_one_row_per_method(probe_factory):
    from diffprobe.bench import PromptPair
    from diffprobe.metrics.ocr import engine_unavailable_reason

    if engine_unavailable_reason() is not None:
        pytest.skip("needs Tesseract")
    pairs = [PromptPair(PROMPT, 'A sign that says "GOGO".', "STOP", "GOGO")]
    rows = compare(probe_factory("sd15"), pairs, top=["cross:1", "cross:2"], t_start=1, steps=3,
                   box=(2, 2, 10, 10))
    names = [r["method"] for r in rows]
    assert len(rows) == 6 and names[0].startswith("source") and "prompt-to-prompt" in names[-1]
    assert rows[0]["mse"] == 0 and rows[0]["mse_outside"] == 0
    assert "| method |" in markdown_table(rows)


def test_attend_command_writes_a_self_contained_page(tiny_dirs, tmp_path):
    out = tmp_path / "att"
    res = runner.invoke(app, ["attend", "--model", str(tiny_dirs("sd15")), "--prompt", PROMPT + " <script>",
                              "--sites", "cross:0", "--steps", "2", "--out", str(out)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    page = (out / "attention.html").read_text()
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    assert "<script>\"" not in page and "&lt;script&gt;" in page
    assert len(list((out / "overlays").glob("*.png"))) == 1  # one word: the quoted STOP


def test_edit_command_and_its_one_line_errors(tiny_dirs, tmp_path):
    model = str(tiny_dirs("sd15"))
    res = runner.invoke(app, ["edit", "--model", model, "--prompt", PROMPT, "--text", "GO", "--sites", "cross:0",
                              "--t-start", "9", "--steps", "3", "--out", str(tmp_path / "e")])
    assert res.exit_code == 2 and "--t-start" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["edit", "--model", model, "--prompt", PROMPT, "--text", "GO", "--sites", "self:0",
                              "--steps", "2", "--out", str(tmp_path / "e")])
    assert res.exit_code == 2 and "self-attention" in res.output
    res = runner.invoke(app, ["edit", "--model", model, "--prompt", PROMPT, "--text", "GO", "--sites", "cross:0",
                              "--t-start", "1", "--steps", "2", "--out", str(tmp_path / "e")], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert (tmp_path / "e" / "edited.png").exists() and (tmp_path / "e" / "edit.html").exists()


def test_edit_compare_command_writes_the_table(tiny_dirs, tmp_path):
    from diffprobe.metrics.ocr import engine_unavailable_reason

    if engine_unavailable_reason() is not None:
        pytest.skip("needs Tesseract")
    res = runner.invoke(app, ["edit", "--model", str(tiny_dirs("sd15")), "--compare", "1", "--sites", "cross:1",
                              "--t-start", "1", "--steps", "2", "--out", str(tmp_path / "c")], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    table = (tmp_path / "c" / "comparison.md").read_text()
    assert "prompt-to-prompt" in table and "localized top-1 (cross:1)" in table
    assert json.loads((tmp_path / "c" / "comparison.json").read_text())["rows"][0]["method"].startswith("source")
