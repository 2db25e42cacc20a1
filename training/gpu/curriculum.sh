#!/usr/bin/env bash
# On a lent GPU machine (device tool, carry=[".gpu"], after training/gpu/bundle.sh here): continue the training of
# MODEL (mmdit = glyph-mmdit, the default; spell = the character-aware UNet) from FROM through the curriculum of
# the model cards (single letters in mono -> words of <= 3 letters in mono -> all lengths in mono -> all faces;
# spell first: single letters on one unjittered template, then on all, then half of them jittered),
# MINUTES in all (default 8, split by STAGE_SHARES), and write the run (EMA pipeline, logs) to $OUT/$MODEL.tar.
#   FROM (mmdit): the committed curriculum snapshot training/mmdit/checkpoint (step 31245), else the shipped weights
#                 (27284; --reinit-letters keeps their trained letter codes);  (spell): diffprobe/zoo/spell/weights
#                 (raw step 23600: words of 1-8 letters in all three faces, at the end of the annealed
#                 stage 18/19; from it the run goes on at the annealed rate, stage 19/19).
# It runs the stages from the one FROM's step is in (a snapshot is past the stages before it), their shares scaled
# up to MINUTES; RECAP=1 runs every stage from the first.
# Back here: training/gpu/unpack.sh <files_at>/$MODEL.tar
# CURRICULUM=0 trains on the full data only. DEVICE=cpu BATCH=4 MINUTES=1 OUT=/tmp/o runs it here, as the tests do.
set -uo pipefail
MODEL=${MODEL:-mmdit}
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
COMMON=(--out "$RUN" --device "$DEVICE" --batch "${BATCH:-256}" --steps "${STEPS:-200000}"
        --workers "${WORKERS:-12}" --threads "${THREADS:-4}" --probe-every "${PROBE_EVERY:-500}" --ckpt-every "${CKPT_EVERY:-500}"
        --text-weight "${TEXT_WEIGHT:-0}")
case "$MODEL" in
  mmdit)
    COMMON+=(--zero-pooled --lr "${LR:-4e-4}")
    FROM=${FROM:-training/mmdit/checkpoint}
    [ -f "$FROM/model_index.json" ] || FROM=diffprobe/zoo/glyph_mmdit/weights
    START=(--init-from "$FROM" --reinit-letters)  # (the trainer keeps letter codes that were re-drawn and trained already)
    DEFAULT_SHARES="0.05 0.25 0.35 0.35" ;;  # the checkpoint has single letters (0.79) and slots 1-4 moving (step 27284)
  spell)
    # --text-lr 3e-4: at 1e-3 the text encoder's features collapsed at step ~2100 (docs/model-card-spell.md)
    COMMON+=(--lr "${LR:-5e-4}" --text-lr "${TEXT_LR:-3e-4}")
    [ "$DEVICE" = cuda ] || COMMON+=(--no-bf16)  # bf16 is ~30x slower on CPUs without it
    FROM=${FROM:-diffprobe/zoo/spell/weights}
    START=(--init-from "$FROM")
    # letters: one template, then all, without jitter; then half, then all jittered; words of <= 3 letters: plain,
    # then the same ramp (red sign, all unjittered, half jittered), again from step 17000 with the slot-letter
    # tokens; all lengths through the same ramp; all faces through it, ending half jittered (never fully); then
    # the same data with the rate annealed (to 0.1x at step 23600), then on at that rate
    DEFAULT_SHARES="0.03 0.05 0.05 0.1 0.02 0.08 0.08 0.1 0.03 0.04 0.06 0.04 0.06 0.1 0.05 0.1 0.3 0.1 0.1" ;;
  *) echo "MODEL=$MODEL: mmdit or spell"; exit 2 ;;
esac
FIRST=0
if [ "${CURRICULUM:-1}" = 1 ]; then
  mapfile -t STAGES < <($PY -m training.curriculum "$MODEL" --stages)  # the model's stages in training/curriculum.py
  read -r -a SHARES <<< "${STAGE_SHARES:-$DEFAULT_SHARES}"
  [ "${#SHARES[@]}" = "${#STAGES[@]}" ] \
    || { echo "STAGE_SHARES: ${#SHARES[@]} shares for ${#STAGES[@]} stages"; exit 2; }
  # from the stage FROM's step is in (the stages before it are passed), unless RECAP=1 (every stage, from the first)
  STEP=$(python3 -c "import json; print(json.load(open('$FROM/train_state.json'))['step'])") || exit 1
  [ "${RECAP:-0}" = 1 ] || FIRST=$($PY -m training.curriculum "$MODEL" --stage-of "$STEP") || exit 1
  echo "$FROM is at step $STEP: stages $((FIRST + 1))-${#STAGES[@]} of ${#STAGES[@]}"
else
  STAGES=(""); SHARES=(1)
fi
TOTAL=$(python3 -c "print(sum(float(s) for s in '${SHARES[*]:$FIRST}'.split()))")  # the shares of the stages run
for i in "${!STAGES[@]}"; do
  [ "$i" -lt "$FIRST" ] && continue
  minutes=$(python3 -c "print(${MINUTES:-8} * ${SHARES[$i]} / $TOTAL)")
  echo "stage $((i + 1))/${#STAGES[@]}: ${STAGES[$i]:-full data} for $minutes min"
  # shellcheck disable=SC2086
  $PY -m "training.$MODEL.train" "${COMMON[@]}" "${START[@]}" ${STAGES[$i]} --max-minutes "$minutes" 2>&1 \
    | grep -v Warning | tee -a "$RUN.log" | tail -8
  [ -f "$RUN/ckpt.pt" ] || { echo "stage $((i + 1)) wrote no checkpoint"; exit 1; }
  START=(--resume)
done
cp "$RUN.log" "$RUN/train.log"
tar -cf "$OUT/$MODEL.tar" -C "$RUN" pipeline loss.csv probe.csv train.json train.log
ls -la "$OUT"
