#!/usr/bin/env bash
# On a lent GPU machine (device tool, carry=[".gpu"], after training/gpu/bundle.sh here): continue glyph-mmdit's
# training from FROM (the committed curriculum snapshot training/mmdit/checkpoint; without it the shipped weights,
# letter codes re-drawn) through the curriculum of the model card
# (single letters in mono -> words of <= 3 letters in mono -> all lengths in mono -> all faces), MINUTES in all
# (default 8, split by STAGE_SHARES), and write the run (EMA pipeline, logs) to $OUT/mmdit.tar.
# Back here: training/gpu/unpack.sh <files_at>/mmdit.tar
# CURRICULUM=0 trains on the full data only. DEVICE=cpu BATCH=4 MINUTES=1 OUT=/tmp/o runs it here, as the test does.
set -uo pipefail
DEVICE=${DEVICE:-cuda}
if [ "$DEVICE" = cuda ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD DIFFPROBE_FONT_DIR=$PWD/.gpu/fonts
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
RUN=${RUN:-/tmp/run}
[ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
rm -rf "$RUN" "$RUN.log"
COMMON=(--out "$RUN" --zero-pooled --device "$DEVICE" --batch "${BATCH:-256}" --lr "${LR:-4e-4}" --steps "${STEPS:-200000}"
        --workers "${WORKERS:-12}" --threads "${THREADS:-4}" --probe-every "${PROBE_EVERY:-500}" --ckpt-every "${CKPT_EVERY:-500}"
        --text-weight "${TEXT_WEIGHT:-0}")
FROM=${FROM:-training/mmdit/checkpoint}  # the committed curriculum snapshot, else the shipped weights
[ -f "$FROM/model_index.json" ] || FROM=diffprobe/zoo/glyph_mmdit/weights
START=(--init-from "$FROM" --reinit-letters)  # (the trainer keeps letter codes that were re-drawn and trained already)
if [ "${CURRICULUM:-1}" = 1 ]; then
  STAGES=("--fonts mono --max-letters 1 --random-frac 1.0" "--fonts mono --max-letters 3 --random-frac 0.5" "--fonts mono" "")
  read -r -a SHARES <<< "${STAGE_SHARES:-0.05 0.25 0.35 0.35}"  # the checkpoint has single letters (0.66) and slots 2-3 moving (step 18665)
else
  STAGES=(""); SHARES=(1)
fi
for i in "${!STAGES[@]}"; do
  minutes=$(python3 -c "print(${MINUTES:-8} * ${SHARES[$i]})")
  echo "stage $((i + 1))/${#STAGES[@]}: ${STAGES[$i]:-full data} for $minutes min"
  # shellcheck disable=SC2086
  $PY -m training.mmdit.train "${COMMON[@]}" "${START[@]}" ${STAGES[$i]} --max-minutes "$minutes" 2>&1 \
    | grep -v Warning | tee -a "$RUN.log" | tail -8
  [ -f "$RUN/ckpt.pt" ] || { echo "stage $((i + 1)) wrote no checkpoint"; exit 1; }
  START=(--resume)
done
cp "$RUN.log" "$RUN/train.log"
tar -cf "$OUT/mmdit.tar" -C "$RUN" pipeline loss.csv probe.csv train.json train.log
ls -la "$OUT"
