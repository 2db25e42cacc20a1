"""Training code for the embedded models. Not installed with the package: run from the repository root
(``python -m training.glyph.train``). The shipped weights live in ``diffprobe/zoo/<name>/weights``."""
