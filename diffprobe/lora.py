"""Fine-tuning only the localized layers: peft LoRA adapters on chosen sites' attention projections.

Why. The localization study (docs/science.md) finds the few attention layers that write the rendered text; the
paper's last application fine-tunes *only those* with LoRA to improve text rendering, matching the fine-tuning of
all attention layers at a fraction of the parameters and without touching the rest of the image. Here a
:class:`FinetuneSpec` names the sites (any selection of the catalogue: ``"cross:9 cross:10"``, ``"cross:all"``, or
:func:`random_sites_like` for a control) and the projections inside each site's attention module that get an
adapter (``to_q``, ``to_k``, ``to_v``, ``to_out.0`` by default, as in the paper). ``mode="full"`` trains every
weight of the denoiser instead (the baseline).

The objective is the pipeline's own: images go to the model's space (pixels in [-1, 1] for IF-style pipelines
such as the embedded glyph model; the VAE's scaled latents otherwise), are noised with the training form of the
pipeline's scheduler (``DDPMScheduler.from_config(pipeline.scheduler.config)``: ``add_noise``), and the denoiser is
regressed with MSE on the scheduler's ``prediction_type`` target (``get_velocity`` for v-prediction, the noise for
epsilon). Prompts are encoded once by the pipeline's frozen text encoder (:meth:`Adapter.encode`, the states the
cross-attention layers receive); ``cfg_drop`` of the rows get the empty prompt, as in training for guidance. The
timestep sampler is uniform, or, with ``noisy_frac``, draws that share from ``[noisy_from * T, T)`` -- the glyph
model's recipe (training/glyph/train.py: on 32x96 signs the word is decided only at t > ~900).

Determinism and resume. One ``torch.Generator`` seeded with ``seed`` draws every batch, timestep, noise and CFG drop;
the adapters are initialised under ``torch.manual_seed(seed)``; the learning rate is a linear warm-up and then
constant, so it does not depend on the total step count. Every ``ckpt_every`` steps ``DIR/checkpoint.pt`` (the
trainable tensors, AdamW's state, the generator's state, the step) is written atomically; running again with the
same spec (a larger ``steps`` allowed) continues from it, bit for bit the run that was never stopped.

Output (``DIR``): LoRA adapters in peft's own format (``adapter_config.json`` and ``adapter_model.safetensors``,
written by ``PeftModel.save_pretrained``), loadable with ``diffprobe.load(model, lora=DIR)``; for ``mode="full"``
a pipeline folder ``DIR/pipeline`` (``load(DIR/pipeline)``). ``DIR/finetune.json`` holds the spec, the data, the
trainable parameter count, the steps done and the wall time.
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .errors import SpecError

__all__ = ["FinetuneSpec", "FinetuneResult", "finetune", "load_data", "lora_params",
           "random_sites_like", "DEFAULT_TARGETS", "INFO_FILE", "CHECKPOINT"]

DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
INFO_FILE = "finetune.json"
CHECKPOINT = "checkpoint.pt"
MODES = ("lora", "full")


@dataclass(frozen=True)
class FinetuneSpec:
    """What to train and how. ``sites``: a site selection (``mode="lora"``); ``targets``: the Linear submodules of
    each site's attention module that get an adapter; ``rank``/``alpha``: LoRA's (alpha defaults to the rank)."""

    sites: str | None = "cross:all"
    mode: str = "lora"
    targets: tuple[str, ...] = DEFAULT_TARGETS
    rank: int = 4
    alpha: float | None = None
    steps: int = 200
    batch: int = 8
    lr: float = 1e-3
    warmup: int = 20
    weight_decay: float = 0.0
    seed: int = 0
    cfg_drop: float = 0.1
    noisy_frac: float = 0.0
    noisy_from: float = 0.9
    ckpt_every: int = 50
    bf16: bool = False

    def __post_init__(self):
        if self.mode not in MODES:
            raise SpecError(f"mode={self.mode!r}: choose 'lora' (adapters on the sites) or 'full' (every weight).",
                            field="mode")
        if self.mode == "lora" and not (isinstance(self.sites, str) and self.sites.strip()):
            raise SpecError("name the sites whose attention projections get LoRA adapters, e.g. 'cross:9 cross:10'.",
                            field="sites")
        targets = (self.targets,) if isinstance(self.targets, str) else tuple(self.targets)
        if not targets or any(not isinstance(t, str) or not t.strip() for t in targets):
            raise SpecError(f"targets must be submodule names such as to_q,to_k,to_v,to_out.0; got {self.targets!r}.",
                            field="targets")
        object.__setattr__(self, "targets", tuple(t.strip() for t in targets))
        for name, lo in (("rank", 1), ("steps", 1), ("batch", 1), ("warmup", 0), ("ckpt_every", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < lo:
                raise SpecError(f"{name} must be an integer >= {lo}; got {value!r}.", field=name)
        for name, lo, hi in (("lr", 0.0, None), ("cfg_drop", 0.0, 1.0), ("noisy_frac", 0.0, 1.0),
                             ("noisy_from", 0.0, 1.0), ("weight_decay", 0.0, None)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < lo or (hi is not None and
                                                                                                value > hi):
                raise SpecError(f"{name} must be a number >= {lo}{'' if hi is None else f' and <= {hi}'}; got "
                                f"{value!r}.", field=name)
        if self.lr <= 0:
            raise SpecError(f"lr must be positive; got {self.lr!r}.", field="lr")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["targets"] = list(self.targets)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "FinetuneSpec":
        return cls(**{k: (tuple(v) if k == "targets" else v) for k, v in d.items()})

    def resumable_from(self, other: "FinetuneSpec") -> bool:
        """Whether a run of ``other`` can be continued by this spec (everything equal but the step count)."""
        return dataclasses.replace(other, steps=self.steps) == self


@dataclass
class FinetuneResult:
    """The fine-tuned probe (in memory), where it was saved, and what the run cost."""

    probe: Any
    out: Path
    trainable_params: int
    steps: int
    seconds: float
    losses: list[float]


# -- data ----------------------------------------------------------------------------------------------------------
@dataclass
class TrainData:
    images: torch.Tensor  # (sample, channel, height, width) in [-1, 1]
    prompts: list[str]
    source: str


def load_data(data) -> TrainData:
    """Training pairs from ``glyph:heldout`` / ``glyph:train`` / ``glyph:all`` (the embedded model's renderer; the
    held-out split is the 32 template x word combinations glyph never saw) or a JSONL file of
    ``{"prompt": ..., "image": <path relative to the file>}`` lines (RGB images, all of one size)."""
    if isinstance(data, TrainData):
        return data
    text = str(data)
    if text.startswith("glyph:"):
        from .zoo.glyph import data as glyph

        split = text.split(":", 1)[1]
        splits = {"heldout": glyph.held_out_pairs, "train": glyph.train_pairs,
                  "all": lambda: [(t, w) for t in range(len(glyph.TEMPLATES)) for w in range(len(glyph.WORDS))]}
        if split not in splits:
            raise SpecError(f"{text!r}: the glyph data splits are glyph:heldout, glyph:train and glyph:all.",
                            field="data")
        pairs = splits[split]()
        return TrainData(glyph.to_tensor_batch(pairs), [glyph.prompt(t, glyph.WORDS[w]) for t, w in pairs], text)
    return _jsonl_data(Path(text))


def _jsonl_data(path: Path) -> TrainData:
    import numpy as np
    from PIL import Image

    if not path.is_file():
        raise SpecError(f"no training data at {path}: give glyph:heldout, glyph:train, glyph:all or a JSONL file of "
                        '{"prompt": ..., "image": ...} lines.', field="data")
    images, prompts = [], []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            img = Image.open(path.parent / row["image"]).convert("RGB")
            prompts.append(str(row["prompt"]))
        except (json.JSONDecodeError, KeyError, TypeError, OSError) as exc:
            raise SpecError(f"{path}:{i}: not a {{\"prompt\", \"image\"}} line with a readable image "
                            f"({type(exc).__name__}: {exc}).", field="data") from None
        images.append(np.asarray(img))
    if not images or len({a.shape for a in images}) != 1:
        raise SpecError(f"{path}: needs at least one line, and every image of one size.", field="data")
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    return TrainData(x, prompts, str(path))


# -- where the adapters go -----------------------------------------------------------------------------------------
def _target_modules(probe, spec: FinetuneSpec) -> list[str]:
    """Full names (relative to the denoiser) of the Linear layers that get adapters; refuses a missing one."""
    names = []
    for site in probe.sites.parse(spec.sites):
        attn = probe.denoiser.get_submodule(site.name)
        for t in spec.targets:
            try:
                module = attn.get_submodule(t)
            except AttributeError:
                have = [n for n, m in attn.named_modules() if isinstance(m, torch.nn.Linear)]
                raise SpecError(f"{site.label} ({site.name}) has no submodule {t!r}; its Linear layers are "
                                f"{', '.join(have)}.", field="targets") from None
            module = getattr(module, "base_layer", module)  # already adapted: peft keeps the Linear there
            if not isinstance(module, torch.nn.Linear):
                raise SpecError(f"{site.label}.{t} is a {type(module).__name__}, not a Linear layer.", field="targets")
            names.append(f"{site.name}.{t}")
    return names


def lora_params(probe, sites: str, targets: Sequence[str] = DEFAULT_TARGETS, rank: int = 4) -> int:
    """Parameters LoRA of ``rank`` adds at ``sites``' ``targets``: rank x (in + out) per Linear."""
    spec = FinetuneSpec(sites=sites, targets=tuple(targets), rank=rank)
    total = 0
    for name in _target_modules(probe, spec):
        m = probe.denoiser.get_submodule(name)
        m = getattr(m, "base_layer", m)
        total += rank * (m.in_features + m.out_features)
    return total


def random_sites_like(probe, sites: str, *, targets: Sequence[str] = DEFAULT_TARGETS, rank: int = 4, seed: int = 0,
                      kinds: Sequence[str] = ("self", "cross")) -> str:
    """A random selection of other sites (of ``kinds``) with the LoRA parameter count of ``sites`` (the control of
    the comparison): seeded random orders of the other sites, each site kept while it fits the budget; the first
    order that meets the budget exactly wins (else the closest under it, if within 10%)."""
    chosen = {s.label for s in probe.sites.parse(sites)}
    budget = lora_params(probe, sites, targets, rank)
    pool = [s.label for s in probe.sites if s.kind in kinds and s.label not in chosen]
    sizes = {label: lora_params(probe, label, targets, rank) for label in pool}
    rng = random.Random(seed)
    best: tuple[int, list[str]] = (0, [])
    for _ in range(1000):
        rng.shuffle(pool)
        picked, total = [], 0
        for label in pool:
            if total + sizes[label] <= budget:
                picked.append(label)
                total += sizes[label]
        if total == budget:
            return " ".join(picked)
        best = max(best, (total, picked), key=lambda b: b[0])
    if best[0] >= 0.9 * budget:
        return " ".join(best[1])
    raise SpecError(f"no set of other sites has {budget} LoRA parameters (closest {best[0]}); choose other sites "
                    "or kinds.", field="sites")


# -- the objective -------------------------------------------------------------------------------------------------
class Objective:
    """The pipeline's own denoising loss: noise with the training scheduler, regress its prediction target."""

    def __init__(self, pipeline, data: TrainData, spec: FinetuneSpec):
        from diffusers import DDPMScheduler

        self.sched = DDPMScheduler.from_config(pipeline.scheduler.config)
        self.prediction = self.sched.config.prediction_type
        if self.prediction not in ("v_prediction", "epsilon", "sample"):
            raise SpecError(f"the scheduler's prediction_type {self.prediction!r} is not supported.", field="model")
        self.spec, self.pipeline = spec, pipeline
        self.x0 = _to_model_space(pipeline, data.images)
        from .architectures import adapter_for

        denoiser = pipeline.unet
        cond, uncond = adapter_for(denoiser).encode(pipeline, data.prompts, None)
        self.cond, self.null = cond.detach().cpu(), uncond[:1].detach().cpu()
        self.T = self.sched.config.num_train_timesteps

    def loss(self, unet, gen: torch.Generator) -> torch.Tensor:
        spec, n = self.spec, len(self.x0)
        idx = torch.randint(n, (spec.batch,), generator=gen)
        x0, states = self.x0[idx], self.cond[idx].clone()
        drop = torch.rand(spec.batch, generator=gen) < spec.cfg_drop
        states[drop] = self.null[0]
        noisy = torch.rand(spec.batch, generator=gen) < spec.noisy_frac
        t_lo = torch.where(noisy, int(spec.noisy_from * self.T), 0)
        t = t_lo + (torch.rand(spec.batch, generator=gen) * (self.T - t_lo)).long().clamp(max=self.T - 1)
        noise = torch.randn(x0.shape, generator=gen)  # every draw on the CPU generator: the same on any device
        xt = self.sched.add_noise(x0, noise, t)
        target = {"v_prediction": lambda: self.sched.get_velocity(x0, noise, t), "epsilon": lambda: noise,
                  "sample": lambda: x0}[self.prediction]()
        device = next(unet.parameters()).device
        xt, t, states, target = xt.to(device), t.to(device), states.to(device), target.to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=spec.bf16):
            pred = unet(xt, t, encoder_hidden_states=states).sample
        if pred.shape[1] == 2 * x0.shape[1]:  # IF-style (prediction, variance) output: the variance half is unused
            pred = pred[:, : x0.shape[1]]
        return F.mse_loss(pred.float(), target)


def _to_model_space(pipeline, images: torch.Tensor) -> torch.Tensor:
    vae = getattr(pipeline, "vae", None)
    if vae is None:
        return images
    with torch.no_grad():
        latents = vae.encode(images.to(vae.device, vae.dtype)).latent_dist.mean
        return latents.float().cpu() * vae.config.scaling_factor


# -- training ------------------------------------------------------------------------------------------------------
def _trainable(unet) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in unet.named_parameters() if p.requires_grad]


def _prepare(probe, spec: FinetuneSpec):
    """Put the adapters in (or unfreeze everything) and return the denoiser and its peft wrapper (None: full)."""
    unet = probe.pipeline.unet
    if spec.mode == "full":
        unet.requires_grad_(True)
        return unet, None
    from peft import LoraConfig, get_peft_model

    targets = _target_modules(probe, spec)
    config = LoraConfig(r=spec.rank, lora_alpha=spec.alpha if spec.alpha is not None else spec.rank,
                        target_modules=targets, lora_dropout=0.0, init_lora_weights=True)
    torch.manual_seed(spec.seed)  # LoRA's A matrices are drawn from the global generator
    peft_model = get_peft_model(unet, config)  # injects in place: probe.pipeline.unet now holds the adapters
    return unet, peft_model


def _check_out(out: Path, spec: FinetuneSpec, data: TrainData) -> dict | None:
    """The saved run to resume, or None; refuses a folder that holds a different run."""
    info = out / INFO_FILE
    if not info.exists():
        return None
    saved = json.loads(info.read_text(encoding="utf-8"))
    other = FinetuneSpec.from_dict(saved["spec"])
    if not spec.resumable_from(other) or saved.get("data") != data.source:
        raise SpecError(f"{out} holds another fine-tuning run ({saved['spec']}, data {saved.get('data')}); give a "
                        "new --out, or the same settings (a larger --steps continues it).", field="out")
    if saved.get("steps_done", 0) > spec.steps:
        raise SpecError(f"{out} is already past step {spec.steps} ({saved['steps_done']} steps done).", field="steps")
    return saved


def finetune(model, data, out, spec: FinetuneSpec | None = None, *, progress: bool | None = None, **overrides
             ) -> FinetuneResult:
    """Fine-tune ``model`` (a name for :func:`diffprobe.load`, or a :class:`~diffprobe.probe.Probe`, which is
    changed in place) on ``data`` (see :func:`load_data`) and save to ``out``; resumes a run saved there.

    ``spec`` or keyword overrides of :class:`FinetuneSpec` (``sites=``, ``steps=``, ``seed=`` ...). Returns the
    fine-tuned probe (re-wrapped so every intervention sees the adapters), the trainable parameter count, steps
    and seconds."""
    from .display import _tqdm, progress_enabled
    from .loading import load, rewrap

    spec = dataclasses.replace(spec, **overrides) if spec is not None else FinetuneSpec(**overrides)
    data = load_data(data)
    out = Path(out)
    saved = _check_out(out, spec, data)
    probe = load(model, dtype="float32") if isinstance(model, (str, Path)) else model
    _check_model(probe)
    objective = Objective(probe.pipeline, data, spec)
    unet, peft_model = _prepare(probe, spec)
    params = _trainable(unet)
    opt = torch.optim.AdamW([p for _, p in params], lr=spec.lr, betas=(0.9, 0.99), weight_decay=spec.weight_decay)
    gen = torch.Generator().manual_seed(spec.seed)
    step, wall, losses = _resume(out, params, opt, gen) if saved is not None else (0, 0.0, [])
    out.mkdir(parents=True, exist_ok=True)
    unet.train()
    bar = _tqdm()(total=spec.steps, initial=step, desc="finetune", dynamic_ncols=True,
                  disable=not progress_enabled(progress))
    try:
        while step < spec.steps:
            t0 = time.perf_counter()
            for g in opt.param_groups:
                g["lr"] = spec.lr * min(1.0, (step + 1) / max(1, spec.warmup))
            loss = objective.loss(unet, gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for _, p in params], 1.0)
            opt.step()
            step += 1
            wall += time.perf_counter() - t0
            losses.append(float(loss.item()))
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            if step % spec.ckpt_every == 0 or step == spec.steps:
                _save(out, spec, data, probe.pipeline, peft_model, params, opt, gen, step, wall, losses)
    finally:
        bar.close()
        unet.eval()
        unet.requires_grad_(False)
    return FinetuneResult(rewrap(probe), out, sum(p.numel() for _, p in params), step, wall, losses)


def _check_model(probe) -> None:
    if probe.pipeline is None:
        raise SpecError(f"{probe.name} has no weights to fine-tune (a :meta build).", field="model")
    unet = getattr(probe.pipeline, "unet", None)
    if unet is None:
        raise SpecError(f"finetune supports UNet pipelines (SD 1.x/2.x, IF); {probe.name} has none.", field="model")
    if any(hasattr(m, "lora_A") for m in unet.modules()):
        raise SpecError(f"{probe.name}'s denoiser already holds LoRA adapters; fine-tune the base model (a run "
                        "continues from its --out folder).", field="model")


def _resume(out: Path, params, opt, gen) -> tuple[int, float, list[float]]:
    """Restore the trainable tensors, AdamW and the generator from DIR/checkpoint.pt: (step, wall, losses)."""
    if not (out / CHECKPOINT).exists():
        return 0, 0.0, []
    ck = torch.load(out / CHECKPOINT, map_location="cpu", weights_only=True)
    with torch.no_grad():
        for (_, p), saved in zip(params, ck["params"]):
            p.copy_(saved)
    opt.load_state_dict(ck["opt"])
    gen.set_state(ck["gen"])
    return int(ck["step"]), float(ck["wall"]), list(ck["losses"])


def _save(out: Path, spec, data, pipeline, peft_model, params, opt, gen, step, wall, losses) -> None:
    """The checkpoint (atomic), then the model (peft adapters, or the full pipeline), then finetune.json."""
    ck = {"params": [p.detach().cpu().clone() for _, p in params], "opt": opt.state_dict(), "gen": gen.get_state(),
          "step": step, "wall": wall, "losses": losses}
    tmp = out / (CHECKPOINT + ".tmp")
    torch.save(ck, tmp)
    os.replace(tmp, out / CHECKPOINT)
    if peft_model is not None:
        peft_model.save_pretrained(str(out), safe_serialization=True)
    else:
        _save_pipeline(pipeline, out / "pipeline")
    info = dict(spec=spec.to_dict(), data=data.source, trainable_params=sum(p.numel() for _, p in params),
                steps_done=step, wall_seconds=round(wall, 2), final_loss=losses[-1] if losses else None,
                format="peft LoRA (adapter_config.json, adapter_model.safetensors)" if peft_model is not None else
                "diffusers pipeline folder (pipeline/)")
    (out / INFO_FILE).write_text(json.dumps(info, indent=1), encoding="utf-8")


def _save_pipeline(pipe, path: Path) -> None:
    import shutil

    tmp = path.with_name(path.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    pipe.save_pretrained(str(tmp), safe_serialization=True)
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)
