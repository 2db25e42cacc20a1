"""Training and evaluation of the embedded ``glyph`` model (docs/model-card.md). The renderer and prompt
vocabulary it trains on live in the package (:mod:`diffprobe.zoo.glyph.data`), the weights in
``diffprobe/zoo/glyph/weights``."""
