"""The curriculum that taught `glyph-mmdit` to spell, by step, for both spelling models: one command continues a
model's training in whatever stage its step count is, across sessions and machines.

    python -m training.curriculum spell --out runs/spell --minutes 120 [TRAINER ARGS ...]
    python -m training.curriculum mmdit --out runs/mmdit7 --minutes 100 --probe-every 100
    python -m training.curriculum spell --stages    # its stages' trainer arguments, one line each (training/gpu/)
    python -m training.curriculum spell --stage-of 9400    # the index of the stage a step is in: 2

The stages (docs/model-card-mmdit.md): single letters in mono -> words of at most 3 letters in mono (half random
strings) -> all lengths in mono -> all three faces; spell goes into each through a ramp (one unjittered template,
then all of them unjittered, then half of them jittered: docs/model-card-spell.md, twelfth to twentieth
sessions) and never trains on the fully jittered data, which erased what each narrower stage had taught. Each
stage ends at a fixed step (``PLANS``; glyph-mmdit's are the steps where its run moved on, spell's are set from
them). Until ``--minutes`` are spent, it runs the model's trainer (``training.<model>.train``) in
the stage of the current step with ``--until`` that stage's end, then the next stage; from ``OUT/ckpt.pt`` when
there (``--resume``: bit for bit), else warm-started from the committed snapshot (``--init-from``: step count and
data stream continue, AdamW restarts). TRAINER ARGS come last, so they override a stage's (``--fonts``, ...) but
not its end. The recipe of the committed runs (``RECIPES``) comes first; give the same trainer arguments on
every call (the learning rates are not in the checkpoint).
"""
from __future__ import annotations

import argparse
import importlib
import json
import pathlib
import time

import torch

from diffprobe.errors import SpecError

STAGES = ("--fonts mono --max-letters 1 --random-frac 1.0",  # 1: single letters (random letters: every one)
          "--fonts mono --max-letters 3 --random-frac 0.5",  # 2: words of at most 3 letters, half random strings
          "--fonts mono",                                     # 3: all lengths, mono
          "")                                                 # 4: the full data, all faces
#: spell's stage 0: the controlled single-letter test's data (training/spell/letter_test.py), where the UNet learns
#: letters in ~250 steps at batch 32 while on stage 1's data (11 templates, jitter) it stays at chance
FIRST_LETTERS = STAGES[0] + " --templates 0 --no-jitter"
#: then on every mono template, still unjittered: from step 8000's weights this keeps the letters (0.46 on the red
#: sign after 75 steps) where stage 1 (templates AND jitter) erased them (0.73 -> 0.12 in 200 steps)
STILL_LETTERS = STAGES[0] + " --no-jitter"
#: then half the samples jittered: a ramp into stage 1, whose full jitter (with all templates) erased the letters
#: from step 8000's weights; each half of that variation alone kept them (docs/model-card-spell.md)
HALF_JITTER = STAGES[0] + " --jitter-frac 0.5"
#: stage 2's ramp, the same three steps for words of <= 3 letters (seventeenth session): 1,700 steps of stage 2
#: left the 2nd letter of words near chance (0.06-0.13) while training on the red sign alone, unjittered, took it
#: to 0.45 in 100 steps (training/spell/letter_test.py --max-letters 3, from step 14200's weights)
WORDS_RED_SIGN = STAGES[1] + " --templates 0 --no-jitter"
STILL_WORDS = STAGES[1] + " --no-jitter"
HALF_JITTER_WORDS = STAGES[1] + " --jitter-frac 0.5"
#: stage 3's ramp, the same three steps for words of all lengths (nineteenth session: with the slot-letter tokens,
#: 3-letter words went from OCR exact 0.06 to 0.94 in 700 steps of stage 2's ramp; each widening of the data so far
#: erased what the narrower stage had taught unless ramped)
LONG_RED_SIGN = STAGES[2] + " --templates 0 --no-jitter"
STILL_LONG = STAGES[2] + " --no-jitter"
HALF_JITTER_LONG = STAGES[2] + " --jitter-frac 0.5"
#: stage 4's ramp, the same three steps for the three faces (twentieth session: words of all lengths went from
#: slots 4-8 at chance to held-out OCR exact 1.00 in mono in 700 steps of stage 3's ramp); it ends half jittered:
#: full jitter took the words away twice (eighteenth and nineteenth sessions), and half of every batch is jittered
FACES_RED_SIGN = STAGES[3] + " --templates 0 --no-jitter"
STILL_FACES = STAGES[3] + " --no-jitter"
HALF_JITTER_FACES = STAGES[3] + " --jitter-frac 0.5"
#: then the same data with the learning rate annealed (cosine, to 0.1x from step 22400 to 23600): in the
#: twenty-second session the EMA weights of step 22100 read held-out sans words at 0.81 exact where the raw weights
#: read 0.62 (serif 0.56, mono 1.00), so averaging, which annealing does in the weights themselves, was worth more
#: than further steps at the flat rate (raw 23600: sans 1.00, serif 0.75 on the same 16 words)
ANNEAL_FROM, ANNEAL_TO = 22400, 23600
#: (--decay-from as the run had it: the cosine starts at int(0.9492 * 23600) = 22401, one step into the stage)
ANNEAL_FACES = HALF_JITTER_FACES + f" --steps {ANNEAL_TO} --decay-from 0.9492"
#: after it the same data at the annealed rate (0.1x: 5e-5, text 3e-5), flat and open-ended, so that a later run
#: (on a CPU or a lent GPU) goes on from the shipped weights without climbing back to the rate they left
LOW_RATE_FACES = HALF_JITTER_FACES + " --lr 5e-5 --text-lr 3e-5"
#: per model, its stages as (the step at which it ends or None: never, its trainer arguments)
PLANS = {
    "mmdit": ((13500, STAGES[0]), (20400, STAGES[1]), (27284, STAGES[2]), (None, STAGES[3])),  # as its run went
    # spell: stages 0 and 0b added at step 7646 (letters at chance after 6,158 stage-1 steps at batch 8), the jitter
    # ramp at 8600 (thirteenth session), stage 1 cut from 16700 to 12800 in the sixteenth (its EMA's single
    # letters flat at 0.67-0.69 from 12000 on, above the 0.53 glyph-mmdit went on with), then glyph-mmdit's
    # lengths for stages 2 and 3 (6,900 and 6,884 steps at batch 32); stage 2 from 14500 ramped as stage 1 was;
    # the half-jitter words stage held to 19700 in the eighteenth session (from 17000, full jitter took the words'
    # letters from 0.35 to 0.22 a slot on the red sign in 400 steps); in the nineteenth, at step 17000, the
    # slot-letter tokens (training/spell/model.py) and the word ramp once more, shortened (3-letter words read 0.94
    # exact at 17700 and 18400); full jitter then took them to 0.75 in 400 steps (18800, discarded), so stage 2
    # ends at the half-jittered 18400 and stage 3 follows through the same ramp; in the twentieth, words of all
    # lengths read 1.00 exact in mono at 19100 (the red sign had all 8 slots at 1.00 from 18800): stage 3 ends
    # half jittered at 19700 and stage 4 (the three faces) follows through the same ramp, ending half jittered; in the
    # twenty-second, from 22400 the rate anneals to 23600 and stays there
    "spell": ((8000, FIRST_LETTERS), (8600, STILL_LETTERS), (10000, HALF_JITTER), (12800, STAGES[0]),
              (14500, STAGES[1]), (15100, WORDS_RED_SIGN), (15700, STILL_WORDS), (17000, HALF_JITTER_WORDS),
              (17300, WORDS_RED_SIGN), (17700, STILL_WORDS), (18400, HALF_JITTER_WORDS),
              (18700, LONG_RED_SIGN), (19100, STILL_LONG), (19700, HALF_JITTER_LONG),
              (20000, FACES_RED_SIGN), (20400, STILL_FACES), (ANNEAL_FROM, HALF_JITTER_FACES),
              (ANNEAL_TO, ANNEAL_FACES), (None, LOW_RATE_FACES)),
}
RECIPES = {
    "mmdit": "--zero-pooled --lr 4e-4 --steps 60000",  # runs 2-7 of glyph-mmdit
    # batch 32 from step 7646 (8 before: the letters stage 0 taught faded within 600 steps of stage 1 at batch 8);
    # text lr 1e-3 collapsed the text encoder; --steps: the lr stays flat (it decays over the last 20% of --steps)
    "spell": "--batch 32 --lr 5e-4 --text-lr 3e-4 --steps 200000",
}
ROOT = pathlib.Path(__file__).resolve().parents[1]
SNAPSHOTS = {"mmdit": ROOT / "training/mmdit/checkpoint", "spell": ROOT / "diffprobe/zoo/spell/weights"}
SHIPPED = {"mmdit": ROOT / "diffprobe/zoo/glyph_mmdit/weights"}  # the warm start when no snapshot is there


def stage(model: str, step: int, plan=None) -> tuple[int, int | None, str]:
    """(stage index from 0, the step it ends at or None, its trainer arguments) for ``step``."""
    for i, (end, args) in enumerate(plan or PLANS[model]):
        if end is None or step < end:
            return i, end, args
    raise SpecError(f"step {step} is past the last stage of {model}'s plan {[e for e, _ in plan or PLANS[model]]}")


def current_step(out: pathlib.Path) -> int | None:
    """The step of the run's checkpoint, or None when ``out`` has none."""
    ckpt = out / "ckpt.pt"
    if not ckpt.exists():
        return None
    return int(torch.load(ckpt, map_location="cpu", weights_only=False, mmap=True)["step"])


def warm_start(model: str) -> tuple[list[str], int]:
    """The arguments that start a run from the committed snapshot (or glyph-mmdit's shipped weights), its step."""
    folder = SNAPSHOTS[model]
    extra = []
    if not (folder / "model_index.json").exists():
        if model not in SHIPPED:
            raise SpecError(f"{folder} holds no snapshot to start {model} from; restore it with git checkout")
        folder, extra = SHIPPED[model], ["--reinit-letters"]
    step = int(json.loads((folder / "train_state.json").read_text())["step"])
    return ["--init-from", str(folder), *extra], step


def run(model: str, out: pathlib.Path, minutes: float, trainer_args=(), plan=None, main=None) -> list[list[str]]:
    """Train ``model`` in ``out`` through the stages for ``minutes``; returns the trainer argument lists it ran."""
    main = main or importlib.import_module(f"training.{model}.train").main
    deadline = time.monotonic() + minutes * 60
    ran = []
    while (left := (deadline - time.monotonic()) / 60) > 0.2:
        step = current_step(out)
        start, step = (["--resume"], step) if step is not None else warm_start(model)
        i, end, args = stage(model, step, plan)
        argv = ["--out", str(out), *start, *RECIPES[model].split(), *args.split(),
                *(["--until", str(end)] if end is not None else []), "--max-minutes", f"{left:.2f}", *trainer_args]
        print(f"curriculum: {model} stage {i + 1}/{len(plan or PLANS[model])} ({args or 'the full data'}) "
              f"from step {step}"
              f"{f' to {end}' if end is not None else ''}, {left:.1f} min left", flush=True)
        ran.append(argv)
        main(argv)
        if (current_step(out) or 0) <= step:  # no step taken: --steps reached, or the trainer stopped at once
            break
    return ran


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", choices=tuple(PLANS))
    p.add_argument("--out", type=pathlib.Path)
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--stages", action="store_true", help="print the model's stages' trainer arguments, one a line")
    p.add_argument("--stage-of", type=int, metavar="STEP", help="print the index (from 0) of the stage STEP is in")
    args, trainer_args = p.parse_known_args(argv)
    if args.stages:
        print("\n".join(a for _, a in PLANS[args.model]))
        return
    if args.stage_of is not None:
        print(stage(args.model, args.stage_of)[0])
        return
    if args.out is None:
        p.error(f"{args.model}: --out RUN is needed (e.g. runs/{args.model})")
    run(args.model, args.out, args.minutes, trainer_args)


if __name__ == "__main__":
    main()
