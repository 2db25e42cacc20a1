"""Training batches for both second-generation trainers (``training.spell``, ``training.mmdit``): batch ``i`` is
``spell_data.sample_batch(seed, i, ...)`` (a pure function of seed and step), rendered in the training process or
ahead in ``--workers`` processes (a GPU outruns one renderer), with per-pixel loss weights for ``--text-weight``."""
from __future__ import annotations

import torch

from diffprobe.zoo import spell_data as data
from training import runargs


def text_weights(samples, weight: float) -> torch.Tensor:
    """(N, 1, H, W) loss weights: 1, and 1 + ``weight`` inside each sample's text box (both models' images and
    latents share the pixel grid: spell works on pixels, glyph-mmdit's autoencoder does not down-sample)."""
    w = torch.ones(len(samples), 1, data.HEIGHT, data.WIDTH)
    for i, s in enumerate(samples if weight else ()):  # the plain loss (the default) needs no text layout
        left, top, right, bottom = data.text_box(s)
        w[i, :, top:bottom, left:right] += weight
    return w


def weighted_mse(pred, target, w):
    """Mean of ``w * (pred - target)^2`` over pixels and channels, divided by the mean weight, so that the loss
    (and the lr it suits) keeps its scale; with all weights 1 it is ``F.mse_loss``."""
    return ((pred - target) ** 2 * w).mean() / w.mean()


class _Batches(torch.utils.data.Dataset):
    """Training batch ``i`` as (pixels, prompts, loss weights), for a DataLoader's workers."""

    def __init__(self, seed, n, random_frac, fonts, max_letters, text_weight, templates=None, jitter=True):
        self.seed, self.n, self.random_frac, self.fonts, self.max_letters = seed, n, random_frac, fonts, max_letters
        self.text_weight, self.templates, self.jitter = text_weight, templates, jitter

    def __len__(self):
        return 10 ** 9

    def __getitem__(self, step):
        images, prompts, samples = data.sample_batch(self.seed, step, self.n, self.random_frac, fonts=self.fonts,
                                                     max_letters=self.max_letters, templates=self.templates,
                                                     jitter=self.jitter)
        return data.to_tensor(images), prompts, text_weights(samples, self.text_weight)


def batches(args, start):
    """(step, pixels, prompts, loss weights) from ``start`` on, the same with or without workers."""
    dataset = _Batches(args.seed, args.batch, args.random_frac, runargs.fonts(args), args.max_letters,
                       args.text_weight, runargs.templates(args), runargs.jitter(args))
    if not args.workers:
        step = start
        while True:
            yield (step, *dataset[step])
            step += 1
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=args.workers,
                                         sampler=range(start, 10 ** 9), prefetch_factor=4, persistent_workers=True)
    for step, (x, prompts, w) in enumerate(loader, start):
        yield step, x, list(prompts), w
