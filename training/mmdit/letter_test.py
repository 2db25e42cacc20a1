"""Can a `glyph-mmdit` snapshot learn single letters? A controlled test (docs/model-card-mmdit.md, fourth session):

    python -m training.mmdit.letter_test FOLDER --layout model|first|alone [--steps 200] [--threads 2]

From the snapshot's weights (nothing is written back): one template (the red sign), mono, the letters A-Z
rendered without jitter, batch 32, the trainer's optimiser (AdamW lr 4e-4, grad clip 1) and noise levels (half
from [0.9, 1], the rest uniform), no EMA; the transformer and all three text encoders train (T5 too, which the
trainer keeps frozen; it only ever sees ``</s>``). Every 25 steps: accuracy of the x0 prediction at the noisiest level
(nearest of the 26 clean renders; chance 1/26). ``--layout`` places the quoted letter: ``model`` as the model is
prompted (``a red sign in mono letters that says "A"``), ``first`` (``"A" a red sign in mono letters``: under
CLIP's causal mask the template tokens then see the letter), ``alone`` (``"A"``).
"""
from __future__ import annotations

import argparse
import pathlib
import time

import numpy as np
import torch
import torch.nn.functional as F

from diffprobe.zoo import spell_data as data

from . import model

LETTERS = [chr(65 + i) for i in range(26)]
LAYOUTS = {
    "model": lambda c: data.prompt(0, c, "mono"),
    "first": lambda c: f'"{c}" a red sign in mono letters',
    "alone": lambda c: f'"{c}"',
}


def run(folder: pathlib.Path, layout: str, steps: int = 200, every: int = 25):
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(folder, dtype=torch.float32)
    tr, te1, te2, t5, vae, tok = (pipe.transformer, pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3,
                                  pipe.vae, pipe.tokenizer)
    for te in (te1, te2):
        te.text_projection.requires_grad_(False)  # the pooled path stays silent, as in training
    params = [p for m in (tr, te1, te2, t5) for p in m.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=4e-4, betas=(0.9, 0.99), weight_decay=0.01)
    sc, sh = vae.config.scaling_factor, vae.config.shift_factor
    prompt = LAYOUTS[layout]
    refs = data.to_tensor([data.render(data.canonical(0, c, "mono")) for c in LETTERS])
    g, rng = torch.Generator().manual_seed(1), np.random.default_rng(0)

    def accuracy():
        tr.eval()
        noise = torch.randn(26, 4, data.HEIGHT, data.WIDTH, generator=torch.Generator().manual_seed(9))
        x = model.predict_x0(tr, te1, te2, t5, tok, vae, [prompt(c) for c in LETTERS], noise)
        d = ((x[:, None] - refs[None]) ** 2).mean(dim=(2, 3, 4))
        return (d.argmin(1) == torch.arange(26)).float().mean().item()

    t0 = time.time()
    for step in range(steps + 1):
        if step % every == 0:
            yield step, round(accuracy(), 3), round(time.time() - t0)
        if step == steps:
            break
        tr.train()
        picked = rng.integers(0, 26, 32)
        cs = [LETTERS[i] for i in picked]
        with torch.no_grad():
            x0 = (vae.encode(refs[torch.from_numpy(picked)]).latent_dist.mean - sh) * sc
        noisy = torch.rand(32, generator=g) < 0.5
        s = torch.where(noisy, 0.9 + 0.1 * torch.rand(32, generator=g), torch.rand(32, generator=g)).view(-1, 1, 1, 1)
        noise = torch.randn(x0.shape, generator=g)
        e, p = model.encode(te1, te2, t5, model.tokenize(tok, [prompt(c) for c in cs]))
        pred = tr(hidden_states=(1 - s) * x0 + s * noise, encoder_hidden_states=e, pooled_projections=p,
                  timestep=s.flatten() * 1000).sample
        loss = F.mse_loss(pred, noise - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=pathlib.Path)
    p.add_argument("--layout", choices=tuple(LAYOUTS), default="model")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    for step, acc, secs in run(args.folder, args.layout, args.steps):
        print(f"step {step}: single-letter accuracy {acc} ({secs} s)", flush=True)


if __name__ == "__main__":
    main()
