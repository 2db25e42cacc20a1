"""Train the spelling model (`spell`) on the CPU.

    python -m training.spell.train --out runs/spell [--steps N] [--resume]
    python -m training.spell.train --out runs/spell --init-from diffprobe/zoo/spell/weights   # new machine
    python -m training.spell.train --snapshot runs/spell --to diffprobe/zoo/spell/weights     # write the snapshot
    python -m training.spell.train --snapshot runs/spell --raw-snapshot     # ... of the raw weights (ckpt.pt)

--out gets ``ckpt.pt`` (atomic; full state: weights, AdamW, EMA, noise generator, step, wall time; --resume
continues bit-for-bit), ``loss.csv``, ``probe.csv``, ``train.json`` and ``pipeline/`` (the EMA weights as a stock
IFPipeline directory with the UNet in fp16, plus ``train_state.json``; refreshed atomically at every checkpoint).
``--snapshot`` copies that ``pipeline/`` to a committed folder (``--raw-snapshot``: exports ``ckpt.pt``'s raw weights
instead, for a short stage the EMA has not caught up with); ``--init-from`` warm-starts UNet + text encoder +
EMA from such a folder and continues the step count (and so the data stream; AdamW moments restart, hence a
fresh warm-up). ``--unet-from`` warm-starts only the UNet (e.g. from the shipped 32x96 glyph model, whose layer
shapes are identical: convolutions do not care about the image width).

Recipe (as training/glyph): v-prediction, cosine schedule, plain v-MSE, 10% empty prompts, AdamW, EMA, bf16
autocast, eager mode, one thread; half of each batch's timesteps from [900, 1000) where the word is decided.
Batches are a pure function of (seed, step) (training/batches.py, rendered ahead in ``--workers`` processes on a GPU).
"""
from __future__ import annotations

import collections
import copy
import json
import math
import os
import pathlib
import shutil
import time

import numpy as np
import torch

from training import runargs, runlog
from training.batches import batches, weighted_mse
from training.glyph.train import EMA, x0_from_v  # the same EMA and v -> x0 as glyph's

from diffprobe.zoo import spell_data as data

from . import model


def parse_args(argv=None):
    p = runargs.run_parser(__doc__, out="runs/spell", to="diffprobe/zoo/spell/weights", batch=16, lr=1e-3,
                           warmup=100, threads=1,
                           init_from_help="warm-start from a snapshot folder (e.g. diffprobe/zoo/spell/weights)")
    p.add_argument("--text-lr", type=float, default=1e-3)
    p.add_argument("--no-bf16", action="store_true",
                   help="fp32 everywhere (on CPUs without AMX fp32 is the default: bf16 is ~30x slower there)")
    p.add_argument("--raw-snapshot", action="store_true",
                   help="with --snapshot: export the run's raw weights (ckpt.pt), not its EMA pipeline/")
    p.add_argument("--unet-from", type=pathlib.Path, default=None,
                   help="warm-start only the UNet from a pipeline folder (e.g. diffprobe/zoo/glyph/weights)")
    return p.parse_args(argv)


def cpu_has_amx() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (Intel AMX, e.g. Sapphire Rapids): there bf16 autocast
    trains ~2x faster than fp32 (nineteenth session: 2.3 vs 4.5 s a batch-32 step, 2 threads); on AVX2-only CPUs
    it is ~30x slower."""
    return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


def lr_factor(step, args, start_step=0):
    if step - start_step < args.warmup:
        return (step - start_step + 1) / args.warmup
    start = int(args.decay_from * args.steps)
    if step < start:
        return 1.0
    frac = (step - start) / max(1, args.steps - start)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))


PROBE_FONT = "mono"  # the probe asks for mono letters so that letter k has fixed columns
LETTERS = [chr(65 + i) for i in range(26)]
PROBE_SINGLE_TEMPLATES = (0, 3, 5)  # the probe's single letters: three mono training templates (diagnose: all 11)


def guesses(hits: int, counts: collections.Counter) -> tuple[float, int, str]:
    """(accuracy, distinct letters guessed, the commonest guess and its share)."""
    n = sum(counts.values())
    top, count = counts.most_common(1)[0]
    return round(hits / n, 3), len(counts), f"{top} {count / n:.2f}"


def single_letters(x0, channels: int = 4, templates=None) -> dict:
    """A-Z alone on mono training templates (all of them by default), unjittered, one noise each: how often the x0
    prediction at the noisiest level is nearest its own letter's render (chance 1/26; ceiling ~0.8, the mean of
    jittered renders being itself blurred), how many letters it guesses, and its commonest guess's share."""
    if templates is None:
        templates = [t for t, _ in data.train_combos(("mono",))]
    g = torch.Generator().manual_seed(2024)
    hits, counts = 0, collections.Counter()
    for t in templates:
        refs = data.to_tensor([data.render(data.canonical(t, c, "mono")) for c in LETTERS])
        xs = x0([data.prompt(t, c, "mono") for c in LETTERS], torch.randn(26, channels, data.HEIGHT, data.WIDTH, generator=g))
        guess = ((xs[:, None] - refs[None]) ** 2).mean(dim=(2, 3, 4)).argmin(1)
        hits += int((guess == torch.arange(26)).sum())
        counts.update(LETTERS[int(i)] for i in guess)
    acc, distinct, top = guesses(hits, counts)
    return dict(single_letter_acc=acc, distinct_guesses=distinct, top_guess=top)


def _probe_items():
    """(template, word, split) for 32 held-out and 32 training words, on templates that allow mono."""
    temps = [t for t in range(len(data.TEMPLATES)) if (t, PROBE_FONT) not in data.HELD_OUT_COMBOS]
    items = []
    for split, words in (("heldout", data.eval_heldout()[:32]), ("train", data.eval_train()[:32])):
        items += [(temps[i % len(temps)], w, split) for i, w in enumerate(words)]
    return items


def slot_variants(template: int, word: str, font: str) -> list[tuple[torch.Tensor, int]]:
    """Per letter slot k of ``word``: (the 26 renders (26, 3, H, W) that differ from it only in letter k, the true
    letter's index): the nearest of them to a prediction says whether the model drew that letter."""
    def renders(k):
        others = [word[:k] + c + word[k + 1:] for c in LETTERS]
        return data.to_tensor([data.render(data.canonical(template, w, font)) for w in others])

    return [(renders(k), LETTERS.index(word[k])) for k in range(len(word))]


def nearest(candidates: torch.Tensor, x: torch.Tensor) -> int:
    """The index of the candidate image (N, 3, H, W) nearest ``x`` (3, H, W) in mean squared difference."""
    return int(((candidates - x) ** 2).mean(dim=(1, 2, 3)).argmin())


class Prober:
    """Cheap measurements of the EMA model's x0 prediction at t=999 from pure noise (prompt in mono letters):

    nn_acc_{heldout,train}: nearest clean rendering among the 64 probe words (same template; chance 1/64).
    letter_acc_{heldout,train}: for every letter position k, the nearest among the 26 renderings that differ
    from the true word only in letter k (chance 1/26); this sees partial spelling long before whole words.
    word_effect / template_effect: mean |x0(A) - x0(B)| with another word / another template, same noise.
    single_letter_acc: A-Z alone on three mono templates (:func:`single_letters`), the curriculum's first gate."""

    def __init__(self, seed=1234):
        self.items = _probe_items()
        self.words = [w for _, w, _ in self.items]
        self.prompts = [data.prompt(t, w, PROBE_FONT) for t, w, _ in self.items]
        g = torch.Generator().manual_seed(seed)
        self.noise = torch.randn(len(self.items), 3, data.HEIGHT, data.WIDTH, generator=g)
        self.refs = {}  # template -> (64, 3, H, W) renders of all probe words
        for t in sorted({t for t, _, _ in self.items}):
            self.refs[t] = data.to_tensor([data.render(data.canonical(t, w, PROBE_FONT)) for w in self.words])
        self.variants = [slot_variants(t, w, PROBE_FONT) for t, w, _ in self.items]

    @torch.no_grad()
    def __call__(self, unet, te, tok, sched, bf16):
        unet.eval(), te.eval()
        dev = unet.device
        ctx = torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16)

        def x0(prompts, noise, t=999):
            e = model.encode(te, tok, prompts)
            tt = torch.full((len(prompts),), t, dtype=torch.long)
            with ctx:
                v = unet(noise.to(dev), tt.to(dev), encoder_hidden_states=e).sample[:, :3].float().cpu()
            return x0_from_v(sched, noise, v, tt)

        return self.score(x0, self.noise)

    def score(self, x0, noise) -> dict:
        """The measurements, given ``x0(prompts, noise) -> predicted clean images`` and one noise per item."""
        xs = torch.cat([x0(self.prompts[i:i + 32], noise[i:i + 32]) for i in range(0, len(self.prompts), 32)])
        out = {}
        for split in ("heldout", "train"):
            nn, let, nlet, n = 0, 0, 0, 0
            for i, (t, w, s) in enumerate(self.items):
                if s != split:
                    continue
                n += 1
                nn += nearest(self.refs[t], xs[i]) == i
                for vs, true in self.variants[i]:
                    let += nearest(vs, xs[i]) == true
                    nlet += 1
            out[f"nn_acc_{split}"] = nn / n
            out[f"letter_acc_{split}"] = let / nlet
        # word / template effect: same noise, first probe item's template, other words / another template
        t0, w0, _ = self.items[0]
        other_t = (t0 + 3) % len(data.TEMPLATES)
        ps = [data.prompt(t0, w, PROBE_FONT) for w in (w0, "OPEN", "FISH", "HELLO")] + [data.prompt(other_t, w0, PROBE_FONT)]
        xe = x0(ps, noise[:1].expand(len(ps), -1, -1, -1))
        out["word_effect"] = float(sum((xe[0] - xe[i]).abs().mean() for i in range(1, 4)) / 3)
        out["template_effect"] = float((xe[0] - xe[4]).abs().mean())
        out["single_letter_acc"] = single_letters(x0, noise.shape[1], PROBE_SINGLE_TEMPLATES)["single_letter_acc"]
        return out


# ---------------------------------------------------------------------------------------------- export
def export_pipeline(unet, te, tok, ema, path, state: dict):
    """The EMA weights (``ema=None``: the weights given) as an IFPipeline folder (UNet fp16, text encoder fp32),
    plus train_state.json; atomic."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    u2, t2 = copy.deepcopy(unet), copy.deepcopy(te)
    if ema is not None:  # None: the weights as they are (a raw snapshot)
        ema.copy_to([u2, t2])
    u2, t2 = u2.cpu(), t2.cpu()
    u2.set_attn_processor(AttnProcessor2_0())
    u2.to(torch.float16)
    pipe = model.assemble_pipeline(u2, t2, tok)

    def write(tmp):
        pipe.save_pretrained(tmp, safe_serialization=True)
        (tmp / "train_state.json").write_text(json.dumps(state, indent=1, default=str))

    return runlog.atomic_dir(write, pathlib.Path(path))


def snapshot(run: pathlib.Path, to: pathlib.Path):
    """Copy ``run/pipeline`` (EMA, UNet fp16) to ``to`` (e.g. diffprobe/zoo/spell/weights), atomically."""
    src = run / "pipeline"
    tmp = to.with_name(to.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(src, tmp)
    if to.exists():
        shutil.rmtree(to)
    os.replace(tmp, to)
    size = sum(f.stat().st_size for f in to.rglob("*") if f.is_file())
    st = json.loads((to / "train_state.json").read_text())
    print(f"snapshot of step {st['step']} -> {to} ({size / 1e6:.1f} MB)")
    return to


def raw_snapshot(run: pathlib.Path, to: pathlib.Path):
    """Export ``run/ckpt.pt``'s raw (not EMA) weights to ``to`` as a snapshot (``train_state.json`` says so),
    atomically."""
    tok = model.build_tokenizer()
    te, unet = model.build_text_encoder(len(tok)), model.build_unet()
    step = load_raw(run / "ckpt.pt", unet, te)
    model.tokenize(tok, [""])  # as in training: sets the 77-token padding the saved tokenizer.json records
    state = json.loads((run / "pipeline" / "train_state.json").read_text())
    if state["step"] != step:
        raise RuntimeError(f"{run}: ckpt.pt is at step {step} but pipeline/ at {state['step']}")
    state.update(weights="raw (ckpt.pt), not EMA", saved=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()))
    export_pipeline(unet, te, tok, None, to, state)
    print(f"raw snapshot of step {step} -> {to}")
    return to


def load_raw(ckpt: pathlib.Path, unet, te) -> int:
    """Load a run's ``ckpt.pt`` raw (not EMA) weights into ``unet`` and ``te``; returns its step."""
    ck = torch.load(ckpt, map_location="cpu", weights_only=False)
    unet.load_state_dict(ck["unet"])
    model.load_text_encoder_state(te, ck["te"])  # (grows a pre-slot-letter vocabulary)
    return ck["step"]


def load_from(folder: pathlib.Path, unet, te=None):
    from diffusers import UNet2DConditionModel
    from transformers import T5EncoderModel

    u = UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=torch.float32)
    unet.load_state_dict(u.state_dict())
    if te is not None:
        t = T5EncoderModel.from_pretrained(folder / "text_encoder", torch_dtype=torch.float32)
        model.load_text_encoder_state(te, t.state_dict())


# ------------------------------------------------------------------------------------------------- main
def main(argv=None):
    args = parse_args(argv)
    runargs.check(args)  # an unknown face, a negative --text-weight: SpecError before anything is built
    if args.snapshot is not None:
        (raw_snapshot if args.raw_snapshot else snapshot)(args.snapshot, args.to)
        return
    torch.set_num_threads(args.threads)
    from diffusers.models.attention_processor import AttnProcessor

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    tok = model.build_tokenizer()
    te = model.build_text_encoder(len(tok))
    unet = model.build_unet()
    sched = model.build_train_scheduler()
    step, wall, start_step, origin = 0, 0.0, 0, "scratch"
    ckpt_path = out / "ckpt.pt"
    resuming = args.resume and ckpt_path.exists()
    if not resuming and args.init_from is not None:
        load_from(args.init_from, unet, te)
        st = json.loads((args.init_from / "train_state.json").read_text())
        step = start_step = int(st["step"])
        wall = float(st.get("wall_seconds", 0.0))
        origin = f"init-from {args.init_from} (step {step})"
        print(f"warm start from {args.init_from} at step {step}", flush=True)
    elif not resuming and args.unet_from is not None:
        load_from(args.unet_from, unet)
        origin = f"unet-from {args.unet_from}"
        print(f"UNet warm start from {args.unet_from}", flush=True)
    dev = torch.device(args.device)
    if dev.type == "cpu":
        unet.set_attn_processor(AttnProcessor())  # plain attention: faster backward on CPU than SDPA
    unet.to(dev), te.to(dev)
    params = [{"params": list(unet.parameters()), "lr": args.lr}, {"params": list(te.parameters()), "lr": args.text_lr}]
    opt = torch.optim.AdamW(params, betas=(0.9, 0.99), weight_decay=0.01)
    ema = EMA([unet, te], args.ema)
    gen = torch.Generator().manual_seed(args.seed * 1000003 + step)
    if resuming:
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        unet.load_state_dict(ck["unet"]), te.load_state_dict(ck["te"]), opt.load_state_dict(ck["opt"])
        ema.shadow = [[s.to(dev) for s in sh] for sh in ck["ema"]]
        gen.set_state(ck["gen"])
        step, wall, start_step, origin = ck["step"], ck["wall"], ck.get("start_step", 0), ck.get("origin", "?")
        print(f"resumed from step {step} ({wall / 60:.1f} min)", flush=True)
        runlog.trim_after(out, step)
    elif args.init_from is None:
        runlog.clear(out)

    T = sched.config.num_train_timesteps
    acp = sched.alphas_cumprod.float().to(dev)
    bf16 = not args.no_bf16 and (dev.type != "cpu" or cpu_has_amx())
    ids_null, mask_null = model.tokenize(tok, [""])
    recipe = {k: (str(v) if isinstance(v, pathlib.Path) else v) for k, v in vars(args).items()}
    recipe.update(bf16=bf16, unet_params=model.count_params(unet), text_params=model.count_params(te), origin=origin,
                  unet_config=model.UNET_CONFIG, text_config=model.TEXT_CONFIG, height=data.HEIGHT, width=data.WIDTH)
    prober = Prober()
    probe_unet, probe_te = copy.deepcopy(unet), copy.deepcopy(te)
    last_probe: dict = {}

    def run_probe():
        ema.copy_to([probe_unet, probe_te])
        return prober(probe_unet, probe_te, tok, sched, bf16)

    def save():
        ck = {"unet": unet.state_dict(), "te": te.state_dict(), "opt": opt.state_dict(), "ema": ema.shadow,
              "gen": gen.get_state(), "step": step, "wall": wall, "start_step": start_step, "origin": origin}
        torch.save(ck, str(ckpt_path) + ".tmp")
        os.replace(str(ckpt_path) + ".tmp", ckpt_path)
        state = dict(step=step, wall_seconds=round(wall, 1), seed=args.seed, batch=args.batch, origin=origin,
                     probe=last_probe, saved=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                     recipe=recipe)
        export_pipeline(unet, te, tok, ema, out / "pipeline", state)
        (out / "train.json").write_text(json.dumps(state, indent=1, default=str))

    log = runlog.RunLog(out)
    unet.train(), te.train()
    t_start = time.time()
    print(f"training from step {step} ({origin}); unet {recipe['unet_params']:,} text {recipe['text_params']:,}", flush=True)
    end = args.steps if args.until is None else min(args.steps, args.until)
    stream = batches(args, step)
    while step < end:
        t0 = time.time()
        for g, base in zip(opt.param_groups, (args.lr, args.text_lr)):
            g["lr"] = base * lr_factor(step, args, start_step)
        at, pixels, prompts, weights = next(stream)
        assert at == step
        x0 = pixels.to(dev)
        ids, mask = model.tokenize(tok, prompts)
        drop = torch.rand(args.batch, generator=gen) < args.cfg_drop
        ids[drop], mask[drop] = ids_null[0], mask_null[0]
        noisy = torch.rand(args.batch, generator=gen) < args.noisy_frac
        t_lo = torch.where(noisy, int(args.noisy_from * T), 0)
        t = t_lo + (torch.rand(args.batch, generator=gen) * (T - t_lo)).long().clamp(max=T - 1)
        noise = torch.randn(x0.shape, generator=gen).to(dev)
        ids, mask, t = ids.to(dev), mask.to(dev), t.to(dev)
        a = acp[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        target = a.sqrt() * noise - (1 - a).sqrt() * x0  # v
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            e = te(ids, attention_mask=mask)[0]
            pred = unet(xt, t, encoder_hidden_states=e).sample[:, :3]
        loss = weighted_mse(pred.float(), target, weights.to(dev))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(unet.parameters()) + list(te.parameters()), 1.0)
        opt.step()
        ema.update([unet, te], step)  # absolute step: a warm start keeps the full EMA decay
        step += 1
        wall += time.time() - t0
        log.loss(step, loss.item(), opt.param_groups[0]["lr"], wall)
        stop = args.max_minutes is not None and (time.time() - t_start) / 60 >= args.max_minutes
        if step % args.probe_every == 0 or step == end or stop:
            last_probe = log.probe(step, wall, run_probe())
        if step % args.ckpt_every == 0 or step == end or stop:
            log.flush()
            save()
        if stop:
            break
    log.close()
    print(f"done: {step} steps, {wall / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
