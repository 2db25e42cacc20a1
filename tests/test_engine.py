"""Exactness of the interventions engine on tiny random-weight pipelines.

What these tests prove (docs/interventions.md lists them next to each guarantee):

- tracing changes nothing: an unpatched traced run is bit-identical to the plain pipeline call;
- an identity edit changes nothing: Patch with the prompt itself, Scale(1.0) -- bit for bit;
- a patch is what it claims: patching every cross site of SD1.5 with the target prompt gives the
  target's own image; Inject (K/V from embeddings) equals Patch (K/V from a run) on cross sites;
  a head subset touches those heads only; a FLUX single-stream patch touches the text prefix only;
- a step window is respected: steps < k are bit-identical to the unpatched run, step k is not;
- batching is transparent: variants batched together equal each variant run alone;
- bad requests fail before the first step with a message naming the valid choice;
- an exception inside a run leaves no hook behind, and the next run equals a fresh model's.

What is exact by construction, and what is not. A bit-for-bit assertion here compares the *same row* of
two calls with the *same batch composition* (the same prompts, seeds and shapes in every row), which differ
only in the edit under test: every kernel then sees identical inputs, so the results are identical on any
CPU. Two *different rows* of one batch that hold identical inputs are not guaranteed to round alike: x86
matrix kernels may treat rows differently (measured on an AMD EPYC: identical rows of one batched matmul
differ by ~2e-7; on the Intel Xeon where these tests were first written they did not). Comparisons across
rows (an identity Patch copies another row's K/V into this one; a patched row against the target row) are
therefore checked within ``ROW_TOLERANCE`` uint8 levels for images and ``KV_ATOL`` for float tensors, while
the copy itself (the K/V written equal the K/V of the row they come from) is checked bit for bit.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import diffprobe.engine as engine
from conftest import ARCHS, SIZE, TEXT_SITES
from diffprobe import (
    Ablate, Capture, DiffprobeError, Inject, InterventionError, Patch, Scale, SiteError, Variant,
)

SRC = 'A sign that says "STOP".'
TGT = 'A sign that says "GO".'
STEPS = 3


def to_uint8(images) -> np.ndarray:
    """The engine's conversion of the pipeline's float images."""
    return np.clip(np.round(np.asarray(images) * 255.0), 0, 255).astype(np.uint8)


def plain_call(probe, arch: str, prompts, seeds, steps: int = STEPS) -> np.ndarray:
    """The pipeline called directly, outside any trace, as a user would call it."""
    pipe = probe.pipeline
    out = pipe(
        prompts, generator=[torch.Generator().manual_seed(s) for s in seeds], output_type="np",
        num_inference_steps=steps, **probe.adapter.call_kwargs(pipe), **SIZE.get(arch, {}),
    )
    return to_uint8(out.images)


def run(probe, arch: str, variants, steps: int = STEPS):
    return probe.run(variants, steps=steps, **SIZE.get(arch, {}))


def max_diff(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


#: images of two different batch rows with identical inputs, in uint8 levels (batched-kernel rounding)
ROW_TOLERANCE = 2
#: float tensors of two different batch rows with identical inputs
KV_ATOL = 1e-5


def assert_rows_match(a: np.ndarray, b: np.ndarray) -> None:
    """Two rows of one batch that must agree up to the rounding of batched kernels (see the module docstring)."""
    if a.dtype == np.uint8:
        assert max_diff(a, b) <= ROW_TOLERANCE, f"rows differ by {max_diff(a, b)} levels"
    else:
        np.testing.assert_allclose(a, b, rtol=KV_ATOL, atol=KV_ATOL)


# -- tracing and identity edits change nothing --------------------------------------------------------

def test_traced_unpatched_run_is_bit_identical_to_the_plain_call(tiny_probe, arch):
    expected = plain_call(tiny_probe, arch, SRC, [0])
    got = tiny_probe.generate(SRC, steps=STEPS, seed=0, **SIZE.get(arch, {})).images
    assert got.dtype == np.uint8 and got.shape == expected.shape
    np.testing.assert_array_equal(got, expected)


def test_traced_batch_is_bit_identical_to_the_plain_batched_call(tiny_probe, arch):
    expected = plain_call(tiny_probe, arch, [SRC, TGT], [0, 1], steps=2)
    got = tiny_probe.generate([SRC, TGT], steps=2, seed=[0, 1], **SIZE.get(arch, {})).images
    np.testing.assert_array_equal(got, expected)


def test_identity_patch_copies_the_source_row_and_changes_nothing_else(tiny_probe, arch):
    """Patch(source=the prompt itself) at every text site: the K/V written are the source row's, bit for bit;
    the image equals the unpatched one up to batch-row rounding; rows it does not name are untouched, bit for bit."""
    site = TEXT_SITES[arch]
    watched = tiny_probe.sites.parse(site)[-1].label
    patch, cap = Patch(source=SRC, sites=site), Capture(what="kv", sites=watched)
    result = run(tiny_probe, arch, [Variant(SRC, (cap,)), Variant(SRC, (patch, cap))])
    for part in ("k", "v"):
        kv = result.captures[f"kv:{watched}:{part}"].values
        np.testing.assert_array_equal(kv[1], kv[0])  # a copy of the clean source row
    assert_rows_match(result.images[1], result.images[0])
    # alone, the source runs as a hidden extra row; a clean batch of the same rows leaves row 0 within rounding
    alone = run(tiny_probe, arch, [Variant(SRC, (patch,))]).images
    clean = run(tiny_probe, arch, [Variant(SRC), Variant(SRC)]).images
    assert_rows_match(alone[0], clean[0])


def test_scale_one_is_the_identity(tiny_probe, arch):
    """Same row, same batch composition, with and without Scale(1.0): exact by construction."""
    edited = run(tiny_probe, arch, [Variant(SRC), Variant(SRC, (Scale(1.0, sites="all"),))]).images
    clean = run(tiny_probe, arch, [Variant(SRC), Variant(SRC)]).images
    np.testing.assert_array_equal(edited, clean)


def test_head_scale_one_is_the_identity_and_zero_is_not(tiny_probe, arch):
    """Per-head scaling runs on every architecture (through to_out.0's input, or the raw output
    where there is no output projection, as in FLUX single-stream blocks)."""
    edited = run(tiny_probe, arch, [Variant(SRC), Variant(SRC, (Scale(1.0, sites="all", heads=[0]),)),
                                    Variant(SRC, (Scale(0.0, sites="all", heads=[0]),))]).images
    clean = run(tiny_probe, arch, [Variant(SRC)] * 3).images
    np.testing.assert_array_equal(edited[:2], clean[:2])
    assert max_diff(edited[2], clean[2]) > 0


def test_scale_changes_the_image(probe_factory):
    probe = probe_factory("sd15")
    images = run(probe, "sd15", [Variant(SRC), Variant(SRC, (Scale(0.0, sites="cross:all"),)),
                                 Variant(SRC, (Scale(3.0, sites="self:2", heads=[0]),))]).images
    assert max_diff(images[1], images[0]) > 0 and max_diff(images[2], images[0]) > 0


def test_head_subset_scale_acts_on_that_heads_contribution(probe_factory):
    """Scale(0.0, heads=[h]) should equal removing head h before the output projection."""
    probe = probe_factory("sd15")
    site, head = probe.sites.parse("cross:3")[0], 1
    out_proj = probe.denoiser.get_submodule(site.name).to_out[0]

    def drop_head(module, args):
        x = args[0].clone()
        x.view(*x.shape[:-1], site.heads, site.head_dim)[..., head, :] = 0
        return (x,)

    handle = out_proj.register_forward_pre_hook(drop_head)
    try:
        expected = plain_call(probe, "sd15", SRC, [0])
    finally:
        handle.remove()
    assert max_diff(expected, plain_call(probe, "sd15", SRC, [0])) > 0
    got = probe.generate(SRC, [Scale(0.0, sites="cross:3", heads=[head])], steps=STEPS, seed=0).images
    assert max_diff(got, expected) <= 1


def test_same_seed_same_image_other_seed_other_image(tiny_probe, arch):
    size = SIZE.get(arch, {})
    ivs = [Patch(source=TGT, sites=TEXT_SITES[arch], steps="1:")]
    a = tiny_probe.generate(SRC, ivs, steps=STEPS, seed=5, **size).images
    b = tiny_probe.generate(SRC, ivs, steps=STEPS, seed=5, **size).images
    c = tiny_probe.generate(SRC, ivs, steps=STEPS, seed=6, **size).images
    np.testing.assert_array_equal(a, b)
    assert max_diff(a, c) > 0


# -- a patch is what it claims --------------------------------------------------------------------

def test_sd15_patching_all_cross_sites_gives_the_target_image(probe_factory):
    """SD1.5's UNet reads the text only through cross-attention K/V."""
    probe = probe_factory("sd15")
    images = run(probe, "sd15", [Variant(TGT), Variant(SRC, (Patch(source=TGT, sites="cross:all"),)), Variant(SRC)])
    assert_rows_match(images.images[1], images.images[0])  # row 1 reads row 0's K/V: equal up to row rounding
    assert max_diff(images.images[2], images.images[0]) > 0  # the prompts do give different images


def test_sd15_empty_ablation_gives_the_empty_prompt_image(probe_factory):
    probe = probe_factory("sd15")
    images = run(probe, "sd15", [Variant(""), Variant(SRC, (Ablate(mode="empty", sites="cross:all"),))]).images
    assert_rows_match(images[1], images[0])


@pytest.mark.parametrize("arch", ["sd15", "sdxl", "if"])
def test_inject_and_patch_agree_on_cross_sites(probe_factory, arch):
    probe = probe_factory(arch)
    cross = probe.sites.of_kind("cross")
    chosen, watched = f"cross:1-{len(cross) - 1}", f"cross:{len(cross) - 1}"
    cap = Capture(what="kv", sites=watched)
    variants = [
        Variant(SRC, (Patch(source=TGT, sites=chosen, steps="1:"), cap)),
        Variant(SRC, (Inject(prompt=TGT, sites=chosen, steps="1:"), cap)),
        Variant(SRC, (cap,)),
    ]
    result = run(probe, arch, variants)
    assert max_diff(result.images[0], result.images[1]) <= 2
    assert max_diff(result.images[0], result.images[2]) > 0  # the edit did something
    for key in (f"kv:{watched}:k", f"kv:{watched}:v"):
        kv = result.captures[key].values  # (sample, step, token, head, channel)
        assert_rows_match(kv[1], kv[0])
        assert_rows_match(kv[0, 0], kv[2, 0])  # step 0 is outside the window (exact per row: see the step-k test)
        assert np.abs(kv[0, 1:] - kv[2, 1:]).max() > 1e-3


@pytest.mark.parametrize("arch, site, check_steps", [("sd15", "cross:3", slice(None)), ("sd3", "joint:1", slice(0, 1))])
def test_head_subset_patch_changes_only_those_heads(probe_factory, arch, site, check_steps):
    """Checked on captured K/V. Cross K/V depend on the text alone, so every step is checked there;
    joint K/V also depend on the image stream, which the edit changes after step 0."""
    probe = probe_factory(arch)
    heads = [1]
    cap = Capture(what="kv", sites=site)
    result = run(probe, arch, [
        Variant(SRC, (cap,)), Variant(TGT, (cap,)),
        Variant(SRC, (Patch(source=TGT, sites=site, heads=heads), cap)),
    ])
    clean = run(probe, arch, [Variant(SRC, (cap,)), Variant(TGT, (cap,)), Variant(SRC, (cap,))])
    others = [h for h in range(probe.sites.parse(site)[0].heads) if h not in heads]
    for key in (f"kv:{site}:k", f"kv:{site}:v"):
        kv = result.captures[key].values[:, check_steps]  # (sample, step, token, head, channel)
        unpatched = clean.captures[key].values[:, check_steps]
        np.testing.assert_array_equal(kv[2][..., heads, :], kv[1][..., heads, :])  # copied from the TGT row
        np.testing.assert_array_equal(kv[2][..., others, :], unpatched[2][..., others, :])  # same row, untouched
        assert np.abs(kv[2][..., heads, :] - kv[0][..., heads, :]).max() > 1e-4


def test_flux_single_site_patch_touches_only_the_text_prefix(probe_factory):
    probe = probe_factory("flux")
    site = "single:0"
    text_len = probe.adapter.text_len(probe.pipeline, probe.adapter.call_kwargs(probe.pipeline))
    cap = Capture(what="kv", sites=site, steps=[0])
    result = run(probe, "flux", [
        Variant(SRC, (cap,)), Variant(TGT, (cap,)), Variant(SRC, (Patch(source=TGT, sites=site), cap)),
    ])
    clean = run(probe, "flux", [Variant(SRC, (cap,)), Variant(TGT, (cap,)), Variant(SRC, (cap,))])
    for key in (f"kv:{site}:k", f"kv:{site}:v"):
        kv = result.captures[key].values[:, 0]  # (sample, token, head, channel) at step 0
        unpatched = clean.captures[key].values[:, 0]
        assert kv.shape[1] > text_len
        np.testing.assert_array_equal(kv[2, :text_len], kv[1, :text_len])  # text: a copy of the target row's
        np.testing.assert_array_equal(kv[2, text_len:], unpatched[2, text_len:])  # image: this row's own, untouched
        assert np.abs(kv[2, :text_len] - kv[0, :text_len]).max() > 1e-4


@pytest.mark.parametrize("k", [1, 2])
def test_patch_from_step_k_leaves_earlier_steps_bit_identical(tiny_probe, arch, k):
    steps = 4
    den = Capture(sites="denoiser")
    result = run(tiny_probe, arch, [
        Variant(SRC, (den,)), Variant(SRC, (Patch(source=TGT, sites=TEXT_SITES[arch], steps=f"{k}:"), den)),
    ], steps=steps)  # rows: SRC, SRC patched, hidden TGT
    unpatched = run(tiny_probe, arch, [Variant(SRC, (den,)), Variant(SRC, (den,)), Variant(TGT)], steps=steps)
    pred = result.captures["denoiser"]
    assert list(pred.coords["step"].values) == list(range(steps))
    clean, patched = unpatched.captures["denoiser"].values[1], pred.values[1]  # the same row of the same batch
    np.testing.assert_array_equal(patched[:k], clean[:k])
    assert np.abs(patched[k] - clean[k]).max() > 0


def test_batched_variants_equal_each_variant_alone(probe_factory):
    probe = probe_factory("sd15")
    variants = [
        Variant(SRC),
        Variant(SRC, (Patch(source=TGT, sites="cross:2-4", steps="1:"),)),
        Variant(TGT, (Inject(prompt=SRC, sites="cross:0", heads=[0, 2]),), seed=1),
        Variant(SRC, (Scale(0.5, sites="cross:5"), Ablate(sites="cross:6")), seed=2, negative_prompt="blurry"),
    ]
    batched = run(probe, "sd15", variants).images
    for i, v in enumerate(variants):
        alone = run(probe, "sd15", [v]).images[0]
        assert max_diff(batched[i], alone) <= 2, f"variant {i}"


def test_batched_variants_equal_each_variant_alone_sd3(probe_factory):
    probe = probe_factory("sd3")
    variants = [Variant(SRC), Variant(SRC, (Patch(source=TGT, sites="joint:1", steps="1:"),)),
                Variant(TGT, (Patch(source=SRC, sites="joint:0-2", heads=[3]),), seed=4)]
    batched = run(probe, "sd3", variants).images
    for i, v in enumerate(variants):
        assert max_diff(batched[i], run(probe, "sd3", [v]).images[0]) <= 2, f"variant {i}"


@pytest.mark.parametrize("ablation", [
    Ablate(mode="zero", sites="cross:all"),
    Ablate(mode="zero", target="output", sites="cross:all"),
    Ablate(mode="empty", sites="cross:all"),
    Ablate(mode="mean", prompts=("a dog", "a red car"), sites="cross:all"),
], ids=["zero-kv", "zero-output", "empty", "mean"])
def test_ablations_run_and_change_the_image(probe_factory, ablation):
    probe = probe_factory("sd15")
    images = run(probe, "sd15", [Variant(SRC), Variant(SRC, (ablation,))]).images
    assert max_diff(images[1], images[0]) > 0


def test_zero_ablation_on_joint_sites(probe_factory):
    probe = probe_factory("sd3")
    images = run(probe, "sd3", [Variant(SRC), Variant(SRC, (Ablate(sites="joint:all"),))]).images
    assert max_diff(images[1], images[0]) > 0


def test_cfg_policies_map_onto_the_right_half(probe_factory):
    """Rows with the same negative prompt share the unconditional K/V, so patching only that half
    changes nothing and patching only the conditional half equals patching both (up to batch-row rounding);
    an Inject with its own negative prompt differs between cfg='cond' and cfg='both'."""
    probe = probe_factory("sd15")
    images = run(probe, "sd15", [
        Variant(SRC),
        Variant(SRC, (Patch(source=TGT, sites="cross:all", cfg="uncond"),)),
        Variant(SRC, (Patch(source=TGT, sites="cross:all", cfg="cond"),)),
        Variant(SRC, (Patch(source=TGT, sites="cross:all"),)),
        Variant(SRC, (Inject(prompt=TGT, negative_prompt="blurry", sites="cross:all", cfg="cond"),)),
        Variant(SRC, (Inject(prompt=TGT, negative_prompt="blurry", sites="cross:all"),)),
    ]).images
    assert_rows_match(images[1], images[0])  # the uncond K/V come from another row with the same negative
    assert_rows_match(images[2], images[3])
    assert max_diff(images[3], images[0]) > 0
    assert max_diff(images[4], images[5]) > 0
    assert max_diff(images[4], images[3]) <= 2  # Inject on the cond half only == Patch


# -- bad input fails before the first step -------------------------------------------------------------

def test_inject_on_a_joint_site_points_to_patch(probe_factory):
    with pytest.raises(InterventionError, match=r"joint attention.*Use Patch\(source=<prompt>\)"):
        probe_factory("sd3").generate(SRC, [Inject(prompt=TGT, sites="joint:0")], steps=2)
    with pytest.raises(InterventionError, match=r"Use Patch"):
        probe_factory("sd3").generate(SRC, [Ablate(mode="empty", sites="joint:0")], steps=2)


def test_head_out_of_range_names_the_valid_heads(probe_factory):
    probe = probe_factory("sd15")
    n = probe.sites.parse("cross:0")[0].heads
    with pytest.raises(InterventionError, match=rf"head 9 is out of range at cross:0 .* valid heads are 0-{n - 1}"):
        probe.generate(SRC, [Patch(source=TGT, sites="cross:0", heads=[0, 9])], steps=2)
    with pytest.raises(InterventionError, match=r"non-negative"):
        Patch(source=TGT, heads=[-1])


@pytest.mark.parametrize("steps", ["4:", "1:9", 7, [0, 4], "-1:"])
def test_step_window_outside_the_loop_names_the_valid_range(probe_factory, steps):
    with pytest.raises(InterventionError, match=r"outside the run's denoising loop \[0, 4\); valid steps are 0-3"):
        probe_factory("sd15").generate(SRC, [Patch(source=TGT, steps=steps)], steps=4)


def test_empty_or_unreadable_step_windows(probe_factory):
    probe = probe_factory("sd15")
    with pytest.raises(InterventionError, match=r"empty; valid steps are 0-3"):
        probe.generate(SRC, [Patch(source=TGT, steps="3:1")], steps=4)
    with pytest.raises(InterventionError, match=r"cannot read steps='late'"):
        probe.generate(SRC, [Patch(source=TGT, steps="late")], steps=4)
    with pytest.raises(InterventionError, match=r"positive integer"):
        probe.generate(SRC, steps=0)


def test_empty_site_lists(probe_factory):
    probe = probe_factory("sd15")
    with pytest.raises(InterventionError, match=r"empty site list; name at least one site, e.g. sites='cross:0'"):
        Patch(source=TGT, sites=[])
    with pytest.raises(InterventionError, match=r"empty site list"):
        Patch(source=TGT, sites=probe.sites.of_kind("cross")[:0])
    with pytest.raises(InterventionError, match=r"sites must be a non-empty string"):
        Patch(source=TGT, sites=" ")  # refused where it is built, before any model sees it
    with pytest.raises(SiteError, match=r"empty"):
        probe.generate(SRC, [Patch(source=TGT, sites=";")], steps=2)
    with pytest.raises(InterventionError, match=r"Nothing to run"):
        probe.run([], steps=2)


def test_kv_edit_on_a_self_site_is_refused(probe_factory):
    probe = probe_factory("sd15")
    with pytest.raises(InterventionError, match=r"self:0 .* carries no text keys/values; choose cross"):
        probe.generate(SRC, [Patch(source=TGT, sites="self:0")], steps=2)
    with pytest.raises(InterventionError, match=r"carries no text K/V to capture"):
        probe.generate(SRC, [Capture(what="kv", sites="self:0")], steps=2)


def test_other_bad_input(probe_factory, meta_factory):
    probe = probe_factory("sd15")
    with pytest.raises(SiteError, match=r"valid indices are 0-6"):
        probe.generate(SRC, [Patch(source=TGT, sites="cross:7")], steps=2)
    with pytest.raises(InterventionError, match=r"2 seeds for 1 prompts"):
        probe.generate(SRC, seed=[1, 2], steps=2)
    with pytest.raises(InterventionError, match=r"cfg='neither'"):
        Patch(source=TGT, cfg="neither")
    with pytest.raises(InterventionError, match=r"needs prompts"):
        Ablate(mode="mean")
    with pytest.raises(DiffprobeError, match=r"not a site of this model"):
        probe.generate(SRC, [Patch(source=TGT, sites=list(meta_factory("sd3-medium").sites[:1]))], steps=2)


# -- nothing is left behind ---------------------------------------------------------------------------

def _hook_state(pipe) -> dict:
    state = {}
    for cname, comp in pipe.components.items():
        if isinstance(comp, torch.nn.Module):
            for name, m in comp.named_modules():
                state[(cname, name)] = (
                    tuple(m._forward_hooks.items()), tuple(m._forward_pre_hooks.items()),
                    m.__dict__.get("forward"), type(m).forward,
                    getattr(m, "processor", None),
                )
    from torch.nn.modules import module as nn_module

    state["global"] = (tuple(nn_module._global_forward_hooks), tuple(nn_module._global_forward_pre_hooks))
    return state


def test_an_exception_inside_a_run_leaves_no_hook_behind(probe_factory, monkeypatch):
    probe = probe_factory("sd15")
    before = _hook_state(probe.pipeline)
    ivs = [Patch(source=TGT, sites="cross:1-4", steps="1:")]
    calls = {"n": 0}
    real = engine._edit_kv

    def fail_later(*args, **kwargs):  # let a few edits succeed, then fail mid-run
        calls["n"] += 1
        if calls["n"] > 5:
            raise RuntimeError("injected failure inside the trace")
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "_edit_kv", fail_later)
    with pytest.raises(Exception, match="injected failure"):
        probe.generate(SRC, ivs, steps=STEPS)
    assert calls["n"] > 5
    monkeypatch.setattr(engine, "_edit_kv", real)
    assert _hook_state(probe.pipeline) == before

    fresh = probe_factory("sd15", fresh=True)
    np.testing.assert_array_equal(
        probe.generate(SRC, ivs, steps=STEPS).images, fresh.generate(SRC, ivs, steps=STEPS).images
    )
    np.testing.assert_array_equal(plain_call(probe, "sd15", SRC, [0]), plain_call(fresh, "sd15", SRC, [0]))


def test_a_run_installs_nothing_that_outlives_it(probe_factory, arch):
    probe = probe_factory(arch)
    before = _hook_state(probe.pipeline)
    run(probe, arch, [Variant(SRC, (Patch(source=TGT, sites=TEXT_SITES[arch]), Capture(sites="denoiser")))], steps=2)
    assert _hook_state(probe.pipeline) == before


def test_archs_cover_every_tiny_builder():
    from diffprobe.zoo.tiny import TINY_BUILDERS

    assert set(ARCHS) == set(TINY_BUILDERS)
