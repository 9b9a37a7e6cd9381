#!/usr/bin/env bash
# Measurements of issue 12 on a 2-core CPU (about 30 minutes): confidence heads on synthetic COFW and
# tracking + smoothing on synthetic clips.  Results: docs/INFERENCE.md ("Video") and docs/EVALUATION.md.
#
#   scripts/measure_issue12.sh            # the full run (runs/issue12, raw outputs in docs/perf/issue12)
#   TINY=1 scripts/measure_issue12.sh     # a one-minute smoke test of the script (runs/issue12-tiny)
#
# 1. synthetic COFW (2000 faces, 192 px), prepare, ASM, both teachers (kdlandmark pipeline, 2 jobs);
# 2. KD students, same seed: plain, with the visibility and error heads, with the heads on detached
#    features (coordinates then train exactly as the plain student's);
# 3. each evaluated on the synthetic COFW test set (occlusion P/R, AUC, NME visible/occluded, Spearman of
#    the predicted error), compared with a paired bootstrap (kdlandmark compare);
# 4. clips: 4 of seed 1 choose the One Euro parameters (scripts/tune_one_euro.py), 6 of seed 0 are
#    reported (kdlandmark evaluate --video: frame by frame, smoothed, tracked, tracked and smoothed;
#    per-frame cost of tracking against the model alone), for two students, and through ONNX Runtime.
# Each step is skipped when its output exists (a rerun resumes).  Env: PY (python), OUT, DOCS, TINY, JOBS (2).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
PY=${PY:-/work/main/.venv/bin/python}
export PYTHONPATH="$REPO/src${PYTHONPATH:+:$PYTHONPATH}" OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
if [ "${TINY:-0}" = 1 ]; then
  OUT=${OUT:-runs/issue12-tiny}; DOCS=${DOCS:-runs/issue12-tiny/perf}
  OVR=(synth.count=120 synth.size=96 teacher.optim.epochs=1 student.optim.epochs=2 kd.l2_warmup_epochs=1
       teacher.model.input_size=32 student.model.input_size=48 "out=$OUT")
  TUNE=(--count 1 --frames 12 --size 128); CLIPS=(--count 2 --frames 12 --size 128)
  GRID=(--min-cutoffs 0.5 1 --betas 0 20)
else
  OUT=${OUT:-runs/issue12}; DOCS=${DOCS:-docs/perf/issue12}
  OVR=("out=$OUT"); TUNE=(--count 4 --frames 100 --size 256); CLIPS=(--count 6 --frames 150 --size 256)
  GRID=()
fi
K="$PY -m kdlandmark"
JOBS=${JOBS:-2}
HEADS=(student.model.heads.visibility=1.0 student.model.heads.error=1.0)
mkdir -p "$OUT" "$DOCS"
LOG="$DOCS/measure.log"
stamp() { echo "[$(date -u +%H:%M:%S)] $*" | tee -a "$LOG"; }
stamp "start: $(git rev-parse --short HEAD) $(nproc --all) cores, $(uname -m)"

# 1. data, ASM, teachers
t0=$(date +%s)
$K pipeline --config scripts/issue12-cofw.yaml --stages synth prepare asm tough tolerant --jobs "$JOBS" \
   "${OVR[@]}" >> "$OUT/pipeline.log" 2>&1
stamp "teachers done ($(( $(date +%s) - t0 )) s)"

# 2. the two KD students, side by side (the third, heads on detached features, runs beside step 3-4)
train() {  # name, overrides...
  local name=$1; shift
  [ -f "$OUT/$name.done" ] && return 0
  local resume=(); [ -d "$OUT/$name/last" ] && resume=(--resume)
  $K train --config "$OUT/config.yaml" --role kd --out "$OUT/$name" "${resume[@]}" "$@" >> "$OUT/$name.log" 2>&1
  touch "$OUT/$name.done"
}
both() {  # run the two commands side by side (JOBS=2) or one after the other (JOBS=1)
  if [ "$JOBS" -gt 1 ]; then eval "$1" & local p=$!; eval "$2"; wait $p; else eval "$1"; eval "$2"; fi
}
t0=$(date +%s)
both 'train kd' 'train kd-heads "${HEADS[@]}"'
stamp "students done ($(( $(date +%s) - t0 )) s)"
t3=$(date +%s)
if [ "$JOBS" -gt 1 ]; then train kd-heads-detached "${HEADS[@]}" student.model.heads.detach=true & p3=$!
else train kd-heads-detached "${HEADS[@]}" student.model.heads.detach=true; p3=; fi

# 3. still images: evaluation
evaluate() {  # name
  [ -f "$OUT/eval/$1/metrics.json" ] && return 0
  $K evaluate --model "$OUT/$1/best" --root "$OUT/prepared" --out "$OUT/eval/$1" --name "$1" \
     --latency-runs 0 > "$OUT/eval-$1.log" 2>&1
  cat "$OUT/eval-$1.log" >> "$LOG"
}
evaluate kd; evaluate kd-heads

# 4. clips: tune on seed 1 (with the heads student), report on seed 0
[ -d "$OUT/clips-tune" ] || $K synth --video --seed 1 --out "$OUT/clips-tune" --workers 1 "${TUNE[@]}" > /dev/null
[ -d "$OUT/clips" ] || $K synth --video --seed 0 --out "$OUT/clips" --workers 1 "${CLIPS[@]}" > /dev/null
t0=$(date +%s)
[ -f "$DOCS/tune_one_euro.json" ] || $PY scripts/tune_one_euro.py --model "$OUT/kd-heads/best" \
   --clips "$OUT/clips-tune" --out "$DOCS/tune_one_euro.json" "${GRID[@]}" | tee -a "$LOG"
stamp "One Euro grid done ($(( $(date +%s) - t0 )) s)"
[ -z "$p3" ] || wait "$p3"
stamp "detached-heads student done ($(( $(date +%s) - t3 )) s since the others)"
evaluate kd-heads-detached
$K compare "$OUT/eval/kd" "$OUT/eval/kd-heads" "$OUT/eval/kd-heads-detached" --out "$OUT/compare" \
   --labels kd kd-heads kd-heads-detached > "$DOCS/compare.txt"
for m in kd kd-heads kd-heads-detached; do
  cp "$OUT/eval/$m/metrics.json" "$DOCS/eval_$m.json"; cp "$OUT/$m/metrics.csv" "$DOCS/train_$m.csv"
done
cp "$OUT/compare/compare.md" "$OUT/compare/compare.json" "$DOCS/"
$PY - "$DOCS" > "$DOCS/confidence.txt" <<'PYEOF'
import json, sys
for m in ("kd", "kd-heads", "kd-heads-detached"):
    d = json.load(open(f"{sys.argv[1]}/eval_{m}.json"))
    c = d.get("confidence", {}).get("test", {})
    o, e = c.get("occlusion", {}), c.get("error_estimate", {})
    print(f"{m}: NME {d['subsets']['test']['nme']:.3f} %; visible {o.get('nme_visible')}, occluded "
          f"{o.get('nme_occluded')}; occlusion AUC {o.get('auc')}, AP {o.get('average_precision')}, recall at "
          f"80 % precision {o.get('recall_at_80_precision')}, precision at 50 % recall "
          f"{o.get('precision_at_50_recall')}; Spearman points {e.get('spearman_points')}, faces "
          f"{e.get('spearman_faces')}, within faces {e.get('spearman_within_face')}, calibration "
          f"{e.get('calibration')}")
PYEOF
cat "$DOCS/confidence.txt" | tee -a "$LOG"
stamp "still-image evaluation done"

# 5. the reported clips, nothing else running (the per-frame cost is timed)
read -r MC BETA CROP < <($PY -c "import json,sys; b=json.load(open(sys.argv[1]))['best'];\
print(b['min_cutoff'], b['beta'], b['crop_from'])" "$DOCS/tune_one_euro.json")
for m in kd-heads kd; do
  $K evaluate --model "$OUT/$m/best" --video "$OUT/clips" --out "$OUT/eval-video/$m" --min-cutoff "$MC" \
     --beta "$BETA" --crop-from "$CROP" --plot "$DOCS/video_$m.png" 2>/dev/null | tee -a "$LOG"
  $PY -c "import json,sys; d=json.load(open(sys.argv[1]));\
[m.update(series=None) for c in d['clips'] for m in c['modes'].values()];\
json.dump(d, open(sys.argv[2], 'w'), indent=1)" "$OUT/eval-video/$m/video_metrics.json" "$DOCS/video_$m.json"
done
# the same clips through ONNX Runtime (exported with the heads, parity-checked): the per-frame cost where
# the model itself is fast
[ -f "$OUT/kd-heads/best/model.onnx" ] || $K export --model "$OUT/kd-heads/best" --format onnx \
   | tee -a "$LOG"
$K evaluate --model "$OUT/kd-heads/best/model.onnx" --backend onnx --video "$OUT/clips" \
   --out "$OUT/eval-video/kd-heads-onnx" --min-cutoff "$MC" --beta "$BETA" --crop-from "$CROP" 2>/dev/null \
   | tee -a "$LOG"
$PY -c "import json,sys; d=json.load(open(sys.argv[1]));\
[m.update(series=None) for c in d['clips'] for m in c['modes'].values()];\
json.dump(d, open(sys.argv[2], 'w'), indent=1)" "$OUT/eval-video/kd-heads-onnx/video_metrics.json" \
   "$DOCS/video_kd-heads-onnx.json"
stamp "done"
