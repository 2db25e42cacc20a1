#!/usr/bin/env bash
# Back from the GPU: training/gpu/unpack.sh PATH/mmdit.tar -> runs/mmdit_gpu/, then evaluate it and, if better,
# ship it: .venv/bin/python -m training.mmdit.train --snapshot runs/mmdit_gpu --to diffprobe/zoo/glyph_mmdit/weights
set -euo pipefail
cd "$(dirname "$0")/../.."
rm -rf runs/mmdit_gpu && mkdir -p runs/mmdit_gpu && tar -xf "$1" -C runs/mmdit_gpu
tail -3 runs/mmdit_gpu/probe.csv
