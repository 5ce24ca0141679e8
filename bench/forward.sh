#!/usr/bin/env bash
# Side-by-side forward-pass benchmark: ferroyolo vs PyTorch, ONNX Runtime and OpenVINO, same
# machine, same thread count, medians. Then peak memory of a whole `predict` in both.
#
#   bench/forward.sh [WEIGHTS] [THREADS] [RUNS]
#
# WEIGHTS defaults to ../shared/fixtures/weights/yolo26n-coco.pt. PYTHON (default
# /tmp/ref/bin/python) must have ultralytics==8.4.190, onnxruntime and openvino installed:
#   python3 -m venv /tmp/ref && /tmp/ref/bin/pip install ultralytics==8.4.190 onnxruntime openvino onnx
set -euo pipefail
cd "$(dirname "$0")/.."
WEIGHTS=${1:-../shared/fixtures/weights/yolo26n-coco.pt}
THREADS=${2:-2}
RUNS=${3:-30}
PYTHON=${PYTHON:-/tmp/ref/bin/python}
IMAGE=${IMAGE:-../shared/fixtures/images/bus.jpg}

cargo build --release -q -p ferroyolo --example bench_forward
cargo build --release -q -p ferroyolo-cli
ours=$(target/release/examples/bench_forward "$WEIGHTS" "$THREADS" "$RUNS")
theirs=$(OMP_NUM_THREADS=$THREADS "$PYTHON" bench/reference_forward.py "$WEIGHTS" "$THREADS" "$RUNS" 2>/dev/null | tail -1)

python3 - "$ours" "$theirs" <<'PY'
import json, sys
ours, theirs = json.loads(sys.argv[1]), json.loads(sys.argv[2])
f = ours["ferroyolo"]
print(f"yolo26n forward 1x3x640x640 fp32, {ours['threads']} threads, median of {ours['runs']} runs")
print(f"{'engine':<28}{'ms':>8}{'ferroyolo / engine':>22}")
print(f"{'ferroyolo':<28}{f:>8.1f}{1.0:>22.2f}")
for k in ["pytorch", "onnxruntime", "openvino_fp32", "openvino_default"]:
    if k in theirs:
        label = k if k != "openvino_default" else f"openvino_default ({theirs.get('openvino_default_precision')})"
        print(f"{label:<28}{theirs[k]:>8.1f}{f / theirs[k]:>22.2f}")
PY

echo
echo "Peak RSS of one predict on $IMAGE:"
ours_kb=$(/usr/bin/time -f %M target/release/ferroyolo predict model="$WEIGHTS" source="$IMAGE" save=false threads="$THREADS" 2>&1 >/dev/null | tail -1)
ref_kb=$(OMP_NUM_THREADS=$THREADS /usr/bin/time -f %M "$PYTHON" -c "
import torch; torch.set_num_threads($THREADS)
from ultralytics import YOLO
YOLO('$WEIGHTS').predict('$IMAGE', save=False, verbose=False)
" 2>&1 >/dev/null | tail -1)
echo "ferroyolo predict: $((ours_kb / 1024)) MiB; Python reference predict: $((ref_kb / 1024)) MiB"
