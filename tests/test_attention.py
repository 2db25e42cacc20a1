"""Attention maps (diffprobe.attention): exact against the processors' own query and key, free, and flat in memory.

- values: the maps equal ``softmax(q k^T / sqrt(d))`` built by hand from the query and key that
  ``scaled_dot_product_attention`` itself receives in a plain pipeline call (norms and FLUX's rotary embedding
  already applied by the processor), image-query x text-key block, on the tiny pipeline of every architecture;
- capturing never changes the image: bit-identical to the same row of an uncaptured call of the same batch;
- over plain cross attention a query's probabilities sum to 1 over the text tokens;
- memory: the running sums do not grow with the number of steps; per-step maps average to the streamed mean;
- words map to their tokens through the tokenizer's offsets (character-level tiny tokenizer; word-level glyph);
- prompt-to-prompt (ReplaceAttention): the source's own maps change nothing; another source's maps change the image.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import SIZE, TEXT_SITES
from diffprobe import InterventionError, Variant
from diffprobe.attention import attend, run, token_table, word_tokens
from diffprobe.interventions import AttentionMap, ReplaceAttention

PROMPT = 'A sign that says "STOP".'
STEPS = 2


def _reference(probe, arch: str, site, steps: int = STEPS) -> np.ndarray:
    """(token, query): mean over steps and heads of the processor's own probabilities, cond half, from a plain call."""
    module = probe.denoiser.get_submodule(site.name)
    calls, current = [], {}

    def pre(mod, args, kwargs):
        hs = kwargs.get("hidden_states", args[0] if args else None)
        ehs = kwargs.get("encoder_hidden_states", args[1] if len(args) > 1 else None)
        current["active"] = True
        current["n_img"] = hs.shape[1] if hs.ndim == 3 else hs.shape[2] * hs.shape[3]
        current["n_text"] = None if ehs is None else ehs.shape[1]

    def post(mod, args, out):
        current["active"] = False

    real = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kw):
        q, k = (kw.get(name, args[i] if len(args) > i else None) for i, name in enumerate(("query", "key")))
        if current.get("active"):
            assert kw.get("scale") is None  # the processors use the default 1/sqrt(d)
            mask = kw.get("attn_mask", args[3] if len(args) > 3 else None)
            calls.append((q.detach().clone(), k.detach().clone(), mask, dict(current)))
        return real(*args, **kw)

    handles = [module.register_forward_pre_hook(pre, with_kwargs=True), module.register_forward_hook(post)]
    torch.nn.functional.scaled_dot_product_attention = spy
    try:
        probe.pipeline(PROMPT, generator=[torch.Generator().manual_seed(0)], num_inference_steps=steps,
                       output_type="np", **probe.adapter.call_kwargs(probe.pipeline), **SIZE.get(arch, {}))
    finally:
        torch.nn.functional.scaled_dot_product_attention = real
        for h in handles:
            h.remove()
    assert len(calls) == steps
    text_len = probe.adapter.text_len(probe.pipeline, probe.adapter.call_kwargs(probe.pipeline))
    maps = []
    for q, k, mask, info in calls:
        row = q.shape[0] - 1  # [uncond, cond] under CFG; the only row without
        logits = (q[row].double() @ k[row].double().transpose(-1, -2)) / np.sqrt(q.shape[-1])
        if mask is not None:
            logits = logits + mask.reshape(q.shape[0], -1, 1, k.shape[2])[row].double()
        p = torch.softmax(logits, -1)  # (head, query, key)
        n_img = info["n_img"]
        if site.kind == "single":
            p = p[:, text_len:, :text_len]
        elif site.kind == "joint" and arch == "flux":  # [text, image]
            p = p[:, info["n_text"]:, :info["n_text"]]
        elif site.kind == "joint":  # SD3: [image, text]
            p = p[:, :n_img, n_img:]
        elif site.kv[0] == "add_k_proj":  # IF added-KV: keys [text, image]
            p = p[:, :, : k.shape[2] - n_img]
        maps.append(p.mean(0).T)
    return torch.stack(maps).mean(0).float().numpy()


def _sites(probe, arch):
    return list(probe.sites.parse(TEXT_SITES[arch]))


def test_maps_match_the_processors_own_probabilities(tiny_probe, arch):
    for site in (_sites(tiny_probe, arch)[0], _sites(tiny_probe, arch)[-1]):
        ref = _reference(tiny_probe, arch, site)
        got = attend(tiny_probe, PROMPT, steps=STEPS, sites=[site], **SIZE.get(arch, {})).maps
        got = got.isel(sample=0).values.reshape(got.sizes["token"], -1)
        assert got.shape == ref.shape, (site, got.shape, ref.shape)
        np.testing.assert_allclose(got, ref, atol=2e-6, rtol=1e-4, err_msg=str(site))


def test_capturing_never_changes_the_image(tiny_probe, arch):
    size = SIZE.get(arch, {})
    cap = AttentionMap(sites=TEXT_SITES[arch], per_step=True)
    plain = tiny_probe.run([Variant(PROMPT, seed=0), Variant("a cat", seed=1)], steps=STEPS, **size).images
    gen, maps, _ = run(tiny_probe, [Variant(PROMPT, (cap,), 0), Variant("a cat", seed=1)], steps=STEPS, **size)
    assert np.array_equal(plain, gen.images)
    assert maps["attention"].dims == ("sample", "step", "token", "y", "x")


@pytest.mark.parametrize("arch", ["sd15", "pixart"])
def test_cross_attention_rows_sum_to_one(probe_factory, arch):
    maps = attend(probe_factory(arch), [PROMPT, "a cat"], steps=STEPS, sites="cross:all", heads=[0]).maps
    np.testing.assert_allclose(maps.sum("token").values, 1.0, atol=1e-5)
    assert maps.attrs["heads"] == [0] and maps.attrs["steps"] == [0, 1]


def test_joint_attention_rows_sum_to_the_share_of_text(probe_factory):
    maps = attend(probe_factory("sd3"), PROMPT, steps=STEPS, sites="joint:0").maps
    total = maps.sum("token").values
    assert (total > 0).all() and (total < 1).all()


def test_memory_does_not_grow_with_steps(probe_factory):
    from diffprobe.engine import run_plan
    from diffprobe.plan import make_plan

    probe = probe_factory("sd15")
    sizes = []
    for steps in (2, 6):
        plan = make_plan([Variant(PROMPT, (AttentionMap(sites="cross:all"),))], probe.sites, steps)
        store = run_plan(probe, plan, guidance=None, height=None, width=None).maps
        sizes.append(sum(g.total.numel() for sums in store.sums.values() for g in sums.values()))
    assert sizes[0] == sizes[1]


def test_per_step_maps_average_to_the_streamed_mean(probe_factory):
    probe = probe_factory("sd15")
    mean = attend(probe, PROMPT, steps=3, sites="cross:1", window="1:").maps
    per = attend(probe, PROMPT, steps=3, sites="cross:1", window="1:", per_step=True).maps
    assert list(per["step"].values) == [1, 2]
    np.testing.assert_allclose(per.mean("step").values, mean.values, atol=1e-6)
    total = attend(probe, PROMPT, steps=3, sites="cross:1", window="1:", reduce="sum").maps
    np.testing.assert_allclose(total.values, mean.values * 2 * probe.sites.parse("cross:1")[0].heads, rtol=1e-5)


def test_words_map_to_their_tokens(probe_factory):
    probe = probe_factory("sd15")
    result = attend(probe, PROMPT, steps=STEPS, sites="cross:0", words=["STOP", "sign"])
    table = token_table(probe, PROMPT, result.maps.sizes["token"])
    assert [table[i].text for i in word_tokens(table, PROMPT, "STOP")] == list("STOP")  # one token per character
    assert result.words.dims == ("sample", "word", "y", "x")
    idx = word_tokens(table, PROMPT, "stop")
    np.testing.assert_allclose(result.words.sel(word="STOP").values[0], result.maps.isel(token=idx).sum("token")[0])
    with pytest.raises(InterventionError, match="not in the prompt"):
        word_tokens(table, PROMPT, "GO")
    fig = result.figure(word="STOP")
    assert len(fig.data) == 2


def test_glyph_words_are_single_tokens():
    from diffprobe.attention import Token

    # the glyph tokenizer is word-level: lower-cased, punctuation to spaces, one token per word
    from transformers import PreTrainedTokenizerFast

    from diffprobe.zoo.glyph import default_model_path

    tok = PreTrainedTokenizerFast(tokenizer_file=str(default_model_path() / "tokenizer" / "tokenizer.json"))
    prompt = 'a red sign that says "STOP"'
    enc = tok(prompt, return_offsets_mapping=True)
    table = [Token(i, t, a, b, False) for i, (t, (a, b)) in
             enumerate(zip(tok.convert_ids_to_tokens(enc["input_ids"]), enc["offset_mapping"]))]
    assert [table[i].text for i in word_tokens(table, prompt, "STOP")] == ["stop"]


def test_replace_attention_with_the_own_prompt_changes_nothing_and_another_does(probe_factory):
    probe = probe_factory("sd15")
    same = ReplaceAttention(source=PROMPT, sites="cross:all")
    other = ReplaceAttention(source='A sign that says "OPEN".', sites="cross:all")
    base = probe.run([Variant(PROMPT), Variant('A sign that says "OPEN".')], steps=STEPS).images
    out = probe.run([Variant(PROMPT, (same,)), Variant('A sign that says "OPEN".')], steps=STEPS).images
    assert np.abs(out[0].astype(int) - base[0].astype(int)).max() <= 2  # P_self @ V_self, recomputed
    edited = probe.run([Variant(PROMPT, (other,)), Variant('A sign that says "OPEN".')], steps=STEPS).images
    assert not np.array_equal(edited[0], base[0])


def test_bad_requests_are_refused(probe_factory):
    with pytest.raises(InterventionError, match="self-attention"):
        attend(probe_factory("sd15"), PROMPT, steps=STEPS, sites="self:0")
    with pytest.raises(InterventionError, match="text only"):
        probe_factory("sd3").run([Variant(PROMPT, (ReplaceAttention(source="a", sites="joint:0"),))], steps=STEPS)
    with pytest.raises(InterventionError, match="one CFG half"):
        AttentionMap(cfg="both")


def test_the_sweep_report_shows_attention_overlays(probe_factory, tmp_path):
    from _synthetic import make_results

    from diffprobe.report import write_report

    result = attend(probe_factory("sd15"), [PROMPT, 'A <b>cat</b> says "MEOW"'], steps=STEPS, sites="cross:0",
                    words=["STOP", "MEOW"])
    assert np.isnan(result.words.sel(word="MEOW").values[0]).all()  # not in the first prompt
    page = write_report(make_results(), tmp_path / "r.html", attention=result).read_text()
    assert "id='attention'" in page and "attn-0-0" in page and "attn-0-1" not in page  # no overlay for a NaN map
    assert "<b>cat" not in page and "&lt;b&gt;cat" in page


def test_conflicting_map_requests_are_refused(probe_factory):
    from diffprobe import Scale

    probe = probe_factory("sd15")
    twice = (AttentionMap(sites="cross:0-1"), AttentionMap(sites="cross:1"))
    with pytest.raises(InterventionError, match="different name"):
        run(probe, [Variant(PROMPT, twice)], steps=STEPS)
    both = (ReplaceAttention(source="a", sites="cross:0"), Scale(0.5, sites="cross:0", heads=[0]))
    with pytest.raises(InterventionError, match="same row"):
        probe.run([Variant(PROMPT, both)], steps=STEPS)
