"""Train the embedded glyph model on this machine's CPU.

    python -m training.glyph.train --out runs/glyph --seed 0 [--steps N] [--resume]

Writes to --out: ``ckpt.pt`` (periodic, atomic; everything needed to resume bit-for-bit), ``loss.csv``
(step, loss, lr, wall seconds), ``probe.csv`` (word-sensitivity probes), ``train.json`` (recipe, steps,
wall time) and ``pipeline/`` (the EMA weights as an IFPipeline directory, refreshed at every checkpoint).

Recipe: v-prediction on a cosine (squaredcos_cap_v2) schedule, plain v-MSE (no min-SNR: that down-weights the
noisy timesteps where the word is decided), 10% empty prompts for classifier-free guidance, AdamW, EMA, bf16
autocast, eager mode, 1 thread by default. Half of each batch's timesteps come from the noisiest range
[noisy_from * T, T): on these 32x96 signs the word can still be read off x_t up to t ~ 900 (a nearest-rendering
classifier of x_t is 97% right at t=900, 61% at t=950), so only the last tenth of the schedule needs the prompt to
know the word, and uniform sampling spends ~90% of the batch where the word can be copied from the input.
The shipped model was trained in two phases (``make train-glyph``; docs/model-card.md).
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import pathlib
import time

import torch
import torch.nn.functional as F

from diffprobe.zoo.glyph import data

from . import model

PROBE_WORDS = ("STOP", "OPEN", "FISH", "HELLO")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path("runs/glyph"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--text-lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--decay-from", type=float, default=0.8, help="cosine lr decay over the last (1-x) of steps")
    p.add_argument("--ema", type=float, default=0.998)
    p.add_argument("--cfg-drop", type=float, default=0.1)
    p.add_argument("--noisy-frac", type=float, default=0.5,
                   help="fraction of timesteps drawn from the noisiest range [noisy-from * T, T)")
    p.add_argument("--noisy-from", type=float, default=0.9,
                   help="start of the noisiest range, as a fraction of T (0.9: t in [900, 1000))")
    p.add_argument("--ckpt-every", type=int, default=250)
    p.add_argument("--probe-every", type=int, default=50)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-bf16", action="store_true")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--ship", action="store_true", help="when done, copy the EMA pipeline (UNet in fp16) into "
                   "diffprobe/zoo/glyph/weights")
    p.add_argument("--xattn-mask", action="store_true", help="diagnostic only: mask pad tokens in cross-attention "
                   "(IFPipeline does not, so a model trained this way does not match the pipeline)")
    return p.parse_args(argv)


class EMA:
    def __init__(self, modules, decay):
        self.decay = decay
        self.shadow = [[p.detach().clone().float() for p in m.parameters()] for m in modules]

    @torch.no_grad()
    def update(self, modules, step):
        d = min(self.decay, (1 + step) / (10 + step))
        for sh, m in zip(self.shadow, modules):
            for s, p in zip(sh, m.parameters()):
                s.mul_(d).add_(p.detach().float(), alpha=1 - d)

    @torch.no_grad()
    def copy_to(self, modules):
        for sh, m in zip(self.shadow, modules):
            for s, p in zip(sh, m.parameters()):
                p.copy_(s)


def lr_factor(step, args):
    if step < args.warmup:
        return (step + 1) / args.warmup
    start = int(args.decay_from * args.steps)
    if step < start:
        return 1.0
    frac = (step - start) / max(1, args.steps - start)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))


def x0_from_v(sched, xt, v, t):
    a = sched.alphas_cumprod[t].float().view(-1, 1, 1, 1)
    return a.sqrt() * xt - (1 - a).sqrt() * v


@torch.no_grad()
def probe(unet, te, tok, sched, bf16, seed=1234, xattn_mask=False):
    """Cheap word-sensitivity measurements on the model's x0 prediction from the same noise.

    word_effect: mean |x0(word A) - x0(word B)| (same template, same noise), at t=999 and t=600.
    template_effect: same word, other template. nn_acc_*: the x0 prediction at t=999 from pure noise, classified by
    the nearest clean rendering among the 32 words of its template (train pairs and held-out pairs)."""
    unet.eval(), te.eval()
    g = torch.Generator().manual_seed(seed)
    out = {}
    ctx = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)

    def x0(prompts, t, noise):
        e = model.encode(te, tok, prompts)
        m = model.tokenize(tok, prompts)[1] if xattn_mask else None
        tt = torch.full((len(prompts),), t, dtype=torch.long)
        with ctx:
            v = unet(noise, tt, encoder_hidden_states=e, encoder_attention_mask=m).sample[:, :3].float()
        return x0_from_v(sched, noise, v, tt)

    noise = torch.randn(1, 3, data.HEIGHT, data.WIDTH, generator=g)
    for t in (999, 600):
        a = sched.alphas_cumprod[t]
        clean = data.to_tensor_batch([(0, data.WORDS.index("STOP"))])
        xt = a.sqrt() * clean + (1 - a).sqrt() * noise
        ps = [data.prompt(0, w) for w in PROBE_WORDS] + [data.prompt(3, "STOP")]
        xs = x0(ps, t, xt.expand(len(ps), -1, -1, -1))
        out[f"word_effect_t{t}"] = float(sum((xs[0] - xs[i]).abs().mean() for i in range(1, 4)) / 3)
        out[f"template_effect_t{t}"] = float((xs[0] - xs[4]).abs().mean())
    # nearest-rendering classification
    refs = {ti: data.to_tensor_batch([(ti, w) for w in range(len(data.WORDS))]) for ti in range(len(data.TEMPLATES))}
    for name, pairs in (("train", data.train_pairs()[::5][:32]), ("heldout", data.held_out_pairs())):
        noise = torch.randn(len(pairs), 3, data.HEIGHT, data.WIDTH, generator=g)
        xs = x0([data.prompt(ti, data.WORDS[wi]) for ti, wi in pairs], 999, noise)
        correct = 0
        for x, (ti, wi) in zip(xs, pairs):
            d = ((refs[ti] - x.unsqueeze(0)) ** 2).mean(dim=(1, 2, 3))
            correct += int(d.argmin()) == wi
        out[f"nn_acc_{name}"] = correct / len(pairs)
    unet.train(), te.train()
    return out


def export_pipeline(unet, te, tok, ema, path, dtype=torch.float32):
    """Save the EMA weights as an IFPipeline directory (UNet in ``dtype``; the small text encoder stays fp32)."""
    import copy

    u2, t2 = copy.deepcopy(unet), copy.deepcopy(te)
    ema.copy_to([u2, t2])
    from diffusers.models.attention_processor import AttnProcessor2_0

    u2.set_attn_processor(AttnProcessor2_0())
    u2.to(dtype)
    pipe = model.assemble_pipeline(u2, t2, tok)
    tmp = pathlib.Path(str(path) + ".tmp")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    pipe.save_pretrained(tmp, safe_serialization=True)
    if pathlib.Path(path).exists():
        import shutil

        shutil.rmtree(path)
    os.replace(tmp, path)
    return path


def ship_weights(pipeline_dir, dest=None) -> pathlib.Path:
    """Copy an exported pipeline directory to ``dest`` (default: the shipped weights) with the UNet in fp16."""
    import shutil

    from diffusers import UNet2DConditionModel

    from diffprobe.zoo.glyph import default_model_path

    src, dest = pathlib.Path(pipeline_dir), pathlib.Path(dest or default_model_path())
    tmp = dest.with_name(dest.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(src, tmp)
    unet = UNet2DConditionModel.from_pretrained(src / "unet")
    shutil.rmtree(tmp / "unet")
    unet.to(torch.float16).save_pretrained(tmp / "unet", safe_serialization=True)
    if dest.exists():
        shutil.rmtree(dest)
    tmp.rename(dest)
    return dest


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from diffusers.models.attention_processor import AttnProcessor
    from tqdm import tqdm

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    tok = model.build_tokenizer()
    te = model.build_text_encoder(len(tok))
    unet = model.build_unet()
    unet.set_attn_processor(AttnProcessor())  # plain attention: faster backward on CPU than SDPA
    sched = model.build_train_scheduler()
    params = [
        {"params": list(unet.parameters()), "lr": args.lr},
        {"params": list(te.parameters()), "lr": args.text_lr},
    ]
    opt = torch.optim.AdamW(params, betas=(0.9, 0.99), weight_decay=0.01)
    ema = EMA([unet, te], args.ema)
    gen = torch.Generator().manual_seed(args.seed)
    step, wall = 0, 0.0
    ckpt_path = out / "ckpt.pt"
    if args.resume and ckpt_path.exists():
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        unet.load_state_dict(ck["unet"]), te.load_state_dict(ck["te"]), opt.load_state_dict(ck["opt"])
        ema.shadow = ck["ema"]
        gen.set_state(ck["gen"])
        torch.set_rng_state(ck["torch_rng"])
        step, wall = ck["step"], ck["wall"]
        print(f"resumed from step {step} ({wall / 60:.1f} min)", flush=True)
        for f in ("loss.csv", "probe.csv"):  # drop rows logged after the checkpoint
            fp = out / f
            if fp.exists():
                lines = fp.read_text().splitlines(keepends=True)
                keep = [ln for ln in lines if not ln[:1].isdigit() or int(ln.split(",")[0]) <= step]
                fp.write_text("".join(keep))
    else:
        for f in ("loss.csv", "probe.csv"):
            (out / f).unlink(missing_ok=True)

    pairs = data.train_pairs()
    prompts = [data.prompt(t, data.WORDS[w]) for t, w in pairs]
    ids_all, mask_all = model.tokenize(tok, prompts)
    ids_null, mask_null = model.tokenize(tok, [""])
    images_all = data.to_tensor_batch(pairs)
    T = sched.config.num_train_timesteps
    acp = sched.alphas_cumprod.float()
    bf16 = not args.no_bf16
    recipe = {k: (str(v) if isinstance(v, pathlib.Path) else v) for k, v in vars(args).items()}
    recipe.update(unet_params=model.count_params(unet), text_params=model.count_params(te),
                  unet_config=model.UNET_CONFIG, text_config=model.TEXT_CONFIG)

    def save(final=False):
        ck = {"unet": unet.state_dict(), "te": te.state_dict(), "opt": opt.state_dict(), "ema": ema.shadow,
              "gen": gen.get_state(), "torch_rng": torch.get_rng_state(), "step": step, "wall": wall}
        torch.save(ck, str(ckpt_path) + ".tmp")
        os.replace(str(ckpt_path) + ".tmp", ckpt_path)
        export_pipeline(unet, te, tok, ema, out / "pipeline")
        info = dict(recipe, steps_done=step, wall_seconds=round(wall, 1), finished=final)
        (out / "train.json").write_text(json.dumps(info, indent=1, default=str))

    loss_f = open(out / "loss.csv", "a", newline="")
    lw = csv.writer(loss_f)
    if step == 0:
        lw.writerow(["step", "loss", "lr", "wall_s"])
    probe_f = open(out / "probe.csv", "a", newline="")
    pw = None
    unet.train(), te.train()
    bar = tqdm(total=args.steps, initial=step, desc="glyph", dynamic_ncols=True)
    while step < args.steps:
        t0 = time.time()
        for g, base in zip(opt.param_groups, (args.lr, args.text_lr)):
            g["lr"] = base * lr_factor(step, args)
        idx = torch.randint(len(pairs), (args.batch,), generator=gen)
        x0 = images_all[idx]
        ids, mask = ids_all[idx].clone(), mask_all[idx].clone()
        drop = torch.rand(args.batch, generator=gen) < args.cfg_drop
        ids[drop], mask[drop] = ids_null[0], mask_null[0]
        noisy = torch.rand(args.batch, generator=gen) < args.noisy_frac
        t_lo = torch.where(noisy, int(args.noisy_from * T), 0)
        t = t_lo + (torch.rand(args.batch, generator=gen) * (T - t_lo)).long().clamp(max=T - 1)
        noise = torch.randn(x0.shape, generator=gen)
        a = acp[t].view(-1, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        target = a.sqrt() * noise - (1 - a).sqrt() * x0  # v
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            e = te(ids, attention_mask=mask)[0]
            pred = unet(xt, t, encoder_hidden_states=e,
                        encoder_attention_mask=mask if args.xattn_mask else None).sample[:, :3]
        loss = F.mse_loss(pred.float(), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(unet.parameters()) + list(te.parameters()), 1.0)
        opt.step()
        ema.update([unet, te], step)
        step += 1
        wall += time.time() - t0
        lw.writerow([step, f"{loss.item():.5f}", f"{opt.param_groups[0]['lr']:.2e}", f"{wall:.1f}"])
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % args.probe_every == 0 or step == args.steps:
            loss_f.flush()
            pr = probe(unet, te, tok, sched, bf16, xattn_mask=args.xattn_mask)
            pr = {"step": step, "wall_s": round(wall, 1), **{k: round(v, 4) for k, v in pr.items()}}
            if pw is None:
                pw = csv.DictWriter(probe_f, fieldnames=list(pr))
                if probe_f.tell() == 0:
                    pw.writeheader()
            pw.writerow(pr)
            probe_f.flush()
            print(json.dumps(pr), flush=True)
        if step % args.ckpt_every == 0 or step == args.steps:
            loss_f.flush()
            save(final=step == args.steps)
    bar.close()
    loss_f.close(), probe_f.close()
    print(f"done: {step} steps, {wall / 60:.1f} min", flush=True)
    if args.ship:
        print(f"shipped to {ship_weights(out / 'pipeline')}", flush=True)


if __name__ == "__main__":
    main()
