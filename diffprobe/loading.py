"""Loading: every way a user names a model ends in a :class:`~diffprobe.probe.Probe`.

- a local folder written by ``save_pretrained`` (checked before diffusers sees it: a pipeline class
  diffusers ships, safetensors weights);
- a hub id (``"stabilityai/stable-diffusion-xl-base-1.0"``): resolved in the Hugging Face cache first
  (so ``HF_HUB_OFFLINE=1`` works), downloaded by diffusers only when online and not cached;
- an already built ``DiffusionPipeline`` object (also the way to use a pipeline with custom code);
- ``"<name>:meta"``: a weightless full-size denoiser from a bundled config (catalogue and counting);
- ``"glyph"``: the embedded model diffprobe ships (a UNet), ``"spell"``, its character-aware successor that writes
  any word of 1-8 letters, and ``"glyph-mmdit"``, their joint-attention (SD3-family) sibling.

A string is a hub id when it is a valid repo id with exactly one slash and does not start with
``.``, ``/`` or ``~``; dots are allowed (``black-forest-labs/FLUX.1-dev``). An existing directory
always wins over a hub id of the same spelling.

Weights are loaded from safetensors only: pickle checkpoints (``.bin``, ``.pt``, ``.ckpt``) can
run arbitrary code when unpickled, so they are refused with the conversion command.
"""
from __future__ import annotations

import contextlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch

from .devices import resolve_device, resolve_dtype
from .errors import ModelLoadError, did_you_mean
from .zoo.meta import META_CONFIGS, meta_denoiser

__all__ = ["load", "DEFAULT_MODEL", "is_hub_id"]

#: Name of the embedded default model (trained and shipped with diffprobe).
DEFAULT_MODEL = "glyph"
#: Every model diffprobe ships, by name: the UNets ``glyph`` and ``spell`` and the joint-attention ``glyph-mmdit``.
ZOO_MODELS = (DEFAULT_MODEL, "spell", "glyph-mmdit")

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
_CONVERT = (
    "If you trust the file, convert it once: `DiffusionPipeline.from_pretrained(path, use_safetensors=False)"
    ".save_pretrained(new_path)` writes safetensors; then load new_path."
)


def _meta_names() -> str:
    return ", ".join(k + ":meta" for k in META_CONFIGS)


def is_hub_id(text: str) -> bool:
    """Whether ``text`` reads as a Hugging Face repo id (``owner/name``, dots allowed)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if text.count("/") != 1 or text.startswith((".", "/", "~")):
        return False
    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


def _zoo_model(name: str, need_weights: bool = True) -> tuple[Path, dict, Any]:
    """(folder, generation defaults, prompt check or None) of a model diffprobe ships (one of ``ZOO_MODELS``)."""
    if name == DEFAULT_MODEL:
        from .zoo.glyph import HEIGHT, WIDTH, default_model_path

        path, defaults, train = Path(default_model_path()), {"height": HEIGHT, "width": WIDTH}, "make train-glyph"
        check = None
    else:
        from .zoo import glyph_mmdit, spell

        z, train = (spell, "make train-spell") if name == spell.NAME else (glyph_mmdit, "make train-mmdit")
        path, check = Path(z.default_model_path()), z.check_prompt
        defaults = {"height": z.HEIGHT, "width": z.WIDTH, "guidance": z.GUIDANCE}
        if getattr(z, "CALL", None):  # glyph-mmdit's own pipeline call settings (its T5 length)
            defaults["call"] = dict(z.CALL)
    if need_weights and not (path / "model_index.json").exists():
        raise ModelLoadError(
            f"The embedded model {name!r}'s weights are missing at {path}. Train them with `{train}` "
            "or pass another model."
        )
    return path, defaults, check


def _snapshot_defaults(path: Path) -> tuple[dict, Any] | None:
    """(generation defaults, prompt check) of a pipeline folder written by one of diffprobe's spelling trainers (a
    run's ``pipeline/`` or a ``--snapshot``), or None for any other folder. Its ``train_state.json`` records what
    the trainer built: glyph-mmdit's transformer config (the shipped model's defaults: 32x128 pixels, one T5
    token), or spell's UNet config with the image size it trains at (``training/spell``: an IF pipeline, whose
    own default would be a square image)."""
    try:
        state = json.loads((path / "train_state.json").read_text())
    except (OSError, ValueError):
        return None
    recipe = state.get("recipe") if isinstance(state, dict) else None
    if not isinstance(recipe, dict):
        return None
    if "transformer_config" in recipe:
        _, defaults, check = _zoo_model("glyph-mmdit", need_weights=False)
        return defaults, check
    if "unet_config" in recipe and {"height", "width"} <= recipe.keys():
        _, defaults, check = _zoo_model("spell", need_weights=False)
        return {**defaults, "height": int(recipe["height"]), "width": int(recipe["width"])}, check
    return None


OFFLOADS = ("model", "sequential")
ADAPTER_CONFIG = "adapter_config.json"  # peft's adapter folder (written by diffprobe finetune)


def _nnsight_model(source: Any, dtype, device, offload: str | None = None, lora=None) -> Any:
    """nnsight's DiffusionModel around a pipeline (a folder, a hub id, or a pipeline object), placed on
    ``device`` in ``dtype``, with diffusers' CPU offload when asked. diffusers' offload hooks rewrite
    ``forward``, so they are installed before nnsight wraps the pipeline; LoRA adapters (``lora``, a
    ``diffprobe finetune`` folder) go in before both, so every intervention sees the adapted layers."""
    from nnsight.modeling.diffusion import DiffusionModel, _PipelineModule

    class _ObjectDiffusionModel(DiffusionModel):
        """nnsight's DiffusionModel over an already built pipeline object (0.8.1 takes paths only)."""

        def _load(self, repo_id, *args, **kwargs):
            self.pipeline = repo_id
            return _PipelineModule(repo_id)

    kwargs = {"torch_dtype": dtype} if dtype is not None else {}
    if isinstance(source, (str, Path)) and offload is None and lora is None:
        with _quiet_rename():
            model = DiffusionModel(str(source), dispatch=True, use_safetensors=True, **kwargs)
        model.pipeline.to(device)
        return model
    if isinstance(source, (str, Path)):
        from diffusers import DiffusionPipeline

        with _quiet_rename():
            source = DiffusionPipeline.from_pretrained(str(source), use_safetensors=True, **kwargs)
    elif dtype is not None:
        source.to(dtype=dtype)
    if lora is not None:
        apply_lora(source, lora)
    if offload is None:
        source.to(device)
    else:
        _offload(source, offload, device)
    return _ObjectDiffusionModel(source, dispatch=True)


def apply_lora(pipeline, adapter_dir) -> None:
    """Load peft LoRA adapters saved by :func:`diffprobe.finetune` into ``pipeline``'s denoiser, in place
    (``PeftModel.from_pretrained`` swaps the targeted Linear layers for peft's LoRA layers)."""
    try:
        from peft import PeftModel
    except ImportError:
        raise ModelLoadError("LoRA adapters need the peft package: pip install peft", field="lora") from None

    path = Path(adapter_dir)
    if not (path / ADAPTER_CONFIG).is_file():
        full = path / "pipeline"
        hint = f" (a full fine-tune: load({str(full)!r}) instead)" if (full / "model_index.json").exists() else ""
        raise ModelLoadError(f"{path} holds no peft adapter ({ADAPTER_CONFIG} missing){hint}; give the --out folder "
                             "of `diffprobe finetune`.", field="lora")
    denoiser = getattr(pipeline, "unet", None) or getattr(pipeline, "transformer", None)
    try:
        PeftModel.from_pretrained(denoiser, str(path), is_trainable=False)  # injects the layers into denoiser
    except (ValueError, KeyError, RuntimeError, OSError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ModelLoadError(f"the adapter in {path} does not fit this model's denoiser ({type(exc).__name__}: "
                             f"{first}).", field="lora") from None


@contextlib.contextmanager
def _quiet_rename():
    """diffusers 0.42 renamed ``torch_dtype`` to ``dtype`` with a FutureWarning; older releases (>= 0.35,
    our lower bound) know only ``torch_dtype``, so keep it and hush that one warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch_dtype.*deprecated.*", category=FutureWarning)
        yield


def _offload(pipeline, offload: str, device) -> None:
    """diffusers' CPU offload: weights wait on the CPU and move to ``device`` when their component runs
    ("model": whole components, little slower; "sequential": submodule by submodule, slowest, least memory)."""
    try:
        if offload == "model":
            pipeline.enable_model_cpu_offload(device=device)
        else:
            pipeline.enable_sequential_cpu_offload(device=device)
    except (ImportError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"offload={offload!r} could not be enabled ({type(exc).__name__}: {exc}); it needs "
                             "the accelerate package and a device to offload to.", field="offload") from None
    pipeline._diffprobe_offload = offload


def _check_pipeline_folder(path: Path, shown: str) -> str:
    """Refuse, before diffusers runs, a folder that is not a stock pipeline with safetensors weights;
    returns the pipeline class it names."""
    import diffusers

    index_file = path / "model_index.json"
    if not index_file.exists():
        raise ModelLoadError(
            f"{shown} is a directory but not a diffusers pipeline (no model_index.json). "
            "Point to a folder written by DiffusionPipeline.save_pretrained()."
        )
    try:
        index = json.loads(index_file.read_text(encoding="utf-8"))
        class_name = index["_class_name"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise ModelLoadError(
            f"{index_file} is not a valid pipeline index ({type(exc).__name__}: {exc}); re-save the pipeline "
            "with save_pretrained()."
        ) from None
    custom = [] if hasattr(diffusers, str(class_name)) else [f"pipeline class {class_name!r}"]
    for component, spec in index.items():
        if component.startswith("_") or not isinstance(spec, list) or len(spec) != 2 or spec[0] is None:
            continue
        if spec[0] not in ("diffusers", "transformers"):
            custom.append(f"{component} from module {spec[0]!r}")
    if custom:
        raise ModelLoadError(
            f"{shown} needs code that diffusers does not ship ({'; '.join(custom)}). diffprobe loads stock "
            "pipelines only and never runs code from a model folder. If you have read that code and trust it, "
            "build the pipeline yourself (e.g. DiffusionPipeline.from_pretrained(path, custom_pipeline=..., "
            "trust_remote_code=True)) and pass the object: diffprobe.load(pipeline)."
        )
    for component in (c for c, s in index.items() if not c.startswith("_") and isinstance(s, list)):
        folder = path / component
        if not folder.is_dir():
            continue
        files = [f.name for f in folder.iterdir()]
        pickles = [f for f in files if f.endswith(_PICKLE_SUFFIXES)]
        if pickles and not any(f.endswith(".safetensors") for f in files):
            raise ModelLoadError(
                f"{shown}: {component}/{pickles[0]} is a pickle checkpoint and there is no .safetensors file "
                "beside it. diffprobe refuses pickles: unpickling can run arbitrary code. " + _CONVERT
            )
    return str(class_name)


def _load_local(path: Path, placement: dict, shown: str | None = None):
    shown = shown or str(path)
    pipeline_class = _check_pipeline_folder(path, shown)
    device = resolve_device(placement["device"])
    dtype = resolve_dtype(placement["dtype"], device, pipeline_class)
    try:
        return _nnsight_model(path, dtype, device, placement["offload"], placement.get("lora"))
    except (OSError, ValueError, AttributeError, KeyError, TypeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ModelLoadError(f"Could not load the pipeline in {shown}: {type(exc).__name__}: {first}") from None


def _offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def _cached_snapshot(repo_id: str) -> Path | None:
    """The cached snapshot folder of ``repo_id`` (its ``main`` revision), or None when not cached."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(repo_id, cache_dir=constants.HF_HUB_CACHE, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None
    return folder if (folder / "model_index.json").exists() else None


def _load_hub(repo_id: str, placement: dict):
    from huggingface_hub import constants

    snapshot = _cached_snapshot(repo_id)
    if snapshot is not None:
        return _load_local(snapshot, placement, shown=f"{repo_id!r} (cached at {snapshot})")
    offline = _offline()
    where = (
        f"Could not load {repo_id!r}: it is not a local directory, and its weights are not in the "
        f"Hugging Face cache at {constants.HF_HUB_CACHE}"
    )
    fix = (
        f". Get them with `huggingface-cli download {repo_id}` on a machine with access (then copy the "
        "cache or a save_pretrained() folder here), or pass a local directory. "
        f"For the catalogue alone, try a bundled config: {_meta_names()}."
    )
    if offline:
        raise ModelLoadError(where + " (HF_HUB_OFFLINE is set, so the hub was not asked)" + fix) from None
    device = resolve_device(placement["device"])
    dtype = resolve_dtype(placement["dtype"], device, None)
    try:
        return _nnsight_model(repo_id, dtype, device, placement["offload"], placement.get("lora"))
    except Exception as exc:  # hub errors are many types; all mean "not here"
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise ModelLoadError(where + f" and downloading it failed ({type(exc).__name__}: {first})" + fix) from None


def load(model: Any = DEFAULT_MODEL, *, device: Any = "auto", dtype: Any = "auto", offload: str | None = None,
         lora: Any = None):
    """Load a text-to-image pipeline into nnsight and return a :class:`~diffprobe.probe.Probe`.

    Args:
        model: a hub id (``"stabilityai/stable-diffusion-xl-base-1.0"``), a local directory written by
            ``save_pretrained``, an already built ``DiffusionPipeline``, ``"<name>:meta"`` for a
            weightless full-size denoiser (catalogue and counting only), ``"glyph"`` (the default)
            for the embedded model diffprobe ships, ``"spell"``, its successor that writes any word of 1-8
            letters, or ``"glyph-mmdit"``, their joint-attention sibling.
        device: ``"auto"`` (CUDA, then MPS, then the CPU), or ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"``.
        dtype: ``"auto"`` (float32 on the CPU; the family's dtype on an accelerator: float16 for SD1.x,
            SDXL, IF and PixArt, bfloat16 for SD3 and FLUX), ``"float32"``, ``"float16"``, ``"bfloat16"``
            or a ``torch.dtype``; ``None`` keeps the dtype the weights were saved in.
        offload: ``None``, ``"model"`` or ``"sequential"``: diffusers' CPU offload for models bigger than
            the GPU (weights wait on the CPU and move to ``device`` when they run; tracing works through it).
        lora: the ``--out`` folder of ``diffprobe finetune`` (peft LoRA adapters): loaded into the denoiser
            before nnsight wraps it, so sweeps and every intervention run on the fine-tuned model.
    """
    from .display import quiet

    with quiet():  # the libraries' loading notices and bars are noise here; every setting is restored after
        return _load(model, device, dtype, offload, lora)


def rewrap(probe):
    """A new :class:`~diffprobe.probe.Probe` over ``probe``'s pipeline object (same name and defaults): after the
    denoiser's modules were changed in place (LoRA adapters put in by ``diffprobe.finetune``), nnsight's view of
    the module tree and the site catalogue are built again from the live modules."""
    from .probe import Probe

    pipe = probe.pipeline
    if getattr(pipe, "_diffprobe_offload", None) is not None:
        raise ModelLoadError("a pipeline loaded with offload= cannot be wrapped again; fine-tune without offload, "
                             "then load(model, lora=DIR, offload=...).", field="offload")
    new = Probe.from_nnsight(_nnsight_model(pipe, None, pipe.device), name=probe.name, defaults=probe.defaults)
    new.prompt_check = probe.prompt_check
    return new


def _load(model: Any, device: Any, dtype: Any, offload: str | None, lora: Any = None):
    from .probe import Probe

    if offload is not None and offload not in OFFLOADS:
        raise ModelLoadError(f"offload={offload!r}: choose None, 'model' or 'sequential'.", field="offload")
    if lora is not None and not Path(lora).is_dir():
        raise ModelLoadError(f"lora={str(lora)!r} is not a folder; give the --out folder of `diffprobe finetune`.",
                             field="lora")
    placement = {"device": device, "dtype": dtype, "offload": offload, "lora": lora}
    if isinstance(model, str) and model.endswith(":meta"):
        if lora is not None:
            raise ModelLoadError(f"{model} has no weights to put LoRA adapters on.", field="lora")
        name = model[: -len(":meta")]
        return Probe.from_denoiser(meta_denoiser(name), name=model)
    if isinstance(model, str) and model in ZOO_MODELS:
        path, defaults, check = _zoo_model(model)
        probe = Probe.from_nnsight(_load_local(path, placement), name=model, defaults=defaults)
        probe.prompt_check = check
        return probe
    if isinstance(model, (str, Path)):
        text = str(model)
        if not text.strip() or "\x00" in text:
            raise ModelLoadError(f"{text!r} is not a model name; pass a hub id, a folder, {DEFAULT_MODEL!r} or a :meta name.")
        path = Path(model).expanduser()
        if path.is_dir():
            if (known := _snapshot_defaults(path)) is not None:  # a spelling trainer's snapshot
                defaults, check = known
                probe = Probe.from_nnsight(_load_local(path, placement), name=text, defaults=defaults)
                probe.prompt_check = check
                return probe
            return Probe.from_nnsight(_load_local(path, placement), name=text)
        if isinstance(model, str) and is_hub_id(model):
            return Probe.from_nnsight(_load_hub(model, placement), name=text)
        raise ModelLoadError(
            f"No model at {path.resolve()}: the directory does not exist, and {text!r} is not a hub id "
            f"(owner/name). Pass a folder written by save_pretrained(), a hub id such as "
            f"'stabilityai/stable-diffusion-xl-base-1.0', '{DEFAULT_MODEL}' (the embedded model) or one of "
            f"{_meta_names()}." + did_you_mean(text, [*ZOO_MODELS, *(k + ":meta" for k in META_CONFIGS)])
        )
    from diffusers import DiffusionPipeline

    if isinstance(model, DiffusionPipeline):
        resolved = resolve_device(device)
        # an object keeps its dtype unless one is asked for explicitly
        target = None if dtype == "auto" else resolve_dtype(dtype, resolved, type(model).__name__)
        return Probe.from_nnsight(_nnsight_model(model, target, resolved, offload, lora), name=type(model).__name__)
    raise ModelLoadError(
        f"Cannot load a {type(model).__name__}: pass a hub id, a directory, a DiffusionPipeline or '<name>:meta'."
    )
