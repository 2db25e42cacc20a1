#!/usr/bin/env bash
# On a lent GPU machine (device tool, carry=[".gpu"], after training/gpu/bundle.sh here): continue glyph-mmdit's
# training from the shipped weights for MINUTES (default 8) and write the run (EMA pipeline, logs) to
# $OUT/mmdit.tar. Back here: training/gpu/unpack.sh <files_at>/mmdit.tar
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD DIFFPROBE_FONT_DIR=$PWD/.gpu/fonts PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -m training.mmdit.train --out /tmp/run --init-from diffprobe/zoo/glyph_mmdit/weights --zero-pooled --device cuda \
  --batch "${BATCH:-256}" --lr "${LR:-4e-4}" --workers 12 --threads 4 --steps "${STEPS:-200000}" \
  --probe-every 500 --ckpt-every 500 --max-minutes "${MINUTES:-8}" 2>&1 | grep -v Warning | tee /tmp/run.log | tail -40
cp /tmp/run.log /tmp/run/train.log
tar -cf "$OUT/mmdit.tar" -C /tmp/run pipeline loss.csv probe.csv train.json train.log
ls -la "$OUT"
