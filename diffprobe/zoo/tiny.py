"""Tiny random-weight pipelines for every supported architecture, built from configs offline.

These are the models the tests, examples and benchmarks run on: each is a real diffusers pipeline
(the same class a hub checkpoint loads into) with a few thousand parameters, a character-level
tokenizer made locally with the `tokenizers` library, and weights drawn from a fixed seed. Save one
with :func:`save_tiny` and load it back through :func:`diffprobe.load` to exercise the real loading
path. Nothing here touches the network.
"""
from __future__ import annotations

import string
from pathlib import Path
from typing import Callable

import torch

__all__ = ["TINY_BUILDERS", "build_tiny", "save_tiny", "char_tokenizer"]

_CHARS = string.ascii_letters + string.digits + string.punctuation + " "


def char_tokenizer(max_length: int = 32):
    """A character-level fast tokenizer (one token per character, bos/eos/pad), built offline."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<unk>", "<s>", "</s>"]
    vocab = {tok: i for i, tok in enumerate(specials + list(dict.fromkeys(_CHARS)))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", vocab["<s>"]), ("</s>", vocab["</s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        unk_token="<unk>", model_max_length=max_length,
    )


def _vocab_size() -> int:
    return len(char_tokenizer())


def _clip_text(hidden: int = 32, projection: bool = False, seed: int = 0):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tok = char_tokenizer()
    cfg = CLIPTextConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=tok.model_max_length, projection_dim=hidden,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(cfg)


def _t5(d_model: int = 32, seed: int = 0):
    from transformers import T5Config, T5EncoderModel

    tok = char_tokenizer()
    cfg = T5Config(
        vocab_size=len(tok), d_model=d_model, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
        decoder_start_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    return T5EncoderModel(cfg)


def _vae(latent_channels: int = 4, **extra):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=[8, 16], in_channels=3, out_channels=3, latent_channels=latent_channels,
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
        norm_num_groups=4, sample_size=32, **extra,
    )


def _unet(cross_dim: int, **extra):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=[16, 32], norm_num_groups=4, cross_attention_dim=cross_dim,
        down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        attention_head_dim=4, **extra,
    )


def tiny_sd15():
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=_vae(), text_encoder=_clip_text(), tokenizer=char_tokenizer(), unet=_unet(32),
        scheduler=DDIMScheduler(beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False),
        safety_checker=None, feature_extractor=None, image_encoder=None, requires_safety_checker=False,
    )


def tiny_sdxl():
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    unet = _unet(
        64, transformer_layers_per_block=[1, 2], addition_embed_type="text_time",
        addition_time_embed_dim=8, projection_class_embeddings_input_dim=32 + 6 * 8,
    )
    return StableDiffusionXLPipeline(
        vae=_vae(), text_encoder=_clip_text(32), text_encoder_2=_clip_text(32, projection=True, seed=1),
        tokenizer=char_tokenizer(), tokenizer_2=char_tokenizer(), unet=unet,
        scheduler=EulerDiscreteScheduler(beta_schedule="scaled_linear", timestep_spacing="leading"),
        image_encoder=None, feature_extractor=None, force_zeros_for_empty_prompt=True,
    )


def tiny_if():
    from diffusers import DDPMScheduler, IFPipeline, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=16, layers_per_block=1, block_out_channels=[16, 32], norm_num_groups=4,
        down_block_types=["ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"],
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        up_block_types=["SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"],
        in_channels=3, out_channels=6, cross_attention_dim=32, encoder_hid_dim=32,
        attention_head_dim=8, addition_embed_type="text", addition_embed_type_num_heads=2,
        cross_attention_norm="group_norm", resnet_time_scale_shift="scale_shift", act_fn="gelu",
    )
    scheduler = DDPMScheduler(
        beta_schedule="squaredcos_cap_v2", thresholding=True, dynamic_thresholding_ratio=0.95,
        sample_max_value=1.0, prediction_type="epsilon", variance_type="learned_range",
    )
    return IFPipeline(
        tokenizer=char_tokenizer(), text_encoder=_t5(32), unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, watermarker=None, requires_safety_checker=False,
    )


def tiny_sd3():
    from diffusers import (
        FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline,
    )

    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        sample_size=16, patch_size=1, in_channels=4, num_layers=3, attention_head_dim=8,
        num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=64,
        pooled_projection_dim=64, out_channels=4,
    )
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(), vae=_vae(
            shift_factor=0.0609, scaling_factor=1.5035, use_quant_conv=False, use_post_quant_conv=False,
        ),
        text_encoder=_clip_text(32, projection=True), tokenizer=char_tokenizer(),
        text_encoder_2=_clip_text(32, projection=True, seed=1), tokenizer_2=char_tokenizer(),
        text_encoder_3=_t5(64), tokenizer_3=char_tokenizer(),
    )


def tiny_flux():
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=8,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[2, 2, 4],
    )
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=_vae(
            shift_factor=0.0609, scaling_factor=1.5035, use_quant_conv=False, use_post_quant_conv=False,
        ),
        text_encoder=_clip_text(32), tokenizer=char_tokenizer(), text_encoder_2=_t5(32),
        tokenizer_2=char_tokenizer(), transformer=transformer, image_encoder=None, feature_extractor=None,
    )


def tiny_pixart():
    from diffusers import DDIMScheduler, PixArtAlphaPipeline, PixArtTransformer2DModel

    torch.manual_seed(0)
    transformer = PixArtTransformer2DModel(
        sample_size=8, num_layers=2, patch_size=2, attention_head_dim=8, num_attention_heads=3,
        caption_channels=32, in_channels=4, cross_attention_dim=24, out_channels=8,
        attention_bias=True, activation_fn="gelu-approximate", num_embeds_ada_norm=1000,
        norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
    )
    return PixArtAlphaPipeline(
        transformer=transformer, vae=_vae(), scheduler=DDIMScheduler(), text_encoder=_t5(32),
        tokenizer=char_tokenizer(),
    )


TINY_BUILDERS: dict[str, Callable] = {
    "sd15": tiny_sd15, "sdxl": tiny_sdxl, "if": tiny_if, "sd3": tiny_sd3, "flux": tiny_flux,
    "pixart": tiny_pixart,
}


def build_tiny(arch: str):
    """A tiny random-weight pipeline of the given architecture (one of ``TINY_BUILDERS``)."""
    from ..errors import UnsupportedArchitectureError, did_you_mean

    if arch not in TINY_BUILDERS:
        raise UnsupportedArchitectureError(
            f"No tiny pipeline for {arch!r}; choose one of {sorted(TINY_BUILDERS)}."
            + did_you_mean(arch, TINY_BUILDERS)
        )
    pipe = TINY_BUILDERS[arch]()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny(arch: str, directory: str | Path) -> Path:
    """Build a tiny pipeline and write it with ``save_pretrained``; returns the directory."""
    directory = Path(directory)
    build_tiny(arch).save_pretrained(directory)
    return directory
