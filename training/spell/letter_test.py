"""Can the `spell` UNet learn single letters at all? A controlled test (docs/model-card-spell.md, twelfth session):

    python -m training.spell.letter_test [--init FOLDER|RUN/ckpt.pt|scratch] [--layout model|alone]
                                         [--varied | --templates all|T,.. [--jitter]] [--steps 200] [--threads 2]

From a snapshot's weights (default diffprobe/zoo/spell/weights; a run's ``ckpt.pt``: its raw weights; ``scratch``
builds fresh ones; nothing is written back; ``--steps 0`` only measures): one template (the red sign), mono, the
letters A-Z rendered without jitter, batch 32, the trainer's recipe (v-prediction, cosine schedule, half the
timesteps from [900, 1000), AdamW lr 5e-4 / text lr 3e-4, grad clip 1, fp32), no EMA, no empty prompts. Every 25
steps: accuracy of the x0 prediction at t=999 from pure noise (nearest of the 26 clean renders; chance 1/26, one
noise per letter) and the spread: the mean |x0(a) - x0(b)| between the 26 letters' predictions from ONE shared
noise (0: the text is ignored).
``--layout`` places the quoted letter: ``model`` as the model is prompted (``a red sign in mono letters that says
"A"``), ``alone`` (``"A"``: only the letter's tokens). ``--varied`` trains on the curriculum's stage-1 batches
instead (single random letters on every mono training template, jittered, prompts with and without the face;
measured on the red sign as before): what the variation costs at the same batch. ``--templates 0,3,..`` (``all``:
every mono training template) and ``--jitter`` take that variation apart (``--varied`` = ``--templates all
--jitter``). ``--max-letters 3`` (3 to 8) asks the same of WORDS: it trains on the stage-2 kind of batch
(words and random strings of 1 to that many letters, half random) on the given templates (default: the red sign
alone, unjittered) and measures, on the first of them, the letter accuracy in each slot of 64 probe words of 3 to
that many letters (32 held out, 32 trained; nearest of the 26 renders that differ in that letter; chance 1/26):
can the UNet place letters side by side when little else varies? The mirror of training/mmdit/letter_test.py.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import time

import numpy as np
import torch

from diffprobe.zoo import spell_data as data
from training import runargs
from training.glyph.train import x0_from_v

from . import model
from .train import LETTERS, load_from, load_raw, nearest, slot_variants

LAYOUTS = {
    "model": lambda c: data.prompt(0, c, "mono"),
    "alone": lambda c: f'"{c}"',
}
DEFAULT_INIT = pathlib.Path(__file__).resolve().parents[2] / "diffprobe" / "zoo" / "spell" / "weights"


def build(init: str | pathlib.Path):
    """(unet, text encoder, tokenizer, where the weights came from)."""
    torch.manual_seed(0)
    tok = model.build_tokenizer()
    te, unet = model.build_text_encoder(len(tok)), model.build_unet()
    origin = "scratch"
    if str(init).endswith(".pt"):  # a run's ckpt.pt: its raw (not EMA) weights
        origin = f"{init} (raw, step {load_raw(pathlib.Path(init), unet, te)})"
    elif str(init) != "scratch":
        folder = pathlib.Path(init)
        load_from(folder, unet, te)
        step = json.loads((folder / "train_state.json").read_text())["step"]
        origin = f"{folder} (step {step})"
    from diffusers.models.attention_processor import AttnProcessor

    unet.set_attn_processor(AttnProcessor())  # as the trainer on CPU
    return unet, te, tok, origin


def word_slots(template: int, max_letters: int):
    """(prompts, (64, 3, H, W) seeded noise, per word: [(26 renders differing in letter k, true index)] per slot)
    for 32 held-out and 32 training words of 3 to ``max_letters`` letters on ``template``."""
    words = data.eval_heldout(max_letters)[:32] + data.eval_train(max_letters)[:32]
    variants = [slot_variants(template, w, "mono") for w in words]
    noise = torch.randn(len(words), 3, data.HEIGHT, data.WIDTH, generator=torch.Generator().manual_seed(9))
    return [data.prompt(template, w, "mono") for w in words], noise, variants


def run(init=DEFAULT_INIT, layout: str = "model", steps: int = 200, every: int = 25, lr: float = 5e-4,
        text_lr: float = 3e-4, batch: int = 32, templates=None, jitter: bool = False, max_letters: int = 1):
    """Yields (step, accuracy, spread, seconds) every ``every`` steps, from step 0 (before training) to ``steps``.
    ``templates``: None (the red sign's own renders), ``"all"`` or indices: batches from ``spell_data.sample_batch``.
    ``max_letters`` > 1: words (see the module's doc); then the accuracy is a list, one per letter slot, and the
    spread is their mean."""
    if max_letters > 1 and templates in (None, "all"):
        templates = (0,) if templates is None else tuple(t for t, _ in data.train_combos(("mono",)))
    unet, te, tok, _ = build(init)
    sched = model.build_train_scheduler()
    T, acp = sched.config.num_train_timesteps, sched.alphas_cumprod.float()
    opt = torch.optim.AdamW([{"params": list(unet.parameters()), "lr": lr},
                             {"params": list(te.parameters()), "lr": text_lr}], betas=(0.9, 0.99), weight_decay=0.01)
    params = list(unet.parameters()) + list(te.parameters())
    prompt = LAYOUTS[layout]
    refs = data.to_tensor([data.render(data.canonical(0, c, "mono")) for c in LETTERS])
    probe_noise = torch.randn(26, 3, data.HEIGHT, data.WIDTH, generator=torch.Generator().manual_seed(9))
    g, rng = torch.Generator().manual_seed(1), np.random.default_rng(0)

    @torch.no_grad()
    def measure_letters():
        unet.eval(), te.eval()
        t = torch.full((26,), T - 1, dtype=torch.long)
        e = model.encode(te, tok, [prompt(c) for c in LETTERS])

        def x0(noise):
            return x0_from_v(sched, noise, unet(noise, t, encoder_hidden_states=e).sample[:, :3], t)

        x = x0(probe_noise)
        d = ((x[:, None] - refs[None]) ** 2).mean(dim=(2, 3, 4))
        shared = x0(probe_noise[:1].expand(26, -1, -1, -1))
        spread = (shared[:, None] - shared[None]).abs().mean(dim=(2, 3, 4)).sum() / (26 * 25)
        return (d.argmin(1) == torch.arange(26)).float().mean().item(), spread.item()

    if max_letters > 1:
        w_prompts, w_noise, w_variants = word_slots(templates[0], max_letters)

        @torch.no_grad()
        def measure_words():
            unet.eval(), te.eval()
            t = torch.full((len(w_prompts),), T - 1, dtype=torch.long)
            e = model.encode(te, tok, w_prompts)
            x = x0_from_v(sched, w_noise, unet(w_noise, t, encoder_hidden_states=e).sample[:, :3], t)
            hits = [[nearest(vs, x[i]) == true for vs, true in per]
                    for i, per in enumerate(w_variants)]
            slots = [[h[k] for h in hits if k < len(h)] for k in range(max(map(len, hits)))]
            accs = [round(sum(s) / len(s), 3) for s in slots]
            return accs, sum(accs) / len(accs)

    measure = measure_words if max_letters > 1 else measure_letters

    t0 = time.time()
    for step in range(steps + 1):
        if step % every == 0:
            acc, spread = measure()
            yield step, acc if max_letters > 1 else round(acc, 3), round(spread, 4), round(time.time() - t0)
        if step == steps:
            break
        unet.train(), te.train()
        if templates is not None:
            images, prompts, _ = data.sample_batch(0, step, batch, 1.0 if max_letters == 1 else 0.5, fonts=("mono",),
                                                   max_letters=max_letters,
                                                   templates=None if templates == "all" else templates, jitter=jitter)
            x0 = data.to_tensor(images)
        else:
            picked = torch.from_numpy(rng.integers(0, 26, batch))
            x0, prompts = refs[picked], [prompt(LETTERS[i]) for i in picked.tolist()]
        ids, mask = model.tokenize(tok, prompts)
        noisy = torch.rand(batch, generator=g) < 0.5
        t_lo = torch.where(noisy, int(0.9 * T), 0)
        t = t_lo + (torch.rand(batch, generator=g) * (T - t_lo)).long().clamp(max=T - 1)
        noise = torch.randn(x0.shape, generator=g)
        a = acp[t].view(-1, 1, 1, 1)
        pred = unet(a.sqrt() * x0 + (1 - a).sqrt() * noise, t, encoder_hidden_states=te(ids, attention_mask=mask)[0])
        loss = ((pred.sample[:, :3] - (a.sqrt() * noise - (1 - a).sqrt() * x0)) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--init", default=str(DEFAULT_INIT), help="a spell snapshot folder, a run's ckpt.pt, or 'scratch'")
    p.add_argument("--layout", choices=tuple(LAYOUTS), default="model")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--every", type=int, default=25)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--text-lr", type=float, default=3e-4)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--varied", action="store_true", help="train on stage-1 batches (all mono templates, jitter)")
    p.add_argument("--templates", default=None, help="train on these mono templates ('all', or indices 0,3,..)")
    p.add_argument("--jitter", action="store_true", help="jitter colours, size and place as the trainer does")
    p.add_argument("--max-letters", type=int, default=1, choices=(1, 3, 4, 5, 6, 7, 8),
                   help="3 or more: train on words of up to this many letters, measure their letter slots")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(f"init {args.init}, layout {args.layout}, lr {args.lr}/{args.text_lr}, batch {args.batch}, "
          f"{'stage-1 batches' if args.varied else f'templates {args.templates or 0}, jitter {args.jitter}'}",
          flush=True)
    templates, jitter = ("all", True) if args.varied else (args.templates, args.jitter)
    if templates not in (None, "all"):  # checked before any model is built (SpecError names the choices)
        templates = runargs.parse_templates(templates, ("mono",))
    elif templates is None and jitter:
        templates = (0,)
    for step, acc, spread, secs in run(args.init, args.layout, args.steps, args.every, args.lr, args.text_lr,
                                       args.batch, templates, jitter, args.max_letters):
        if args.max_letters > 1:
            print(f"step {step}: letter accuracy by slot {acc}, mean {spread:.3f} ({secs} s)", flush=True)
        else:
            print(f"step {step}: single-letter accuracy {acc}, spread {spread} ({secs} s)", flush=True)


if __name__ == "__main__":
    main()
