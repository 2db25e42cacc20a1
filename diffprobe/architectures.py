"""Architecture adapters: how each denoiser family exposes its attention sites and text path.

An adapter is a small table of facts about one family of pipelines: which attribute holds the
denoiser, the order its blocks run in, what kind each attention module is, which submodules carry
the text keys/values, and how the pipeline turns prompts into the text states the denoiser reads
(needed by ``Inject``, which computes K/V without running the denoiser). Adding an architecture is
one subclass here and a tiny pipeline in ``zoo/tiny.py``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .errors import UnsupportedArchitectureError
from .sites import Site, SiteCatalogue

__all__ = ["Adapter", "ADAPTERS", "adapter_for", "build_catalogue"]


def _is_attention(module: torch.nn.Module) -> bool:
    return hasattr(module, "to_k") and hasattr(module, "to_v") and hasattr(module, "heads")


def _params(module: torch.nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def _inner_dim(attn: torch.nn.Module) -> int:
    inner = getattr(attn, "inner_dim", None)
    return int(inner) if inner else int(attn.to_q.out_features)


@dataclass(frozen=True)
class _Found:
    name: str
    module: torch.nn.Module
    block: str


class Adapter:
    """Facts about one architecture family. Subclasses fill in the class attributes/methods."""

    family: ClassVar[str] = ""
    denoiser_classes: ClassVar[tuple[str, ...]] = ()
    denoiser_attr: ClassVar[str] = "unet"
    block_order: ClassVar[tuple[tuple[str, str], ...]] = ()  # (attribute, block label) in run order
    call_defaults: ClassVar[dict[str, Any]] = {}
    supports_inject: ClassVar[bool] = True

    # -- catalogue -----------------------------------------------------------
    def attention_modules(self, denoiser: torch.nn.Module) -> list[_Found]:
        found: list[_Found] = []
        for attr, label in self.block_order:
            container = getattr(denoiser, attr, None)
            if container is None:
                continue
            for name, module in container.named_modules():
                if _is_attention(module):
                    full = f"{attr}.{name}" if name else attr
                    found.append(_Found(full, module, label))
        return found

    def kind_of(self, found: _Found) -> str:
        raise NotImplementedError

    def kv_names(self, kind: str, module: torch.nn.Module) -> tuple[str, ...]:
        if kind == "self":
            return ()
        if getattr(module, "add_k_proj", None) is not None:
            return ("add_k_proj", "add_v_proj")
        return ("to_k", "to_v")

    def sites(self, denoiser: torch.nn.Module) -> list[Site]:
        counters: dict[str, int] = {}
        out = []
        for found in self.attention_modules(denoiser):
            kind = self.kind_of(found)
            kv = self.kv_names(kind, found.module)
            heads = int(found.module.heads)
            out.append(
                Site(
                    index=counters.get(kind, 0), kind=kind, name=found.name, block=found.block,
                    heads=heads, head_dim=_inner_dim(found.module) // heads, kv=kv,
                    kv_params=sum(_params(getattr(found.module, n)) for n in kv),
                    text_prefix=(kind == "single"),
                )
            )
            counters[kind] = counters.get(kind, 0) + 1
        return out

    # -- running -------------------------------------------------------------
    def call_kwargs(self, pipeline: Any) -> dict[str, Any]:
        """Extra pipeline-call arguments this family needs for a deterministic, traceable run."""
        return dict(self.call_defaults)

    def text_len(self, pipeline: Any, call_kwargs: dict) -> int | None:
        """Length of the text-token prefix in single-stream K/V (FLUX); None elsewhere."""
        return None

    def encode(self, pipeline: Any, prompts: list[str], negatives: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(cond, uncond) text states as the denoiser's attention layers receive them, one row per prompt."""
        raise UnsupportedArchitectureError(
            f"Inject is not available for {self.family}: its text path is not a pure function of the prompt "
            "at each site. Use Patch(source=...), which runs the source prompt in the same batch."
        )

    def site_kv(self, denoiser: torch.nn.Module, site: Site, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The text K/V a cross/added-KV site computes from text states (``encode`` output)."""
        attn = denoiser.get_submodule(site.name)
        weight = getattr(attn, site.kv[0]).weight
        if weight.device.type != "meta":  # sequential offload keeps weights on meta; its hooks move inputs
            states = states.to(weight.device)  # model offload leaves the weights on the CPU between calls
        if getattr(attn, "norm_cross", None) is not None:
            states = attn.norm_encoder_hidden_states(states)
        return getattr(attn, site.kv[0])(states), getattr(attn, site.kv[1])(states)


class UNetAdapter(Adapter):
    """SD 1.x/2.x and SDXL UNets (attn1 self, attn2 cross) and DeepFloyd IF (added-KV attention)."""

    family = "unet"
    denoiser_classes = ("UNet2DConditionModel",)
    denoiser_attr = "unet"
    block_order = (("down_blocks", "down"), ("mid_block", "mid"), ("up_blocks", "up"))

    def kind_of(self, found: _Found) -> str:
        m = found.module
        if getattr(m, "add_k_proj", None) is not None or getattr(m, "is_cross_attention", False):
            return "cross"
        return "self"

    def call_kwargs(self, pipeline: Any) -> dict[str, Any]:
        kwargs = dict(self.call_defaults)
        if type(pipeline).__name__.startswith("IF"):
            kwargs["clean_caption"] = False  # needs bs4/ftfy and rewrites prompts; keep them verbatim
        return kwargs

    def encode(self, pipeline, prompts, negatives):
        from .devices import _execution_device

        name = type(pipeline).__name__
        device = _execution_device(pipeline)
        with torch.no_grad():
            if name.startswith("IF"):
                cond, uncond = pipeline.encode_prompt(
                    prompts, do_classifier_free_guidance=True, negative_prompt=negatives,
                    device=device, clean_caption=False,
                )
            elif "XL" in name:
                cond, uncond, _, _ = pipeline.encode_prompt(
                    prompts, device=device, do_classifier_free_guidance=True, negative_prompt=negatives,
                )
            else:
                cond, uncond = pipeline.encode_prompt(
                    prompts, device, 1, True, negative_prompt=negatives,
                )
            unet = pipeline.unet
            cond = unet.process_encoder_hidden_states(cond, {})
            uncond = unet.process_encoder_hidden_states(uncond, {})
        return cond, uncond


class SD3Adapter(Adapter):
    """Stable Diffusion 3 MMDiT: joint attention per block (SD3.5's extra attn2 is self-attention)."""

    family = "sd3"
    denoiser_classes = ("SD3Transformer2DModel",)
    denoiser_attr = "transformer"
    block_order = (("transformer_blocks", "transformer"),)
    supports_inject = False

    def kind_of(self, found: _Found) -> str:
        return "joint" if getattr(found.module, "add_k_proj", None) is not None else "self"


class FluxAdapter(Adapter):
    """FLUX: double-stream joint blocks, then single-stream blocks over [text, image] tokens."""

    family = "flux"
    denoiser_classes = ("FluxTransformer2DModel",)
    denoiser_attr = "transformer"
    block_order = (("transformer_blocks", "transformer"), ("single_transformer_blocks", "single"))
    supports_inject = False

    def kind_of(self, found: _Found) -> str:
        if found.block == "single":
            return "single"
        return "joint" if getattr(found.module, "add_k_proj", None) is not None else "self"

    def call_kwargs(self, pipeline: Any) -> dict[str, Any]:
        tok = getattr(pipeline, "tokenizer_2", None)
        limit = min(512, getattr(tok, "model_max_length", 512) or 512)
        return {"max_sequence_length": limit}

    def text_len(self, pipeline, call_kwargs):
        return int(call_kwargs["max_sequence_length"])


class PixArtAdapter(Adapter):
    """PixArt-alpha/sigma DiT: attn1 self, attn2 cross over the projected caption."""

    family = "pixart"
    denoiser_classes = ("PixArtTransformer2DModel",)
    denoiser_attr = "transformer"
    block_order = (("transformer_blocks", "transformer"),)
    call_defaults = {"use_resolution_binning": False, "clean_caption": False}
    supports_inject = False

    def kind_of(self, found: _Found) -> str:
        return "cross" if getattr(found.module, "is_cross_attention", False) else "self"


ADAPTERS: tuple[Adapter, ...] = (UNetAdapter(), SD3Adapter(), FluxAdapter(), PixArtAdapter())


def adapter_for(denoiser: torch.nn.Module) -> Adapter:
    """The adapter for a denoiser module, or an error naming the supported architectures."""
    cls = type(denoiser).__name__
    for adapter in ADAPTERS:
        if cls in adapter.denoiser_classes:
            return adapter
    supported = ", ".join(c for a in ADAPTERS for c in a.denoiser_classes)
    raise UnsupportedArchitectureError(
        f"Unsupported denoiser {cls}: diffprobe has adapters for {supported} "
        "(SD 1.x/2.x, SDXL, DeepFloyd IF, SD3, FLUX, PixArt). Adding one is a subclass of "
        "diffprobe.architectures.Adapter."
    )


def build_catalogue(denoiser: torch.nn.Module) -> SiteCatalogue:
    return SiteCatalogue(adapter_for(denoiser).sites(denoiser))
