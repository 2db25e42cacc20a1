"""The site catalogue: numbering in execution order, Table 1, selection and its errors.

Numbering and counting run on the full-size bundled configs built on the meta device (no weights),
so the indices checked here are the paper's own.
"""
from __future__ import annotations

import pytest
import torch

from diffprobe import SiteCatalogue, SiteError, UnsupportedArchitectureError
from diffprobe.architectures import adapter_for

SDXL_LOCALIZED = [f"up_blocks.0.attentions.2.transformer_blocks.{i}.attn2" for i in (1, 2, 3)]


# -- numbering on the full-size configs ------------------------------------------------------------

def test_sdxl_has_70_cross_sites_numbered_down_mid_up(meta_factory):
    cross = meta_factory("sdxl-base-1.0").sites.of_kind("cross")
    assert len(cross) == 70
    assert [s.index for s in cross] == list(range(70))
    assert [cross[i].name for i in (55, 56, 57)] == SDXL_LOCALIZED
    assert all(s.name.startswith("down_blocks.1.") for s in cross[0:4])
    assert all(s.name.startswith("down_blocks.2.") for s in cross[4:24])
    assert all(s.name.startswith("mid_block.") for s in cross[24:34])
    assert all(s.name.startswith("up_blocks.0.") for s in cross[34:64])
    assert all(s.name.startswith("up_blocks.1.") for s in cross[64:70])
    assert {s.block for s in cross[24:34]} == {"mid"}


def test_sdxl_numbering_is_not_registration_order(meta_factory):
    """``named_modules()`` lists up_blocks before mid_block; the catalogue must not."""
    probe = meta_factory("sdxl-base-1.0")
    registered = [n for n, m in probe.denoiser.named_modules() if n.endswith("attn2")]
    assert registered[24].startswith("up_blocks.")
    assert [s.name for s in probe.sites.of_kind("cross")] != registered


def test_sdxl_site_facts(meta_factory):
    site = meta_factory("sdxl-base-1.0").sites.parse("cross:55")[0]
    assert site.kind == "cross" and site.block == "up" and site.label == "cross:55"
    assert site.heads * site.head_dim == 1280
    assert site.kv == ("to_k", "to_v")
    assert site.kv_params == 2 * 2048 * 1280  # to_k and to_v from the 2048-d text states, no bias


def test_if_has_22_cross_sites_and_17_is_up_blocks_1_attentions_3(meta_factory):
    sites = meta_factory("if-i-xl").sites
    cross = sites.of_kind("cross")
    assert len(cross) == 22 and sites.kinds == ("cross",)
    assert cross[17].name == "up_blocks.1.attentions.3"
    assert cross[17].kv == ("add_k_proj", "add_v_proj")
    blocks = [s.block for s in cross]
    assert (blocks.count("down"), blocks.count("mid"), blocks.count("up")) == (9, 1, 12)


def test_sd3_has_24_joint_sites_and_10_is_block_10(meta_factory):
    sites = meta_factory("sd3-medium").sites
    joint = sites.of_kind("joint")
    assert len(joint) == 24 and len(sites) == 24
    assert joint[10].name == "transformer_blocks.10.attn"
    assert joint[10].kv == ("add_k_proj", "add_v_proj")


def test_flux_has_19_joint_and_38_single_sites(meta_factory):
    sites = meta_factory("flux.1-dev").sites
    assert sites.counts() == {"joint": 19, "single": 38}
    assert sites.of_kind("joint")[0].name == "transformer_blocks.0.attn"
    single = sites.of_kind("single")
    assert single[37].name == "single_transformer_blocks.37.attn"
    assert all(s.text_prefix for s in single)
    assert not any(s.text_prefix for s in sites.of_kind("joint"))
    # execution order: every joint block runs before the first single block
    assert [s.kind for s in sites] == ["joint"] * 19 + ["single"] * 38


def test_sd15_has_16_cross_sites(meta_factory):
    sites = meta_factory("sd-1.5").sites
    assert sites.counts() == {"self": 16, "cross": 16}
    cross = sites.of_kind("cross")
    assert [s.block for s in cross] == ["down"] * 6 + ["mid"] + ["up"] * 9
    assert cross[6].name == "mid_block.attentions.0.transformer_blocks.0.attn2"


# -- Table 1 ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "name, spec, n_sites, of, millions, percent",
    [
        ("sdxl-base-1.0", "cross:55-57", 3, 70, "15.7", "0.61"),
        ("if-i-xl", "cross:17", 1, 22, "8.9", "0.21"),
        ("sd3-medium", "joint:10", 1, 24, "4.7", "0.23"),
    ],
)
def test_table_1(meta_factory, name, spec, n_sites, of, millions, percent):
    probe = meta_factory(name)
    got = probe.count(spec)
    kind = spec.split(":")[0]
    assert len(got["sites"]) == n_sites and len(probe.sites.of_kind(kind)) == of
    assert f"{got['localized_params'] / 1e6:.1f}" == millions
    assert f"{100 * got['fraction']:.2f}" == percent
    assert got["total_params"] == sum(p.numel() for p in probe.denoiser.parameters())
    assert got["fraction"] == pytest.approx(got["localized_params"] / got["total_params"])


def test_table_1_exact_counts(meta_factory):
    """The exact figures behind the rounded ones, as written in docs/catalogue.md."""
    assert meta_factory("sdxl-base-1.0").count("cross:55-57")["localized_params"] == 15_728_640
    assert meta_factory("if-i-xl").count("cross:17")["localized_params"] == 8_925_312
    assert meta_factory("sd3-medium").count("joint:10")["localized_params"] == 4_721_664


def test_count_accepts_site_objects(meta_factory):
    probe = meta_factory("sdxl-base-1.0")
    chosen = probe.sites.select(kind="cross", indices=[55, 56, 57])
    assert probe.count(list(chosen)) == probe.count("cross:55-57")


def test_meta_build_holds_no_memory(meta_factory):
    probe = meta_factory("sdxl-base-1.0")
    assert all(p.device.type == "meta" for p in probe.denoiser.parameters())


# -- selection --------------------------------------------------------------------------------------

@pytest.fixture
def sdxl(meta_factory):
    return meta_factory("sdxl-base-1.0").sites


def test_select_by_kind_block_and_indices(sdxl):
    up = sdxl.select(kind="cross", block="up")
    assert isinstance(up, SiteCatalogue) and len(up) == 36
    assert up[0].index == 34 and up[-1].index == 69
    mid = sdxl.select(kind="cross", block="mid")
    assert [s.index for s in mid] == list(range(24, 34))
    picked = sdxl.select(kind="cross", indices=[57, 55])
    assert [s.index for s in picked] == [57, 55]
    assert len(sdxl.select(block="mid")) == 20  # self and cross
    assert [s.name for s in sdxl.select(kind="cross", name="up_blocks.0.attentions.2.*")][1:4] == SDXL_LOCALIZED


def test_slicing_and_lookup(sdxl):
    cross = sdxl.of_kind("cross")
    assert isinstance(cross[55:58], SiteCatalogue)
    assert [s.name for s in cross[55:58]] == SDXL_LOCALIZED
    assert cross[-1].index == 69
    assert sdxl[SDXL_LOCALIZED[0]].label == "cross:55"
    assert len(sdxl) == 140 and sdxl.counts() == {"self": 70, "cross": 70}


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("cross:55-57", [55, 56, 57]),
        ("cross:1,3-4", [1, 3, 4]),
        ("cross:7", [7]),
        ("cross:57 cross:55", [55, 57]),  # catalogue order, whatever the order written
        ("cross:55-57;cross:56", [55, 56, 57]),  # no duplicates
        ("cross:57,cross:55-56", [55, 56, 57]),  # a comma before the next kind separates terms too
        ("cross:up_blocks.0.attentions.2.*", list(range(54, 64))),
    ],
)
def test_string_grammar_indices(sdxl, spec, expected):
    assert [s.index for s in sdxl.parse(spec)] == expected


def test_string_grammar_all_and_globs(sdxl, meta_factory):
    assert len(sdxl.parse("cross:all")) == 70
    assert len(sdxl.parse("all")) == 140
    up0 = sdxl.parse("up_blocks.0.*")
    assert len(up0) == 60 and {s.kind for s in up0} == {"self", "cross"}
    assert all(s.name.startswith("up_blocks.0.") for s in up0)
    assert [s.name for s in sdxl.parse(SDXL_LOCALIZED[0])] == SDXL_LOCALIZED[:1]
    sd3 = meta_factory("sd3-medium").sites
    assert [s.name for s in sd3.parse("joint:10")] == ["transformer_blocks.10.attn"]
    assert sdxl.parse(["cross:55", "cross:56-57"]).names == SDXL_LOCALIZED


# -- selection errors -------------------------------------------------------------------------------

def test_index_out_of_range_names_the_valid_range(sdxl):
    with pytest.raises(SiteError, match=r"valid indices are 0-69"):
        sdxl.parse("cross:70")
    with pytest.raises(SiteError, match=r"0-69"):
        sdxl.select(kind="cross", indices=[3, 99])


def test_unknown_kind_suggests_the_close_one(sdxl):
    with pytest.raises(SiteError, match=r"Did you mean 'cross'\?") as err:
        sdxl.parse("cros:3")
    assert "cross:0-69" in str(err.value)
    with pytest.raises(SiteError, match=r"Did you mean 'cross'"):
        sdxl.select(kind="crosss")


def test_wrong_name_suggests_the_close_one(sdxl):
    typo = "up_blocks.0.attentions.2.transformer_blocks.1.attn3"
    with pytest.raises(SiteError, match=r"Did you mean '.*attn2'") as err:
        sdxl.parse(typo)
    assert "cross:all" in str(err.value)  # the grammar hint
    with pytest.raises(SiteError, match=r"Did you mean"):
        sdxl.by_name(typo)
    with pytest.raises(SiteError, match=r"blocks here are \['down', 'mid', 'up'\]"):
        sdxl.select(block="middle")


def test_other_selection_errors(sdxl, meta_factory):
    with pytest.raises(SiteError, match=r"runs backwards; write 55-57"):
        sdxl.parse("cross:57-55")
    with pytest.raises(SiteError, match=r"empty"):
        sdxl.parse("  ")
    with pytest.raises(SiteError, match=r"pass kind="):
        sdxl.select(indices=[1])
    with pytest.raises(SiteError, match=r"Unknown site kind 'cross'.*this model has 24 joint sites \(joint:0-23\)"):
        meta_factory("sd3-medium").sites.parse("cross:all")
    with pytest.raises(SiteError, match=r"No site matches 'down_blocks\.9\.\*'"):
        sdxl.parse("down_blocks.9.*")
    # the grammar hint shows this model's own kinds and module names (a joint model is not told to write 'cross:')
    with pytest.raises(SiteError, match=r"'joint:all', 'joint:0-2', 'joint:0,23'.*'transformer_blocks\.0\.\*'"):
        meta_factory("sd3-medium").sites.parse("joint:0,seven")
    assert meta_factory("sd3-medium").sites.parse("joint:0,joint:7").names == ["transformer_blocks.0.attn",
                                                                               "transformer_blocks.7.attn"]


def test_site_error_is_a_diffprobe_error_and_a_key_error(sdxl):
    from diffprobe import DiffprobeError

    with pytest.raises(DiffprobeError) as err:
        sdxl.parse("cross:999")
    assert isinstance(err.value, KeyError)
    assert not str(err.value).startswith(("'", '"'))  # not KeyError's quoted repr


# -- architectures ----------------------------------------------------------------------------------

def test_unsupported_denoiser_names_the_supported_ones():
    with pytest.raises(UnsupportedArchitectureError, match=r"Unsupported denoiser Linear") as err:
        adapter_for(torch.nn.Linear(2, 2))
    for cls in ("UNet2DConditionModel", "SD3Transformer2DModel", "FluxTransformer2DModel"):
        assert cls in str(err.value)


def test_unsupported_pipeline_fails_at_load():
    """An unconditional DDPM pipeline has a UNet2DModel: no text, no adapter."""
    from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

    import diffprobe

    unet = UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
        norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
    )
    with pytest.raises(UnsupportedArchitectureError, match=r"UNet2DModel.*SD 1\.x/2\.x, SDXL"):
        diffprobe.load(DDPMPipeline(unet=unet, scheduler=DDPMScheduler()))


def test_tiny_catalogues(probe_factory, arch):
    """Every tiny pipeline has text-carrying sites, numbered from 0 within each kind."""
    sites = probe_factory(arch).sites
    for kind in sites.kinds:
        assert [s.index for s in sites.of_kind(kind)] == list(range(sites.counts()[kind]))
    text = [s for s in sites if s.carries_text]
    assert text and all(s.kv_params > 0 for s in text)
    assert all(not s.kv and s.kv_params == 0 for s in sites if s.kind == "self")
