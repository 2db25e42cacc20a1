"""The command-line arguments both second-generation trainers (``training.spell``, ``training.mmdit``) share:
where a run lives and how it restarts, its schedule, its noise levels, its data mix (with the curriculum's
``--fonts``, ``--max-letters``, ``--until``) and its probes. Each trainer passes its own defaults and adds its
own arguments."""
from __future__ import annotations

import argparse
import pathlib

from diffprobe.errors import SpecError
from diffprobe.zoo import spell_data as data


def run_parser(doc: str, *, out: str, to: str, batch: int, lr: float, warmup: int, threads: int,
               init_from_help: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=pathlib.Path, default=pathlib.Path(out))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=100000, help="total steps (the lr decays over the last 20%%)")
    p.add_argument("--batch", type=int, default=batch)
    p.add_argument("--lr", type=float, default=lr)
    p.add_argument("--warmup", type=int, default=warmup)
    p.add_argument("--decay-from", type=float, default=0.8)
    p.add_argument("--ema", type=float, default=0.998)
    p.add_argument("--cfg-drop", type=float, default=0.1)
    p.add_argument("--noisy-frac", type=float, default=0.5)
    p.add_argument("--noisy-from", type=float, default=0.9)
    p.add_argument("--random-frac", type=float, default=0.25, help="fraction of random letter strings")
    p.add_argument("--fonts", default=",".join(data.FONT_NAMES),
                   help="faces to train on, comma-separated (a curriculum: 'mono' alone puts letter k in fixed columns)")
    p.add_argument("--max-letters", type=int, default=data.MAX_LETTERS, choices=range(1, data.MAX_LETTERS + 1),
                   help="train on words of at most this many letters (a curriculum: short words first)")
    p.add_argument("--templates", default=None,
                   help="train on these templates only, comma-separated indices (a curriculum: '0' is the red sign)")
    p.add_argument("--no-jitter", action="store_true",
                   help="draw every sample in its template's own colours, size and place (a curriculum's first stage)")
    p.add_argument("--jitter-frac", type=float, default=1.0,
                   help="jitter this share of the samples, 0 to 1 (a ramp from --no-jitter to the full jitter)")
    p.add_argument("--until", type=int, default=None,
                   help="stop at this step (a curriculum stage), without changing the lr schedule that --steps sets")
    p.add_argument("--text-weight", type=float, default=0.0,
                   help="weight the loss inside each sample's text box (spell_data.text_box) by 1 + this: the letters "
                        "are a few %% of the pixels and of the plain loss (0 = the plain loss)")
    p.add_argument("--workers", type=int, default=0,
                   help="processes rendering batches ahead (a GPU needs them; batches stay a function of the step)")
    p.add_argument("--ckpt-every", type=int, default=200)
    p.add_argument("--probe-every", type=int, default=200)
    p.add_argument("--threads", type=int, default=threads)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--resume", action="store_true", help="continue from --out/ckpt.pt")
    p.add_argument("--init-from", type=pathlib.Path, default=None, help=init_from_help)
    p.add_argument("--max-minutes", type=float, default=None, help="stop (with a checkpoint) after this wall time")
    p.add_argument("--snapshot", type=pathlib.Path, default=None, help="copy RUN/pipeline to --to and exit")
    p.add_argument("--to", type=pathlib.Path, default=pathlib.Path(to))
    return p


def fonts(args) -> tuple[str, ...]:
    """``--fonts`` as a tuple, checked: an unknown face is a SpecError."""
    faces = tuple(args.fonts.split(","))
    data.train_combos(faces)
    return faces


def parse_templates(text: str | None, faces: tuple[str, ...]) -> tuple[int, ...] | None:
    """``--templates`` text as a tuple of indices (None: all), checked against ``faces``: a SpecError when one is
    not a template or when every combination left is held out."""
    if text is None:
        return None
    try:
        picked = tuple(int(t) for t in text.split(","))
    except ValueError:
        raise SpecError(f"--templates {text!r}: comma-separated indices 0 to {len(data.TEMPLATES) - 1} "
                        f"({', '.join(data.TEMPLATE_NAMES)})") from None
    data.train_combos_of(faces, picked)
    return picked


def templates(args) -> tuple[int, ...] | None:
    """``--templates`` checked against ``--fonts`` (:func:`parse_templates`)."""
    return parse_templates(args.templates, fonts(args))


def jitter(args) -> float:
    """The share of jittered samples: 0 with ``--no-jitter``, else ``--jitter-frac`` (checked: 0 to 1, and not
    both)."""
    if not 0 <= args.jitter_frac <= 1:
        raise SpecError(f"--jitter-frac {args.jitter_frac}: a share of the samples, 0 to 1")
    if args.no_jitter and args.jitter_frac != 1:
        raise SpecError(f"--no-jitter with --jitter-frac {args.jitter_frac}: give one (--no-jitter = --jitter-frac 0)")
    return 0.0 if args.no_jitter else args.jitter_frac


def check(args) -> None:
    """The data mix, checked before any model is built: an unknown face or template, a jitter share outside 0 to
    1, or a negative ``--text-weight`` is a SpecError."""
    fonts(args)
    templates(args)
    jitter(args)
    if args.text_weight < 0:
        raise SpecError(f"--text-weight {args.text_weight}: a weight >= 0 (0 = the plain loss, 4 = text 5x)")
