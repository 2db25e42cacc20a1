"""What a `glyph-mmdit` snapshot knows of the word, from its x0 prediction at the noisiest level (pure noise):

    python -m training.mmdit.diagnose runs/mmdit/pipeline [more folders ...]
    python -m training.mmdit.diagnose --raw runs/mmdit [...]   # a run's raw (not EMA) weights, from its ckpt.pt

(The EMA weights lag the raw ones by some 500 steps at decay 0.998: compare raw weights to judge a short run.)

- letter accuracy per slot (spell's probe items and variants, mono letters; chance 1/26 = 0.038): which letters
  of the word the model has learnt to draw, first letter first if it learns as a curriculum teaches;
- word effect between words of the SAME length vs of DIFFERENT lengths (mean |x0 difference|, same noise):
  a model that only knows how long the word is has a small first and a large second;
- single letters (the curriculum's first stage, its gate): A-Z on every mono training template, unjittered, one
  noise each; accuracy (nearest of the template's 26 renders), and how varied the guesses are (distinct letters
  guessed, the commonest guess's share): a blur guesses a few wide letters whatever is asked.
"""
from __future__ import annotations

import argparse
import collections
import pathlib

import torch

from diffprobe.zoo import spell_data as data
from training.spell.train import PROBE_FONT, Prober

from . import model

SAME_LENGTH = {4: ("OPEN", "FISH", "BANK", "LIME", "CROW", "JUMP"),
               6: ("PLANET", "SIMPLE", "GARDEN", "BRIGHT", "FOLLOW", "MODERN")}


def predictor(folder: pathlib.Path, raw: bool = False):
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(folder / "pipeline" if raw else folder, dtype=torch.float32)
    if raw:
        ck = torch.load(folder / "ckpt.pt", map_location="cpu", weights_only=False)
        for m, k in ((pipe.transformer, "tr"), (pipe.text_encoder, "te1"), (pipe.text_encoder_2, "te2")):
            m.load_state_dict(ck[k])
    parts = (pipe.transformer.eval(), pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3, pipe.tokenizer,
             pipe.vae)
    return lambda prompts, noise: model.predict_x0(*parts, prompts, noise)


def single_letters(x0) -> dict:
    letters = [chr(65 + i) for i in range(26)]
    templates = [t for t, _ in data.train_combos(("mono",))]
    g = torch.Generator().manual_seed(2024)
    hits, guesses = 0, collections.Counter()
    for t in templates:
        refs = data.to_tensor([data.render(data.canonical(t, c, "mono")) for c in letters])
        xs = x0([data.prompt(t, c, "mono") for c in letters], torch.randn(26, 4, data.HEIGHT, data.WIDTH, generator=g))
        guess = ((xs[:, None] - refs[None]) ** 2).mean(dim=(2, 3, 4)).argmin(1)
        hits += int((guess == torch.arange(26)).sum())
        guesses.update(letters[int(i)] for i in guess)
    n = 26 * len(templates)
    top, count = guesses.most_common(1)[0]
    return dict(single_letter_acc=round(hits / n, 3), distinct_guesses=len(guesses),
                top_guess=f"{top} {count / n:.2f}")


def diagnose(folder: pathlib.Path, prober: Prober, raw: bool = False) -> dict:
    x0 = predictor(folder, raw)
    noise = torch.randn(len(prober.items), 4, data.HEIGHT, data.WIDTH, generator=torch.Generator().manual_seed(4321))
    xs = torch.cat([x0(prober.prompts[i:i + 32], noise[i:i + 32]) for i in range(0, len(prober.prompts), 32)])
    hits, seen = [0] * data.MAX_LETTERS, [0] * data.MAX_LETTERS
    for i, per in enumerate(prober.variants):
        for k, (vs, true) in enumerate(per):
            hits[k] += int(((vs - xs[i]) ** 2).mean(dim=(1, 2, 3)).argmin()) == true
            seen[k] += 1
    one = noise[:1]
    pred = {n: x0([data.prompt(0, w, PROBE_FONT) for w in ws], one.expand(len(ws), -1, -1, -1))
            for n, ws in SAME_LENGTH.items()}

    def mean(ds):
        return sum(ds) / len(ds)

    same = mean([(pred[n][i] - pred[n][j]).abs().mean().item() for n in pred for i in range(6) for j in range(i + 1, 6)])
    other = mean([(pred[4][i] - pred[6][j]).abs().mean().item() for i in range(6) for j in range(6)])
    return dict(letter_acc_by_slot=[round(h / s, 3) for h, s in zip(hits, seen) if s],
                word_effect_same_length=round(same, 4), word_effect_other_length=round(other, 4),
                **single_letters(x0))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", type=pathlib.Path, nargs="+")
    p.add_argument("--raw", action="store_true", help="FOLDERS are run folders: diagnose their ckpt.pt's raw weights")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    prober = Prober()
    for folder in args.folders:
        print(folder, diagnose(folder, prober, args.raw), flush=True)


if __name__ == "__main__":
    main()
