#!/usr/bin/env bash
# Remake the shipped 68-point model (docs/MODEL_CARD.md, "Recipe") with one command, from the repository
# root; about 6 hours on a 2-core CPU (the model card has the measured stage times):
#
#   scripts/remake_pretrained.sh              # runs/pretrained-68*, then ships into the package
#   TINY=1 scripts/remake_pretrained.sh       # a smoke test of this script in about two minutes
#                                             # (runs/remake-tiny*, shipped into runs/remake-tiny-ship)
#
# 1. the preset (kdlandmark pipeline --config pretrained-68): 8,000 synthetic faces with the pool's
#    appearance (seed 0), both teachers, the KD-Loss and L2 students (180 epochs), evaluation;
# 2. fresh faces: the same preset's data drawn again with seed 1 (synth and prepare only);
# 3. the fresh-data fine-tune: both students, 40 more epochs on the fresh faces (a new cosine cycle
#    peaking at 6.25e-4, an eighth of the first cycle's rate; the KD student with the same teachers,
#    through the teacher cache), side by side on one thread each; the best epoch on the fresh faces'
#    held-out part is kept;
# 4. scripts/ship_pretrained.py: the fine-tuned KD student into the package, with its card.
# Each step is skipped when its output exists (a rerun resumes).  Env: PY (python), OUT, TINY.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
if [ "${TINY:-0}" = 1 ]; then
  OUT=${OUT:-runs/remake-tiny}; DEST=(--dest "$OUT-ship")
  OVR=(synth.count=60 synth.size=96 prepare.size=64 teacher.optim.epochs=1 student.optim.epochs=2
       'student.optim.restarts=[]' kd.l2_warmup_epochs=1 teacher.model.input_size=32
       student.model.input_size=48)
  TUNE=(optim.epochs=1)
else
  OUT=${OUT:-runs/pretrained-68}; DEST=(); OVR=(); TUNE=(optim.epochs=40)
fi
FRESH="$OUT-seed1"
TUNED="$OUT-fresh1"

kdlandmark pipeline --config pretrained-68 --out "$OUT" "${OVR[@]}"
kdlandmark pipeline --config pretrained-68 --out "$FRESH" seed=1 "${OVR[@]}" --stages synth prepare
pids=()
for role in kd l2; do
  [ -f "$TUNED-$role/best/model.json" ] && continue
  extra=(); [ "$role" = kd ] && extra=(kd.l2_warmup_epochs=0 kd.teacher_cache=true)
  echo "fine-tuning the $role student on $FRESH -> $TUNED-$role (log: $TUNED-$role.log)"
  OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 kdlandmark train --config "$OUT/$role/config.yaml" \
    --out "$TUNED-$role" data="$FRESH/prepared" model.pretrained="$OUT/$role/best" optim.lr=6.25e-4 \
    "${TUNE[@]}" 'optim.restarts=[]' resume=false "${extra[@]}" > "$TUNED-$role.log" 2>&1 &
  pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done     # set -e: a failed fine-tune stops the script here
"$PY" scripts/ship_pretrained.py "$OUT" --model "$TUNED-kd/best" "${DEST[@]}"
