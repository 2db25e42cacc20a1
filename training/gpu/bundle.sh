#!/usr/bin/env bash
# Prepare, on this machine (it has PyPI), what a lent GPU machine needs to train glyph-mmdit or spell, in .gpu/
# (ignored by git, sent with the device tool's carry=[".gpu"]): wheels of what its image lacks (diffusers and what
# diffprobe's package init imports) and the three DejaVu faces. Then, through the device tool, run
# training/gpu/curriculum.sh (MODEL=mmdit or spell).
# See docs/model-card-mmdit.md ("On a GPU").
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qxF '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
rm -rf .gpu && mkdir -p .gpu/whl .gpu/fonts
PY=${PY:-.venv/bin/python}
ver() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }
# the device image (device/KINDS.md) has torch, transformers, tokenizers, safetensors, huggingface-hub, numpy,
# pillow, xarray, pandas, jaxtyping, typer, regex, requests, httpx; these it lacks:
for pkg in diffusers importlib_metadata pytesseract rapidfuzz; do
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .gpu/whl "$pkg==$(ver "$pkg")"
done
cp /usr/share/fonts/truetype/dejavu/DejaVu{Sans,Serif,SansMono}-Bold.ttf .gpu/fonts/
du -sh .gpu
