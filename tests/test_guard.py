"""Toxic-text prevention (diffprobe.safety) and the `guard` command, on the tiny SD1.5 pipeline.

- the screen's known answers: alt-profanity-check's scores of fixed words, the threshold, the block list;
- the fix is exactly an Inject of the benign prompt at the named sites from t_s (bit for bit, same batch
  composition), and changes the text K/V only there and then (other sites and earlier steps within the row
  tolerance of batched kernels, as in tests/test_engine.py); a prompt the screen passes is generated unchanged;
- bad input is one DiffprobeError naming the option; the comparison has one row per defence.
"""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from typer.testing import CliRunner

from diffprobe import Capture, DiffprobeError, Inject, InterventionError, Variant
from diffprobe.cli import app
from diffprobe.safety import (
    GLYPH_BLOCKLIST, Screen, compare, default_sites, guard, markdown_table, quoted_text, read_blocklist,
)

PROMPT = 'A sign that says "STOP".'
KV_ATOL = 1e-5  # two batch rows with identical inputs (tests/test_engine.py)
runner = CliRunner()


def test_screen_known_answers():
    screen = Screen()
    dog, fuck, love = screen(["DOG", "fuck", "LOVE"])
    assert dog.score == pytest.approx(0.4994, abs=1e-3) and not dog.flagged  # just under the default 0.5
    assert fuck.score > 0.9 and fuck.flagged and "classifier" in fuck.reason
    assert love.score < 0.1 and not love.flagged
    assert Screen(threshold=0.45)("DOG").flagged
    v = Screen(blocklist=("Stop",))("please STOP now")
    assert v.flagged and v.blocked == ("stop",) and v.threshold == 0.5 and v.to_dict()["reason"] == "block list: stop"
    assert not Screen(blocklist=("stop",))("stopwatch").flagged  # whole words only


def test_blocklist_file(tmp_path):
    path = tmp_path / "words.txt"
    path.write_text("# comment\nDog\n\n  moon  # trailing\n")
    assert read_blocklist(path) == ("dog", "moon")
    assert Screen.from_file(GLYPH_BLOCKLIST).blocklist == ("dog", "stop", "exit", "moon")


def test_quoted_text_and_default_sites():
    assert quoted_text(PROMPT) == "STOP"
    assert default_sites(SimpleNamespace(name="glyph")).endswith("localized.json")  # shipped with the model
    with pytest.raises(InterventionError, match="no saved localization") as err:
        default_sites(SimpleNamespace(name="/nowhere"))
    assert err.value.field == "sites"


def test_the_fix_is_an_inject_at_the_named_sites_and_steps(probe_factory):
    probe = probe_factory("sd15")
    screen = Screen(blocklist=("stop",))
    res = guard(probe, PROMPT, screen=screen, sites="cross:2", t_start=1, benign="GO", steps=3, undefended=True)
    assert res.fired and res.safe_prompt == 'A sign that says "GO".' and res.sites == ("cross:2",)
    fix = Inject(prompt=res.safe_prompt, sites="cross:2", steps="1:")
    same = probe.run([Variant(PROMPT), Variant(PROMPT, (fix,))], steps=3).images
    assert np.array_equal(res.image, same[1]) and np.array_equal(res.undefended, same[0])  # same batch: bit for bit
    assert not np.array_equal(res.image, res.undefended)

    cap = Capture(what="kv", sites="cross:all")
    kv = probe.run([Variant(PROMPT, (cap,)), Variant(PROMPT, (fix, cap))], steps=3).captures
    for site in probe.sites.of_kind("cross"):
        for part in ("k", "v"):
            x = kv[f"kv:{site.label}:{part}"].values  # (sample, step, token, head, channel)
            if site.label == "cross:2":
                np.testing.assert_allclose(x[1, :1], x[0, :1], atol=KV_ATOL, rtol=KV_ATOL)  # before t_s
                assert np.abs(x[1, 1:] - x[0, 1:]).max() > 1e-3  # from t_s on: the benign prompt's K/V
            else:
                np.testing.assert_allclose(x[1], x[0], atol=KV_ATOL, rtol=KV_ATOL)


def test_a_passed_prompt_is_generated_unchanged(probe_factory):
    probe = probe_factory("sd15")
    res = guard(probe, 'A sign that says "HI".', screen=Screen(blocklist=("stop",)), sites="cross:2", steps=2)
    assert not res.fired and res.benign is None and res.sites == ()
    assert np.array_equal(res.image, probe.generate('A sign that says "HI".', steps=2).images[0])


def test_benign_word_is_drawn_with_the_seed(probe_factory):
    probe = probe_factory("sd15")
    kw = dict(screen=Screen(blocklist=("stop",)), sites="cross:2", t_start=0, steps=1, benign_words=("GO", "HI", "OK"))
    assert guard(probe, PROMPT, benign_seed=3, **kw).benign == guard(probe, PROMPT, benign_seed=3, **kw).benign
    assert {guard(probe, PROMPT, benign_seed=s, **kw).benign for s in range(6)} <= {"GO", "HI", "OK"}


def test_bad_input_is_refused(probe_factory):
    probe = probe_factory("sd15")
    for bad, field in ((dict(threshold=2), "threshold"), (dict(blocklist="stop"), "blocklist"),
                       (dict(blocklist=("two words",)), "blocklist")):
        with pytest.raises(DiffprobeError) as err:
            Screen(**bad)
        assert err.value.field == field
    with pytest.raises(InterventionError, match="double quotes") as err:
        guard(probe, "a sign", sites="cross:0", steps=1)
    assert err.value.field == "prompt"
    with pytest.raises(InterventionError, match="no saved localization"):
        guard(probe, PROMPT, screen=Screen(blocklist=("stop",)), steps=1)
    with pytest.raises(InterventionError, match="benign words"):
        guard(probe, PROMPT, screen=Screen(blocklist=("stop", "go")), benign_words=("GO",), sites="cross:0", steps=1)
    with pytest.raises(InterventionError, match="does not flag"):
        compare(probe, ['A sign that says "HI".'], screen=Screen(), sites="cross:0", steps=1)


def test_comparison_rows(probe_factory):
    probe = probe_factory("sd15")
    rows = compare(probe, [PROMPT], screen=Screen(blocklist=("stop",)), sites="cross:2", t_start=1, steps=2,
                   benign_words=("GO",), box=(0, 0, 8, 8))
    assert [r["method"].split(" (")[0].split(" from")[0] for r in rows] == [
        "no defence", "localized fix", "all text sites", "negative prompt naming the word", "prompt swap"]
    assert rows[0]["ssim_outside"] == pytest.approx(1.0) and rows[0]["psnr_outside"] == 100.0
    assert all(0.0 <= r["toxic_left"] <= 1.0 and r["seconds"] > 0 for r in rows)
    assert markdown_table(rows).count("\n") == len(rows) + 1


def test_guard_command(tiny_dirs, tmp_path):
    words = tmp_path / "block.txt"
    words.write_text("stop\n")
    out = tmp_path / "g"
    res = runner.invoke(app, ["guard", "--model", str(tiny_dirs("sd15")), "--prompt", PROMPT, "--blocklist",
                              str(words), "--sites", "cross:2", "--t-start", "1", "--steps", "2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    record = json.loads((out / "guard.json").read_text())
    assert record["fired"] and record["screen"]["blocked"] == ["stop"] and record["screen"]["threshold"] == 0.5
    assert (out / "image.png").exists() and (out / "undefended.png").exists()
    bad = runner.invoke(app, ["guard", "--model", str(tiny_dirs("sd15")), "--prompt", PROMPT, "--threshold", "7",
                              "--out", str(out)])
    assert bad.exit_code == 2 and "--threshold" in bad.output
