#!/usr/bin/env bash
# Side-by-side training-step benchmark: one yolo26n step (training-mode forward, end-to-end loss,
# backward, SGD step) in ferroyolo and in PyTorch, same machine, same threads, same batch.
# The two alternate ROUNDS times so that both see the same background load; each round prints
# both medians, then the median over rounds and the peak RSS of each process.
#
#   bench/train_step.sh [WEIGHTS] [THREADS] [RUNS] [ROUNDS] [BATCH] [SIZE]
#
# Defaults: ../shared/fixtures/weights/yolo26n-coco.pt, 2 threads, 10 steps per round after 2
# warmup steps, 3 rounds, batch 8 at 320x320. PYTHON (default /tmp/ref/bin/python) must have
# ultralytics==8.4.190 (see bench/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."
WEIGHTS=${1:-../shared/fixtures/weights/yolo26n-coco.pt}
THREADS=${2:-2}
RUNS=${3:-10}
ROUNDS=${4:-3}
BATCH=${5:-8}
SIZE=${6:-320}
PYTHON=${PYTHON:-/tmp/ref/bin/python}

cargo build --release -q -p ferroyolo --example bench_train_step
BIN=${CARGO_TARGET_DIR:-target}/release/examples/bench_train_step
results=()
for round in $(seq "$ROUNDS"); do
    ours=$(RAYON_NUM_THREADS=$THREADS "$BIN" "$WEIGHTS" "$THREADS" "$RUNS" "$BATCH" "$SIZE")
    theirs=$(OMP_NUM_THREADS=$THREADS "$PYTHON" bench/reference_train_step.py "$WEIGHTS" "$THREADS" "$RUNS" "$BATCH" "$SIZE" 2>/dev/null | tail -1)
    echo "round $round: ferroyolo $ours"
    echo "round $round: pytorch   $theirs"
    results+=("$ours" "$theirs")
done

python3 - "${results[@]}" <<'PY'
import json, statistics, sys
rows = [json.loads(a) for a in sys.argv[1:]]
ours, theirs = rows[0::2], rows[1::2]
o = statistics.median(r["ferroyolo"] for r in ours)
t = statistics.median(r["pytorch"] for r in theirs)
r0 = ours[0]
print(f"\nyolo26n training step, batch {r0['batch']} at {r0['size']}x{r0['size']}, {r0['threads']} threads, "
      f"median over {len(ours)} rounds of {r0['runs']} steps")
print(f"{'':<12}{'ms':>9}{'range of round medians':>26}{'peak RSS MiB':>15}{'first loss':>12}")
for name, rs, m, key in [("ferroyolo", ours, o, "ferroyolo"), ("pytorch", theirs, t, "pytorch")]:
    meds = [r[key] for r in rs]
    print(f"{name:<12}{m:>9.1f}{f'{min(meds):.1f} .. {max(meds):.1f}':>26}{max(r['peak_rss_mib'] for r in rs):>15.0f}{rs[0]['first_loss']:>12.3f}")
print(f"ferroyolo / pytorch: {o / t:.2f}")
PY
