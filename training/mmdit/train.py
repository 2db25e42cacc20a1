"""Train `glyph-mmdit` (training/mmdit/model.py) on the CPU, in two stages, on `spell`'s data (diffprobe/zoo/spell_data.py).

    python -m training.mmdit.train --stage vae --out runs/mmdit            # the autoencoder (minutes)
    python -m training.mmdit.train --stage dit --out runs/mmdit [--resume]  # text encoders + transformer
    python -m training.mmdit.train --out runs/mmdit --init-from diffprobe/zoo/glyph_mmdit/weights  # new machine
    python -m training.mmdit.train --snapshot runs/mmdit --to diffprobe/zoo/glyph_mmdit/weights

Stage ``vae``: MSE reconstruction of rendered signs (+1e-6 KL), then the latent shift/scale are measured on
held batches and written into the autoencoder's config (as SD3's ``shift_factor`` / ``scaling_factor``).
Stage ``dit``: rectified flow as SD3 (x_t = (1-s) x0 + s noise, target noise - x0, timestep 1000 s); half of
each batch's noise levels from [0.9, 1] (the word is decided at high noise: GLYPH-NOTES), the other half from
SD3's shifted uniform; 10% empty prompts; AdamW, EMA, grad clip 1. The autoencoder is frozen.
--out gets ``ckpt.pt`` (atomic, full state: --resume continues bit for bit), ``loss.csv``, ``probe.csv``,
``train.json`` and ``pipeline/`` (the EMA weights as a stock StableDiffusion3Pipeline folder, refreshed at every
checkpoint). Batches are a pure function of (seed, step).
"""
from __future__ import annotations

import copy
import json
import os
import pathlib
import time

import torch
import torch.nn.functional as F

from diffprobe.zoo import spell_data as data
from training import runargs, runlog
from training.batches import batches, weighted_mse
from training.glyph.train import EMA
from training.spell.train import Prober, lr_factor, snapshot

from . import model


def parse_args(argv=None):
    p = runargs.run_parser(__doc__, out="runs/mmdit", to="diffprobe/zoo/glyph_mmdit/weights", batch=32, lr=5e-4,
                           warmup=200, threads=2, init_from_help="warm-start from a pipeline folder")
    p.add_argument("--stage", choices=("vae", "dit"), default="dit")
    p.add_argument("--vae-steps", type=int, default=600)
    p.add_argument("--zero-pooled", action="store_true",
                   help="zero and freeze both CLIPs' text_projection: the pooled prompt (SD3's adaLN input) becomes a "
                        "constant, so the prompt reaches the image only through joint attention")
    p.add_argument("--reinit-letters", action="store_true",
                   help="(warm start) re-draw the letter tokens' embeddings in both CLIPs as std-1 codes "
                        "(letter code + slot code) / sqrt 2, instead of CLIP's std-0.02 rows (see reinit_letters)")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------------ stage vae
def train_vae(args):
    torch.manual_seed(args.seed)
    vae = model.build_vae().to(args.device)
    opt = torch.optim.AdamW(vae.parameters(), lr=2e-3, weight_decay=0.0)
    log = open(args.out / "vae_loss.csv", "w")
    t0 = time.time()
    for step in range(args.vae_steps):
        images, _, _ = data.sample_batch(args.seed + 17, step, args.batch, args.random_frac)
        x = data.to_tensor(images).to(args.device)
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.mean).sample
        mse = F.mse_loss(rec, x)
        loss = mse + 1e-6 * post.kl().mean()
        for g in opt.param_groups:
            g["lr"] = 2e-3 * min(1.0, (step + 1) / 50) * (0.1 if step > 0.8 * args.vae_steps else 1.0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        log.write(f"{step + 1},{mse.item():.6f}\n")
        if (step + 1) % 50 == 0:
            log.flush()
            print(f"vae step {step + 1} mse {mse.item():.5f} ({(time.time() - t0) / 60:.1f} min)", flush=True)
    vae.eval()
    with torch.no_grad():
        zs, err = [], []
        for i in range(8):
            images, _, _ = data.sample_batch(args.seed + 99, i, 32, args.random_frac)
            x = data.to_tensor(images).to(args.device)
            z = vae.encode(x).latent_dist.mean
            zs.append(z)
            err.append((vae.decode(z).sample.clamp(-1, 1) - x).abs().max().item() * 127.5)
        z = torch.cat(zs)
    shift, scale = float(z.mean()), float(1.0 / z.std())
    vae.register_to_config(shift_factor=shift, scaling_factor=scale)
    vae.save_pretrained(args.out / "vae", safe_serialization=True)
    (args.out / "vae.json").write_text(json.dumps(dict(steps=args.vae_steps, final_mse=mse.item(), shift=shift,
                                                       scale=scale, max_abs_err_255=max(err),
                                                       minutes=(time.time() - t0) / 60), indent=1))
    print(f"vae: shift {shift:.4f} scale {scale:.4f}, max reconstruction error {max(err):.1f}/255", flush=True)


# ------------------------------------------------------------------------------------------------ stage dit
class MMDiTProber(Prober):
    """spell's probe (letter / word accuracy of the x0 prediction at the noisiest level) for the MMDiT."""

    @torch.no_grad()
    def measure(self, tr, te1, te2, t5, tok, vae):
        for m in (tr, te1, te2):
            m.eval()
        g = torch.Generator().manual_seed(4321)
        noise = torch.randn(len(self.items), 4, data.HEIGHT, data.WIDTH, generator=g)
        dev = next(tr.parameters()).device

        def x0(prompts, z):
            return model.predict_x0(tr, te1, te2, t5, tok, vae, prompts, z.to(dev)).cpu()

        return self.score(x0, noise)


def export_pipeline(tr, te1, te2, t5, vae, tok, ema, path, state):
    t2, a2, b2 = copy.deepcopy(tr).cpu(), copy.deepcopy(te1).cpu(), copy.deepcopy(te2).cpu()
    ema.copy_to([t2, a2, b2])
    t2.to(torch.float16)  # the transformer ships in fp16 (9.4 MB instead of 18.7); it loads in any dtype
    pipe = model.assemble_pipeline(t2, copy.deepcopy(vae).cpu(), a2, b2, copy.deepcopy(t5).cpu(), tok)

    def write(tmp):
        pipe.save_pretrained(tmp, safe_serialization=True)
        (tmp / "train_state.json").write_text(json.dumps(state, indent=1, default=str))

    runlog.atomic_dir(write, pathlib.Path(path))


def load_from(folder: pathlib.Path, tr, te1, te2, t5):
    from diffusers import SD3Transformer2DModel
    from transformers import CLIPTextModelWithProjection, T5EncoderModel

    t5.load_state_dict(T5EncoderModel.from_pretrained(folder / "text_encoder_3").state_dict())

    tr.load_state_dict(SD3Transformer2DModel.from_pretrained(folder / "transformer").state_dict())
    te1.load_state_dict(CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder").state_dict())
    te2.load_state_dict(CLIPTextModelWithProjection.from_pretrained(folder / "text_encoder_2").state_dict())


@torch.no_grad()
def zero_pooled(te1, te2, ema):
    """Both CLIPs' ``text_projection`` (and their EMA copies) to zero, frozen: the pooled embedding that SD3 adds
    to the timestep embedding (adaLN modulation of every block) no longer depends on the prompt. Without this
    the model sends the template, and what it knows of the word, through that one global vector, where the
    paper's patching (which keeps the source's pooled embedding) cannot see it."""
    for k, te in enumerate((te1, te2), start=1):
        for i, (name, p) in enumerate(te.named_parameters()):
            if name == "text_projection.weight":
                p.zero_()
                p.requires_grad_(False)
                ema.shadow[k][i].zero_()


@torch.no_grad()
def reinit_letters(te1, te2, tok, seed):
    """The letter tokens (``s1 t2 ...``) of both CLIPs get new embedding rows ``(L[letter] + P[slot]) / sqrt 2`` with
    L, P ~ N(0, 1): every letter starts with one code shared by its 8 slots, every slot with one code shared by
    its 26 letters, both at unit scale. CLIP's std-0.02 rows are as small as its position embeddings and the
    causal attention output over the template words, which drown the letter in the residual stream: after 3,600
    steps the trained rows were still at 0.21 norm (init 0.16), with a cosine of 0.02-0.04 between one letter at
    two slots (GLYPH-NOTES: std-1 token embeddings is what made the UNet follow the word). Template tokens come
    before the word, so under CLIP's causal mask their states, and what the model learnt of templates, stay."""
    vocab = tok.get_vocab()
    g = torch.Generator().manual_seed(seed + 404)
    n, dim = data.MAX_LETTERS, te1.config.hidden_size
    codes_letter = torch.randn(len(model.LETTERS), dim, generator=g)
    codes_slot = torch.randn(n, dim, generator=g)
    for te in (te1, te2):
        rows = te.text_model.embeddings.token_embedding.weight
        for i, c in enumerate(model.LETTERS):
            for k in range(n):
                rows[vocab[f"{c}{k + 1}"]] = (codes_letter[i] + codes_slot[k]) / 2 ** 0.5


def letter_norm(te, tok) -> float:
    """The mean norm of the letter tokens' embedding rows: ~0.16 as CLIP draws them (std 0.02, 64 dims), ~8 once
    ``reinit_letters`` re-drew them (std 1)."""
    vocab = tok.get_vocab()
    rows = te.text_model.embeddings.token_embedding.weight[[vocab[f"{c}1"] for c in model.LETTERS]]
    return float(rows.norm(dim=1).mean())


def letters_redrawn(te, tok, state: dict) -> bool:
    """Whether a warm start's letter codes were re-drawn (and trained) already: its origin says so, or, as the
    origin only names the last warm start (the shipped step-27284 weights and the step-31245 snapshot lost the
    words), the rows are unit-scale: 1.0 lies a factor 6 above CLIP's draw and 7 below ``reinit_letters``'."""
    return "letter embeddings re-drawn" in state.get("origin", "") or letter_norm(te, tok) > 1.0


def sigmas(n, gen, args):
    """Noise levels: SD3's shifted uniform, half of them from [noisy_from, 1]."""
    u = torch.rand(n, generator=gen)
    s = model.SHIFT * u / (1 + (model.SHIFT - 1) * u)
    noisy = torch.rand(n, generator=gen) < args.noisy_frac
    hi = args.noisy_from + (1 - args.noisy_from) * torch.rand(n, generator=gen)
    return torch.where(noisy, hi, s)


def train_dit(args):
    from diffusers import AutoencoderKL

    dev = torch.device(args.device)
    out = args.out
    torch.manual_seed(args.seed)
    tok = model.build_tokenizer()
    te1, te2 = model.build_text_encoder(len(tok), args.seed), model.build_text_encoder(len(tok), args.seed + 1)
    t5 = model.build_t5(len(tok), args.seed + 3)
    torch.manual_seed(args.seed + 2)
    tr = model.build_transformer()
    step, wall, start_step, origin = 0, 0.0, 0, "scratch"
    ckpt_path = out / "ckpt.pt"
    resuming = args.resume and ckpt_path.exists()
    vae_dir = out / "vae" if (out / "vae").exists() else out / "pipeline" / "vae"  # stage vae's, or a warm start's
    if not resuming and args.init_from is not None:
        load_from(args.init_from, tr, te1, te2, t5)
        st = json.loads((args.init_from / "train_state.json").read_text())
        step = start_step = int(st["step"])
        wall = float(st.get("wall_seconds", 0.0))
        origin = f"init-from {args.init_from} (step {step})"
        vae_dir = args.init_from / "vae"
        if args.reinit_letters and letters_redrawn(te1, tok, st):
            print(f"--reinit-letters ignored: {args.init_from}'s letter codes were re-drawn and trained already "
                  f"({st['origin']}; letter rows at norm {letter_norm(te1, tok):.2f})", flush=True)
            origin += ", its letter codes kept"
        elif args.reinit_letters:
            reinit_letters(te1, te2, tok, args.seed)
            origin += ", letter embeddings re-drawn"
    vae = AutoencoderKL.from_pretrained(vae_dir).to(dev).eval().requires_grad_(False)
    for m in (tr, te1, te2, t5):
        m.to(dev)
    mods = [tr, te1, te2]
    params = [p for m in mods for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.99), weight_decay=0.01)
    ema = EMA(mods, args.ema)
    gen = torch.Generator().manual_seed(args.seed * 1000003 + step)
    if resuming:
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        for m, k in zip(mods + [t5], ("tr", "te1", "te2", "t5")):
            m.load_state_dict(ck[k])
        opt.load_state_dict(ck["opt"])
        ema.shadow = [[s.to(dev) for s in sh] for sh in ck["ema"]]
        gen.set_state(ck["gen"])
        step, wall, start_step, origin = ck["step"], ck["wall"], ck["start_step"], ck["origin"]
        runlog.trim_after(out, step)
        print(f"resumed from step {step}", flush=True)
    elif args.init_from is None:
        runlog.clear(out)
    if args.zero_pooled:
        zero_pooled(te1, te2, ema)
    sc, sh = vae.config.scaling_factor, vae.config.shift_factor
    ids_null = model.tokenize(tok, [""])
    recipe = {k: (str(v) if isinstance(v, pathlib.Path) else v) for k, v in vars(args).items()}
    recipe.update(origin=origin, transformer_params=model.count_params(tr),
                  text_params=model.count_params(te1) + model.count_params(te2), vae_params=model.count_params(vae),
                  transformer_config=model.TRANSFORMER_CONFIG, clip_config=model.CLIP_CONFIG, call=dict(model.zoo.CALL, guidance_scale=model.zoo.GUIDANCE))
    prober = MMDiTProber()
    shadow = [copy.deepcopy(m) for m in mods]
    last_probe: dict = {}

    def save():
        ck = {"tr": tr.state_dict(), "te1": te1.state_dict(), "te2": te2.state_dict(), "t5": t5.state_dict(), "opt": opt.state_dict(),
              "ema": ema.shadow, "gen": gen.get_state(), "step": step, "wall": wall, "start_step": start_step,
              "origin": origin}
        torch.save(ck, str(ckpt_path) + ".tmp")
        os.replace(str(ckpt_path) + ".tmp", ckpt_path)
        state = dict(step=step, wall_seconds=round(wall, 1), seed=args.seed, batch=args.batch, origin=origin,
                     probe=last_probe, saved=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), recipe=recipe)
        export_pipeline(tr, te1, te2, t5, vae, tok, ema, out / "pipeline", state)
        (out / "train.json").write_text(json.dumps(state, indent=1, default=str))

    log = runlog.RunLog(out)
    t_start = time.time()
    print(f"training from step {step} ({origin}); transformer {recipe['transformer_params']:,}", flush=True)
    stream = batches(args, step)
    end = args.steps if args.until is None else min(args.steps, args.until)
    while step < end:
        t0 = time.time()
        for m in mods:
            m.train()
        for g in opt.param_groups:
            g["lr"] = args.lr * lr_factor(step, args, start_step)
        at, pixels, prompts, weights = next(stream)
        assert at == step
        ids = model.tokenize(tok, prompts)
        drop = torch.rand(args.batch, generator=gen) < args.cfg_drop
        ids[drop] = ids_null[0]
        s = sigmas(args.batch, gen, args).to(dev).view(-1, 1, 1, 1)
        with torch.no_grad():
            x0 = (vae.encode(pixels.to(dev)).latent_dist.mean - sh) * sc
        noise = torch.randn(x0.shape, generator=gen).to(dev)
        xt = (1 - s) * x0 + s * noise
        e, p = model.encode(te1, te2, t5, ids.to(dev))
        pred = tr(hidden_states=xt, encoder_hidden_states=e, pooled_projections=p, timestep=s.flatten() * 1000).sample
        loss = weighted_mse(pred, noise - x0, weights.to(dev))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema.update(mods, step)
        step += 1
        wall += time.time() - t0
        log.loss(step, loss.item(), opt.param_groups[0]["lr"], wall)
        stop = args.max_minutes is not None and (time.time() - t_start) / 60 >= args.max_minutes
        if step % args.probe_every == 0 or step == end or stop:
            ema.copy_to(shadow)
            last_probe = log.probe(step, wall, prober.measure(*shadow, t5, tok, vae))
        if step % args.ckpt_every == 0 or step == end or stop:
            log.flush()
            save()
        if stop:
            break
    log.close()
    print(f"done: {step} steps, {wall / 60:.1f} min", flush=True)


def main(argv=None):
    args = parse_args(argv)
    runargs.check(args)  # an unknown face, a negative --text-weight: SpecError before anything is built
    if args.snapshot is not None:
        snapshot(args.snapshot, args.to)
        return
    torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # GPU only; the CPU ignores it
    args.out.mkdir(parents=True, exist_ok=True)
    (train_vae if args.stage == "vae" else train_dit)(args)


if __name__ == "__main__":
    main()
