#!/usr/bin/env bash
# One prepared GPU check (issue 3 throughput figure, issue 5 ceiling/pipeline ratio and per-epoch stage times).
# Usage on the device machine, from the repo root: bash scripts/gpu_check.sh   (writes into $OUT)
set -u
export PYTHONPATH=src
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)" | tee -a "$OUT/gpu.txt"
# 1. ceiling vs real pipeline, paper preset (EfficientNet-B3 teachers, MobileNetV2 student, 224, batch 70)
timeout 200 python3 -m kdlandmark bench train --config paper-300w --count 3148 --steps 40 2>&1 \
  | grep -v "it/s]" | tee "$OUT/bench_train.txt"
# 2. the whole pipeline at the paper's settings, 2 epochs per stage, synthetic data of 300W's size
timeout ${PIPE_TIMEOUT:-150} bash -c '
python3 -m kdlandmark synth --format 300w --count 3837 --test-fraction 0.17957 --out /tmp/s300w --seed 0 >/dev/null &&
python3 -m kdlandmark pipeline --config paper-300w --data-root /tmp/s300w --out /tmp/run \
   teacher.optim.epochs=2 student.optim.epochs=2 --stages prepare asm tough tolerant kd l2 ' 2>&1 \
  | grep -v "it/s]\|s/it]" | tail -40 | tee "$OUT/pipeline.txt"
for r in tough tolerant kd l2; do [ -f /tmp/run/$r/metrics.csv ] && cp /tmp/run/$r/metrics.csv "$OUT/epochs_$r.csv"; done
cp /tmp/run/stage_times.json "$OUT/" 2>/dev/null || true
