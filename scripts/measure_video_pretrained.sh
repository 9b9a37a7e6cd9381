#!/usr/bin/env bash
# The shipped model on the reported synthetic clips (docs/INFERENCE.md, "Video"): NME per frame, jitter,
# detector runs, and the per-frame cost of tracking against the model alone and against the floor of
# any tracker (the snapped per-face path), through ONNX Runtime and PyTorch, one thread each.  About
# two minutes on 2 cores (three runs per backend); run it with nothing else running (the per-frame cost
# is timed).
#
#   scripts/measure_video_pretrained.sh [OUT_DIR] [RUNS]   # default docs/perf/issue12, 3 runs per backend
#
# Writes OUT_DIR/video_pretrained-{onnx,torch}.json (the metrics of the run whose tracking/model ratio is
# the median of RUNS, per-frame series left out) and OUT_DIR/video_pretrained-cost.txt (every run's cost
# line, so the spread between runs is on record).  Then, where the real development faces are beside the
# project (PHOTOS, default ../shared/realfaces/faces), one clip per face moved in the image plane
# (kdlandmark synth --video --from-photos) scored with the simulated detector and with MTCNN, no timing
# (the whole script: 5 min 13 s here with the clips already made; making them takes 25 s more):
# OUT_DIR/photoclips/video_{truth-jitter,mtcnn}.json and the MTCNN plot of the first clip.
# Env: PY (python), CLIPS (default runs/clips6), PHOTOS, PHOTO_CLIPS (default runs/photoclips).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${1:-docs/perf/issue12}; RUNS=${2:-3}; CLIPS=${CLIPS:-runs/clips6}
M=src/kdlandmark/pretrained/kdlandmark-68
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p "$OUT"
[ -d "$CLIPS" ] || $PY -m kdlandmark synth --video --seed 0 --count 6 --frames 150 --size 256 --workers 1 \
  --out "$CLIPS" > /dev/null
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT
: > "$OUT/video_pretrained-cost.txt"
for backend in onnx torch; do
  model=$M; [ "$backend" = onnx ] && model=$M/model.onnx
  for k in $(seq "$RUNS"); do
    $PY -m kdlandmark evaluate --model "$model" --backend "$backend" --video "$CLIPS" --out "$TMP/$backend-$k" \
      2>/dev/null > "$TMP/$backend-$k.txt"
    grep -E "^per-frame cost|^floor" "$TMP/$backend-$k.txt" | sed "s/^/[$backend run $k] /" \
      >> "$OUT/video_pretrained-cost.txt"
  done
  $PY - "$TMP" "$backend" "$RUNS" "$OUT/video_pretrained-$backend.json" <<'PYEOF'
import json, sys
tmp, backend, runs, dest = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
docs = [json.load(open(f"{tmp}/{backend}-{k}/video_metrics.json")) for k in range(1, runs + 1)]
docs.sort(key=lambda d: d["timing"]["ratio"])
d = docs[len(docs) // 2]                      # the median run by the tracking / model ratio
d["timing"]["ratios_of_all_runs"] = [x["timing"]["ratio"] for x in docs]
d["timing"]["floor_ratios_of_all_runs"] = [x["timing"]["ratio_floor"] for x in docs]
for clip in d["clips"]:
    for mode in clip["modes"].values():
        mode["series"] = None
json.dump(d, open(dest, "w"), indent=1)
PYEOF
done
cat "$OUT/video_pretrained-cost.txt"

PHOTOS=${PHOTOS:-../shared/realfaces/faces}; PHOTO_CLIPS=${PHOTO_CLIPS:-runs/photoclips}
if [ ! -d "$PHOTOS" ]; then
  echo "no real faces at $PHOTOS: the photo clips are skipped"; exit 0
fi
[ -d "$PHOTO_CLIPS" ] || $PY -m kdlandmark synth --video --from-photos "$PHOTOS" --frames 150 --size 256 \
  --out "$PHOTO_CLIPS" > /dev/null
mkdir -p "$OUT/photoclips"
for det in truth-jitter mtcnn; do
  plot=(); [ "$det" = mtcnn ] && plot=(--plot "$OUT/photoclips/video_mtcnn_clip000.png")
  $PY -m kdlandmark evaluate --model "$M/model.onnx" --backend onnx --video "$PHOTO_CLIPS" --detector "$det" \
    --no-timing --out "$TMP/photo-$det" "${plot[@]}" 2>/dev/null | tail -6
  $PY -c "import json,sys; d=json.load(open(sys.argv[1]));\
[m.update(series=None) for c in d['clips'] for m in c['modes'].values()];\
json.dump(d, open(sys.argv[2], 'w'), indent=1)" "$TMP/photo-$det/video_metrics.json" \
    "$OUT/photoclips/video_$det.json"
done
