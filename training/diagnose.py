"""What a spelling snapshot (`glyph-mmdit`'s SD3 pipeline or `spell`'s IF pipeline) knows of the word, from its x0
prediction at the noisiest level (pure noise):

    python -m training.diagnose runs/mmdit/pipeline [more folders ...]
    python -m training.diagnose --raw runs/spell [...]   # a run's raw (not EMA) weights, from its ckpt.pt

(The EMA weights lag the raw ones by some 500 steps at decay 0.998: compare raw weights to judge a short run.)
The kind of model is read from the folder's ``model_index.json`` (``StableDiffusion3Pipeline`` or ``IFPipeline``).

- letter accuracy per slot (spell's probe items and variants, mono letters; chance 1/26 = 0.038): which letters
  of the word the model has learnt to draw, first letter first if it learns as a curriculum teaches; and the
  commonest guess in slots 1-4 with its share (a slot the model has not learnt is a blur, nearest to the same
  wide letter, M or W, whatever the word);
- word effect between words of the SAME length vs of DIFFERENT lengths (mean |x0 difference|, same noise):
  a model that only knows how long the word is has a small first and a large second;
- single letters (the curriculum's first stage, its gate): A-Z on every mono training template, unjittered, one
  noise each; accuracy (nearest of the template's 26 renders), and how varied the guesses are (distinct letters
  guessed, the commonest guess's share): a blur guesses a few wide letters whatever is asked. Under jittered
  training its ceiling is 0.80, not 1: the true conditional mean of jittered renders is itself blurred (measured:
  the mean of 64 jittered renders is nearest its own letter for 80% of letters x templates); unjittered stages
  predict sharper renders and go above it (spell's step 15423: 0.885);
- with ``--sample``: single letters GENERATED as a user would (the pipeline, 20 steps, guidance 4) on three
  templates (``--sample-templates 11``: all), read by template matching (standardised grey, best of 25 shifts
  of +-2 px of each letter's canonical render, inside the decorations; it reads 98% of jittered training
  renders right: its ceiling);
- with ``--attention`` (glyph-mmdit only): does a block SELECT the letter? With diffprobe's own attention maps
  (``attend``, first 3 of 10 steps), the letter token's share of the text attention of the image tokens inside
  the text box, per joint block, for single letters on two templates. A block that ignores it gives the letter
  its uniform share (1/25 = 0.04); one that reads it gives much more;
- with ``--binding`` (spell only): does the text encoder tell the UNet WHICH slot a letter is in? Over 3-letter
  words with random neighbours, the cosine similarity of the encoder's output at a letter token for the same
  letter in the same slot vs in another slot, the slot read from that output (nearest slot mean; chance 1/3),
  and the letter that follows each marker ``#k`` read from the marker's output (nearest letter mean over other
  contexts; chance 1/26). A letter token whose output is the same in every slot leaves the UNet a bag of letters.
"""
from __future__ import annotations

import argparse
import collections
import json
import pathlib
from typing import Callable

import torch

from diffprobe.errors import SpecError
from diffprobe.zoo import spell_data as data
from training.spell.train import LETTERS, PROBE_FONT, Prober, guesses as _guesses, nearest, single_letters

KINDS = {"StableDiffusion3Pipeline": "mmdit", "IFPipeline": "spell"}


SAME_LENGTH = {4: ("OPEN", "FISH", "BANK", "LIME", "CROW", "JUMP"),
               6: ("PLANET", "SIMPLE", "GARDEN", "BRIGHT", "FOLLOW", "MODERN")}


GUIDANCE = 4.0  # both models' sampling guidance (docs/model-card-mmdit.md, docs/model-card-spell.md)


def kind(folder: pathlib.Path, raw: bool = False) -> str:
    """``mmdit`` or ``spell``, from the pipeline folder's (a run's ``pipeline/`` with ``raw``) model_index.json."""
    index = (folder / "pipeline" if raw else folder) / "model_index.json"
    try:
        name = json.loads(index.read_text())["_class_name"]
    except (OSError, ValueError, KeyError) as e:
        raise SpecError(f"{index}: not a pipeline folder ({e}); pass a snapshot folder such as "
                        "training/mmdit/checkpoint, or a run folder with --raw") from None
    if name not in KINDS:
        raise SpecError(f"{index}: a {name}; diagnose reads {' or '.join(KINDS)} (glyph-mmdit or spell)")
    return KINDS[name]


def _pipeline(folder: pathlib.Path, raw: bool = False):
    """The snapshot's pipeline in fp32; with ``raw``, ``folder`` is a run folder and its ``ckpt.pt``'s raw (not
    EMA) weights replace the denoiser's and the trained text encoders'."""
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(folder / "pipeline" if raw else folder, dtype=torch.float32)
    if raw:
        ck = torch.load(folder / "ckpt.pt", map_location="cpu", weights_only=False)
        if KINDS[type(pipe).__name__] == "mmdit":
            parts = ((pipe.transformer, "tr"), (pipe.text_encoder, "te1"), (pipe.text_encoder_2, "te2"))
        else:
            parts = ((pipe.unet, "unet"), (pipe.text_encoder, "te"))
        for m, k in parts:
            m.load_state_dict(ck[k])
    pipe.set_progress_bar_config(disable=True)
    return pipe


def predictor(folder: pathlib.Path, raw: bool = False, pipe=None) -> tuple[Callable, int]:
    """(``x0(prompts, noise) -> images in [-1, 1]``, the noise's channel count) for the snapshot's denoiser
    (``pipe``: that folder's pipeline, already loaded)."""
    pipe = pipe if pipe is not None else _pipeline(folder, raw)
    if KINDS[type(pipe).__name__] == "mmdit":  # (the loaded class: no second read of model_index.json)
        from training.mmdit import model as mmdit

        parts = (pipe.transformer.eval(), pipe.text_encoder, pipe.text_encoder_2, pipe.text_encoder_3, pipe.tokenizer,
                 pipe.vae)
        return (lambda prompts, noise: mmdit.predict_x0(*parts, prompts, noise)), pipe.transformer.config.in_channels
    from training.glyph.train import x0_from_v
    from training.spell import model as spell

    unet, te, sched = pipe.unet.eval(), pipe.text_encoder.eval(), spell.build_train_scheduler()

    def x0(prompts, noise):
        t = torch.full((len(prompts),), sched.config.num_train_timesteps - 1, dtype=torch.long)
        v = unet(noise, t, encoder_hidden_states=spell.encode(te, pipe.tokenizer, prompts)).sample[:, :3]
        return x0_from_v(sched, noise, v, t).clamp(-1, 1)

    return x0, unet.config.in_channels


def _standardised(x: torch.Tensor) -> torch.Tensor:
    """Grey, inside the decorations (bars and spines take the outer 4 columns, bands the outer 3 rows), to zero
    mean and unit variance."""
    g = x.mean(1)[..., 3:-3, 4:-4]
    g = g - g.mean(dim=(1, 2), keepdim=True)
    return g / g.std(dim=(1, 2), keepdim=True).clamp_min(1e-6)


def read_letters(images: torch.Tensor, template: int) -> torch.Tensor:
    """Which of A-Z each image (N, 3, H, W in [-1, 1], mono letter on ``template``) shows: the letter whose
    canonical render, shifted by up to 2 px, correlates best with it inside the decorations."""
    refs = data.to_tensor([data.render(data.canonical(template, c, "mono")) for c in LETTERS])
    shifted = torch.stack([_standardised(torch.roll(refs, (dy, dx), (2, 3))) for dy in range(-2, 3) for dx in range(-2, 3)], 1)
    corr = torch.einsum("nhw,ashw->nas", _standardised(images), shifted)
    return corr.amax(2).argmax(1)


#: the mono training templates in the order --sample takes them: the first three are the recorded default
SAMPLE_ORDER = (0, 3, 5) + tuple(t for t, _ in data.train_combos(("mono",)) if t not in (0, 3, 5))


def sampled_letters(folder: pathlib.Path, raw: bool = False, templates=SAMPLE_ORDER[:3], steps: int = 20,
                    pipe=None) -> dict:
    from training.spell.evaluate import _call_kwargs

    pipe = pipe if pipe is not None else _pipeline(folder, raw)
    hits, guesses = 0, collections.Counter()
    for t in templates:
        images = pipe([data.prompt(t, c, "mono") for c in LETTERS], height=data.HEIGHT, width=data.WIDTH,
                      num_inference_steps=steps, guidance_scale=GUIDANCE, output_type="pt",
                      generator=torch.Generator().manual_seed(7), **_call_kwargs(pipe)).images
        guess = read_letters(images * 2 - 1, t)
        hits += int((guess == torch.arange(26)).sum())
        guesses.update(LETTERS[int(i)] for i in guess)
    acc, distinct, top = _guesses(hits, guesses)
    return dict(sampled_letter_acc=acc, sampled_distinct=distinct, sampled_top=top)


def letter_attention(folder: pathlib.Path, blocks=range(8), templates=(0, 3), letters=LETTERS[::3]) -> list[float]:
    """Per joint block: the mean share of the letter token in the text attention of the image tokens inside the
    text box (single-letter prompts, steps 0-2 of 10)."""
    import diffprobe as dp
    from diffprobe.attention import attend

    probe = dp.load(str(folder))
    prompts = [(t, c, data.prompt(t, c, "mono")) for t in templates for c in letters]
    shares = []
    for b in blocks:
        res = attend(probe, [p for *_, p in prompts], steps=10, sites=f"joint:{b}", window=range(0, 3))
        per = []
        for i, (t, c, p) in enumerate(prompts):
            (tok,) = [k.index for k in res.tokens[i] if k.text == f"{c.lower()}1"]  # the letter-in-slot-1 token
            left, top, right, bottom = data.text_box(data.canonical(t, c, "mono"), pad=0)
            box = res.maps.values[i][:, top // 4:(bottom + 3) // 4, left // 4:(right + 3) // 4]  # 4x4-pixel tokens
            per.append(float(box[tok].mean() / box.sum(0).mean()))
        shares.append(round(sum(per) / len(per), 3))
    return shares


def diagnose(folder: pathlib.Path, prober: Prober, raw: bool = False, pipe=None) -> dict:
    x0, channels = predictor(folder, raw, pipe)
    noise = torch.randn(len(prober.items), channels, data.HEIGHT, data.WIDTH, generator=torch.Generator().manual_seed(4321))
    xs = torch.cat([x0(prober.prompts[i:i + 32], noise[i:i + 32]) for i in range(0, len(prober.prompts), 32)])
    hits, seen = [0] * data.MAX_LETTERS, [0] * data.MAX_LETTERS
    guesses = [collections.Counter() for _ in range(data.MAX_LETTERS)]
    for i, per in enumerate(prober.variants):
        for k, (vs, true) in enumerate(per):
            guess = nearest(vs, xs[i])
            hits[k] += guess == true
            seen[k] += 1
            guesses[k][LETTERS[guess]] += 1
    one = noise[:1]
    pred = {n: x0([data.prompt(0, w, PROBE_FONT) for w in ws], one.expand(len(ws), -1, -1, -1))
            for n, ws in SAME_LENGTH.items()}

    def mean(ds):
        return sum(ds) / len(ds)

    same = mean([(pred[n][i] - pred[n][j]).abs().mean().item() for n in pred for i in range(6) for j in range(i + 1, 6)])
    other = mean([(pred[4][i] - pred[6][j]).abs().mean().item() for i in range(6) for j in range(6)])
    return dict(letter_acc_by_slot=[round(h / s, 3) for h, s in zip(hits, seen) if s],
                top_guess_by_slot=[_guesses(0, g)[2] for g in guesses[:4]],
                word_effect_same_length=round(same, 4), word_effect_other_length=round(other, 4),
                **single_letters(x0, channels))


@torch.no_grad()
def slot_binding(tokenizer, text_encoder, contexts: int = 8, seed: int = 0) -> dict:
    """Whether ``text_encoder``'s outputs bind each letter of a 3-letter quoted word to its slot (see --binding)."""
    from training.glyph.model import tokenize
    from training.spell import model as spell

    gen = torch.Generator().manual_seed(seed)
    words, slots, follow = [], [], []
    for _ in range(contexts):
        for k in range(3):
            for c in range(26):
                word = [int(i) for i in torch.randint(26, (3,), generator=gen)]
                word[k] = c
                words.append("".join(LETTERS[i] for i in word)), slots.append(k), follow.append(c)
    ids, mask = tokenize(tokenizer, [data.prompt(0, w, "mono") for w in words])
    h = torch.cat([text_encoder(ids[i:i + 64], attention_mask=mask[i:i + 64])[0] for i in range(0, len(ids), 64)])
    toks = tokenizer.convert_ids_to_tokens(ids[0])  # every prompt has the same layout: template, 3 letters
    at_letter = [i for i, t in enumerate(toks) if t.startswith("##") or t in spell.SLOT_LETTERS]
    letters = torch.stack([h[n, at_letter[k]] for n, k in enumerate(slots)])
    markers = torch.stack([h[n, toks.index(f"#{k + 1}")] for n, k in enumerate(slots)])
    slots, follow = torch.tensor(slots), torch.tensor(follow)
    unit = torch.nn.functional.normalize(letters, dim=1)
    same_letter = follow[:, None] == follow[None]
    same_slot = slots[:, None] == slots[None]
    cos = unit @ unit.T
    off_diagonal = ~torch.eye(len(cos), dtype=torch.bool)

    def nearest_mean(x, labels, n, train):
        means = torch.stack([x[train & (labels == i)].mean(0) for i in range(n)])
        test = ~train
        return round(float((torch.cdist(x[test], means).argmin(1) == labels[test]).float().mean()), 3)

    half = torch.arange(len(slots)) < len(slots) // 2  # the first half of the contexts fits, the second is read
    return dict(cos_same_letter_same_slot=round(float(cos[same_letter & same_slot & off_diagonal].mean()), 3),
                cos_same_letter_other_slot=round(float(cos[same_letter & ~same_slot].mean()), 3),
                slot_from_letter_token=nearest_mean(letters, slots, 3, half),
                next_letter_from_marker=nearest_mean(markers, follow, 26, half))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folders", type=pathlib.Path, nargs="+")
    p.add_argument("--raw", action="store_true", help="FOLDERS are run folders: diagnose their ckpt.pt's raw weights")
    p.add_argument("--sample", action="store_true", help="also generate single letters and read them (~1 min)")
    p.add_argument("--sample-templates", type=int, default=3, choices=range(1, 12),
                   help="how many mono training templates --sample generates on (3: 78 images; 11: all, 286)")
    p.add_argument("--attention", action="store_true",
                   help="also the letter token's share of the text attention in the text box, per block (~2 min)")
    p.add_argument("--binding", action="store_true",
                   help="(spell) also whether the text encoder binds each letter to its slot (seconds)")
    args = p.parse_args(argv)
    if args.attention and args.raw:
        p.error("--attention reads a pipeline folder through diffprobe.load; drop --raw (it reads a run's ckpt.pt)")
    try:
        kinds = {folder: kind(folder, args.raw) for folder in args.folders}
    except SpecError as e:
        p.error(str(e))
    if args.attention and "spell" in kinds.values():
        p.error("--attention measures glyph-mmdit's joint blocks; drop it for spell folders")
    if args.binding and "mmdit" in kinds.values():
        p.error("--binding reads spell's marker tokenizer; drop it for glyph-mmdit folders")
    torch.set_num_threads(1)
    prober = Prober()
    for folder in args.folders:
        pipe = _pipeline(folder, args.raw)  # once per folder, for every measure but --attention (diffprobe.load)
        d = diagnose(folder, prober, args.raw, pipe)
        if args.sample:
            d.update(sampled_letters(folder, args.raw, templates=SAMPLE_ORDER[:args.sample_templates], pipe=pipe))
        if args.attention:
            d["letter_attention_by_block"] = letter_attention(folder)
        if args.binding:
            d.update(slot_binding(pipe.tokenizer, pipe.text_encoder.eval()))
        print(folder, d, flush=True)


if __name__ == "__main__":
    main()
