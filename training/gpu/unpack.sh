#!/usr/bin/env bash
# Back from the GPU: training/gpu/unpack.sh PATH/MODEL.tar -> runs/MODEL_gpu/ (MODEL: mmdit or spell), then
# evaluate it and, if better, snapshot it:
#   .venv/bin/python -m training.mmdit.train --snapshot runs/mmdit_gpu --to training/mmdit/checkpoint  (or the shipped
#   diffprobe/zoo/glyph_mmdit/weights);  .venv/bin/python -m training.spell.train --snapshot runs/spell_gpu
set -euo pipefail
cd "$(dirname "$0")/../.."
run="runs/$(basename "$1" .tar)_gpu"
rm -rf "$run" && mkdir -p "$run" && tar -xf "$1" -C "$run"
echo "$run:" && tail -3 "$run/probe.csv"
