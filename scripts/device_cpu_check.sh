#!/usr/bin/env bash
# The CPU backend on another machine's CPU, from binaries staged by scripts/stage_device.sh: made for the host
# of a lent GPU machine, whose Xeon has AVX-512 with BF16 and FP16 (this project's own machines have AVX2
# only, so the AVX-512 kernels run nowhere else). In one run:
#  1. `ferroconv info`: the features found and so the kernels the dispatcher picks;
#  2. every staged test binary but the GPU one, then the fixtures on the CPU;
#  3. `ferroconv bench` in f32 and bf16 on the dense 3x3 layers, 2 threads (bf16 should be >= 1.3x faster);
#  4. where python3 has torch: scripts/compare_cpu.py, ferroconv beside PyTorch on this CPU, 2 threads.
# Environment: STAGE (default .dev), PYTHON (default python3), OUT (results folder; default ./cpu-check-out),
# STEP_TIMEOUT (seconds any one step may run; default 600). Exit status 1 when a test or fixture fails.
set -uo pipefail

cd "$(dirname "$0")/.."
STAGE="${STAGE:-.dev}"
OUT="${OUT:-cpu-check-out}"
PYTHON="${PYTHON:-python3}"
BIN="$STAGE/ferroconv"
DENSE=r50_3x3_64,r50_3x3_256,r50_3x3_512,unet_enc_64
export MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296
mkdir -p "$OUT"
FAILED=0

# Runs a step, its output also in $OUT/NAME.log; a failing step marks the run failed.
step() {
    local name=$1
    shift
    printf '\n=== %s: %s\n' "$name" "$*"
    if ! timeout "${STEP_TIMEOUT:-600}" "$@" 2>&1 | tee "$OUT/$name.log"; then
        echo "!!! $name failed"
        FAILED=1
    fi
}

"$BIN" info | tee "$OUT/info.txt"
for test in "$STAGE"/tests/*; do
    [ "$(basename "$test")" = cuda ] || step "test-$(basename "$test")" "$test" --quiet
done
step fixtures "$BIN" check --device cpu tests/fixtures
for dtype in f32 bf16; do
    step "bench-$dtype" "$BIN" bench --device cpu --threads 2 --dtype "$dtype" --cases "$DENSE" \
        --json "$OUT/bench-$dtype.json"
done
if "$PYTHON" -c 'import torch' 2>/dev/null; then
    step compare "$PYTHON" scripts/compare_cpu.py --threads 2 --python "$PYTHON" --ferroconv "$BIN" \
        --torch-suite "$STAGE/torch_suite.py" --out-dir "$OUT/compare"
else
    echo "no torch for $PYTHON: PyTorch comparison skipped"
fi
exit "$FAILED"
