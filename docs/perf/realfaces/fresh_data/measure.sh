#!/bin/bash
# Every figure of the shipped model that the docs quote, into one folder (this one was made with
#   docs/perf/realfaces/fresh_data/measure.sh docs/perf/realfaces/fresh_data runs/fts1-l2/best runs/shipped_before_fresh1
# : $1 the output folder, $2 the L2 counterpart checkpoint, $3 the model shipped before, for the paired comparison).
set -e
trap 'echo "measure.sh: the step at line $LINENO failed (its log is under runs/msh)" >&2' ERR
cd "$(dirname "$0")/../../../.."; source .venv/bin/activate
D=$1; L2=$2; PREV=${3:-runs/shipped_before_fresh1}; M=src/kdlandmark/pretrained/kdlandmark-68
mkdir -p $D
R=runs/msh; rm -rf $R; mkdir -p $R
for fl in no-flip flip; do
  kdlandmark evaluate --model $M --dataset folder --root ../shared/realfaces/faces --out $R/faces-$fl/kd --latency-runs 0 --$fl > $R/faces-$fl.log 2>&1
  kdlandmark evaluate --model $L2 --dataset folder --root ../shared/realfaces/faces --out $R/faces-$fl/l2 --latency-runs 0 --$fl > $R/faces-l2-$fl.log 2>&1
  kdlandmark evaluate --model $PREV --dataset folder --root ../shared/realfaces/faces --out $R/faces-$fl/prev --latency-runs 0 --$fl > $R/faces-prev-$fl.log 2>&1
  kdlandmark compare $R/faces-$fl/prev $R/faces-$fl/kd --labels "180-epoch model" "fresh-data fine-tune" --out $R/cmp-prev-$fl > /dev/null 2>&1
  kdlandmark compare $R/faces-$fl/l2 $R/faces-$fl/kd --labels "L2 student" "KD-Loss student" --out $R/cmp-l2-$fl > /dev/null 2>&1
  cp $R/faces-$fl/kd/metrics.json $D/faces_${fl}_kd_metrics.json; cp $R/faces-$fl/l2/metrics.json $D/faces_${fl}_l2_metrics.json
  cp $R/cmp-prev-$fl/compare.md $D/compare_vs_180epoch_$fl.md; cp $R/cmp-l2-$fl/compare.md $D/compare_kd_vs_l2_$fl.md
done
for s in p68c seed1; do
  for m in kd:$M l2:$L2 prev:$PREV; do
    kdlandmark evaluate --model ${m#*:} --root runs/$s/prepared --out $R/synth-$s/${m%%:*} --latency-runs 0 > /dev/null 2>&1
    cp $R/synth-$s/${m%%:*}/metrics.json $D/synthetic_test_${s}_${m%%:*}_metrics.json
  done
done
python - <<PY > $D/default_path.txt
import numpy as np
from kdlandmark import Landmarker
from kdlandmark.data.formats import read_dataset
from kdlandmark.evaluate.metrics import nme_per_image
from kdlandmark.layouts import get_layout
faces = read_dataset("folder", "../shared/realfaces/faces", "all")
for name, lmk in (("shipped", Landmarker.from_pretrained(detector=None)),
                  ("L2 fine-tune", Landmarker.from_checkpoint("$L2", detector=None, flip=True)),
                  ("180-epoch model", Landmarker.from_checkpoint("$PREV", detector=None, flip=True))):
    pred = np.stack([lmk(f.image_path, [f.box])[0].landmarks for f in faces])
    nme = nme_per_image(pred, np.stack([f.landmarks for f in faces]), get_layout("300w"))
    print(f"{name}: default path (flip {lmk.flip}, upright {lmk.upright}) NME {100 * nme.mean():.3f} %, FR {100 * (nme > 0.1).mean():.1f} %")
PY
cat $D/default_path.txt
for v in "mtcnn_one_pass:--no-flip --no-upright" "mtcnn_flip:--flip --no-upright" "mtcnn_default:--flip" \
         "mtcnn_refine:--refine 1 --no-flip --no-upright" "haar_one_pass:--detector haar --no-flip --no-upright" \
         "haar_default:--detector haar --flip"; do
  kdlandmark evaluate --model $M/model.onnx --photos ../shared/realfaces --out $R/photos-${v%%:*} ${v#*:} > /dev/null 2>&1
  cp $R/photos-${v%%:*}/photos.json $D/photos_${v%%:*}.json
done
