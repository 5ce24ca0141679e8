#!/usr/bin/env bash
# INT8 benchmark (issue: compress): ferroyolo on each given weights file (fp32 .pt, and the INT8
# .safetensors of `ferroyolo quantize` when there is one) vs ONNX Runtime fp32, ONNX Runtime's
# own static INT8 quantization and OpenVINO (fp32, default precision, the same INT8 model), yolo26n
# 1x3x640x640, same machine, same thread count, medians.
#
#   bench/int8.sh FP32_WEIGHTS [MORE_WEIGHTS...]
#   THREADS=2 RUNS=30 MAP=1 bench/int8.sh ../shared/fixtures/weights/yolo26n-coco.pt yolo26n-coco-int8.safetensors
#
# The first file is the fp32 model: the reference side exports and quantizes it. MAP=1 also
# scores ONNX Runtime fp32 and INT8 on coco8 val (mAP50-95); OPS=body|conv|all chooses what ONNX
# Runtime quantizes (see bench/reference_int8.py). PYTHON (default /tmp/ref/bin/python)
# must have ultralytics==8.4.190, onnxruntime, openvino and onnx (see bench/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ]; then
    sed -n '2,14p' "$0" >&2
    exit 2
fi
THREADS=${THREADS:-2}
RUNS=${RUNS:-30}
PYTHON=${PYTHON:-/tmp/ref/bin/python}
DATA=${DATA:-../shared/fixtures/coco8/data.yaml}
TARGET=${CARGO_TARGET_DIR:-target}
for w in "$@"; do
    [ -f "$w" ] || { echo "int8.sh: $w: no such weights file" >&2; exit 1; }
done

cargo build --release -q -p ferroyolo --example bench_forward
rows=()
for w in "$@"; do
    out=$("$TARGET/release/examples/bench_forward" "$w" "$THREADS" "$RUNS")
    rows+=("$(python3 -c 'import json,sys; d=json.loads(sys.argv[1]); print(json.dumps({"engine": "ferroyolo " + sys.argv[2], "median_ms": d["ferroyolo"]}))' "$out" "$(basename "$w")")")
done
map_flag=()
[ "${MAP:-0}" = 1 ] && map_flag=(--map)
mapfile -t theirs < <(OMP_NUM_THREADS=$THREADS "$PYTHON" bench/reference_int8.py "$1" "$THREADS" "$RUNS" --data "$DATA" --ops "${OPS:-body}" "${map_flag[@]}" 2>/dev/null | grep '^{')
[ ${#theirs[@]} -gt 0 ] || { echo "int8.sh: bench/reference_int8.py printed no results (run it alone to see why)" >&2; exit 1; }

python3 - "$THREADS" "$RUNS" "${rows[@]}" "${theirs[@]}" <<'PY'
import json, sys
threads, runs = sys.argv[1], sys.argv[2]
rows = [json.loads(a) for a in sys.argv[3:]]
ours = [r for r in rows if r["engine"].startswith("ferroyolo ")]
base = ours[0]["median_ms"]
best = min(ours, key=lambda r: r["median_ms"])
# A second ratio column when another ferroyolo file (the INT8 one) beats the fp32 model.
second = best is not ours[0]
print(f"yolo26n forward 1x3x640x640, {threads} threads, median of {runs} runs")
head = f"{'engine':<48}{'ms':>9}{'ferroyolo fp32 / engine':>25}"
if second:
    head += f"{best['engine'][len('ferroyolo '):] + ' / engine':>40}"
print(head + f"{'mAP50-95':>10}")
for r in rows:
    label = r["engine"]
    if "precision" in r:
        label += f" ({r['precision']})"
    if "quantized_ops" in r:
        label += f" ({r['quantized_ops']})"
    line = f"{label:<48}{r['median_ms']:>9.1f}{base / r['median_ms']:>25.2f}"
    if second:
        line += f"{best['median_ms'] / r['median_ms']:>40.2f}"
    if "map50_95" in r:
        line += f"{r['map50_95']:>10.4f}"
    print(line)
print("Ratios are time over time: below 1, the engine in that row is slower.")
PY
