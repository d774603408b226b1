#!/usr/bin/env bash
# The CUDA backend on a machine with a GPU, in one run:
#  1. the ferroconv binary (built here with cargo, or prebuilt: FERROCONV_BIN) and, when given, the GPU
#     test binary (CUDA_TEST_BIN, from `cargo test --release --test cuda --no-run`);
#  2. `ferroconv check --device cuda` on the fixtures (PTX kernels), then again with the kernels compiled by
#     NVRTC (FERROCONV_CUDA_KERNELS=nvrtc) where libnvrtc is present;
#  3. the GPU tests (tests/cuda.rs: every op, algorithm and dtype against the CPU; tensors on the device);
#  4. `ferroconv bench --device cuda` when the binary has that command, once per dtype in BENCH_DTYPES;
#  5. where PyTorch with CUDA is importable, the same suite through PyTorch/cuDNN
#     (../shared/bench/torch_cuda_suite.py, or TORCH_SUITE), with the same batch multiplier;
#  6. a summary. Exit status 1 when the fixtures or the GPU tests fail (or nothing could be run).
#
# Environment: FERROCONV_BIN, CUDA_TEST_BIN, FIXTURES (default tests/fixtures), BATCH_MULT (default 16),
# TORCH_SUITE, PYTHON (default python3), OUT (results folder; default ./gpu-check-out), BENCH_DTYPES (default
# "f32 f16 bf16"), BENCH_ARGS and TORCH_ARGS (extra arguments for ferroconv bench and the PyTorch suite),
# STEP_TIMEOUT (seconds any one step may run; default 600).
set -uo pipefail

cd "$(dirname "$0")/.."
OUT="${OUT:-gpu-check-out}"
mkdir -p "$OUT"
FIXTURES="${FIXTURES:-tests/fixtures}"
BATCH_MULT="${BATCH_MULT:-16}"
PYTHON="${PYTHON:-python3}"
TORCH_SUITE="${TORCH_SUITE:-../shared/bench/torch_cuda_suite.py}"
SUMMARY=()
FAILED=0

section() { printf '\n=== %s\n' "$*"; }

# Whether the dynamic loader can find libnvrtc (where cudarc looks for it).
has_nvrtc() {
    local dir
    ldconfig -p 2>/dev/null | grep -q 'libnvrtc\.so' && return 0
    IFS=: read -ra dirs <<<"${LD_LIBRARY_PATH:-}"
    for dir in "${dirs[@]}"; do
        compgen -G "$dir/libnvrtc.so*" >/dev/null && return 0
    done
    return 1
}
record() { SUMMARY+=("$(printf '%-28s %s' "$1" "$2")"); }

# Runs a step, teeing its output to $OUT/$1.log; records pass/FAIL (fatal steps set FAILED).
step() {
    local name=$1 fatal=$2
    shift 2
    section "$name: $*"
    local start=$SECONDS
    if timeout "${STEP_TIMEOUT:-600}" "$@" 2>&1 | tee "$OUT/$name.log"; then
        record "$name" "ok ($((SECONDS - start)) s)"
    else
        record "$name" "FAIL ($((SECONDS - start)) s; $OUT/$name.log)"
        [ "$fatal" = fatal ] && FAILED=1
    fi
}

section "GPU"
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
else
    echo "nvidia-smi not found" | tee "$OUT/gpu.txt"
fi

BIN="${FERROCONV_BIN:-}"
if [ -z "$BIN" ]; then
    section "build: cargo build --release"
    if cargo build --release 2>&1 | tail -n 3; then
        BIN=target/release/ferroconv
    else
        record build "FAIL (set FERROCONV_BIN to a prebuilt binary)"
        FAILED=1
    fi
fi

if [ -n "$BIN" ]; then
    "$BIN" info 2>&1 | tee "$OUT/info.txt" || true
    step fixtures-ptx fatal "$BIN" check --device cuda "$FIXTURES"
    # The same kernels from source through NVRTC (needs libnvrtc on the library path).
    if has_nvrtc; then
        step fixtures-nvrtc fatal env FERROCONV_CUDA_KERNELS=nvrtc "$BIN" check --device cuda "$FIXTURES"
    else
        record fixtures-nvrtc "skipped (no libnvrtc on the library path)"
    fi
fi

if [ -n "${CUDA_TEST_BIN:-}" ]; then
    step gpu-tests fatal "$CUDA_TEST_BIN" --nocapture
elif command -v cargo >/dev/null && [ -z "${FERROCONV_BIN:-}" ]; then
    step gpu-tests fatal cargo test --release --test cuda -- --nocapture
else
    record gpu-tests "not run (set CUDA_TEST_BIN)"
fi
# The GPU tests skip themselves (and pass) where no device answers: that is a failure here.
if grep -q '^skipping: no usable CUDA device' "$OUT/gpu-tests.log" 2>/dev/null; then
    record gpu-tests "FAIL (every test skipped itself: no usable CUDA device)"
    FAILED=1
fi

if [ -n "$BIN" ] && "$BIN" help bench >/dev/null 2>&1; then
    for dtype in ${BENCH_DTYPES:-f32 f16 bf16}; do
        # shellcheck disable=SC2086 # BENCH_ARGS is a list of words
        step "bench-ferroconv-$dtype" optional "$BIN" bench --device cuda --dtype "$dtype" --batch-mult "$BATCH_MULT" \
            --direction all --json "$OUT/ferroconv-bench-$dtype.json" ${BENCH_ARGS:-}
    done
else
    record bench-ferroconv "not run (no bench command in this binary)"
fi

if "$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    # shellcheck disable=SC2086 # TORCH_ARGS is a list of words
    step bench-torch optional "$PYTHON" "$TORCH_SUITE" --batch-mult "$BATCH_MULT" --json "$OUT/torch-bench.json" \
        ${TORCH_ARGS:-}
else
    record bench-torch "not run (no PyTorch with CUDA for $PYTHON)"
fi

section "summary (logs and JSON in $OUT)"
printf '%s\n' "${SUMMARY[@]}" | tee "$OUT/summary.txt"
for name in fixtures-ptx fixtures-nvrtc; do
    [ -f "$OUT/$name.log" ] && grep -E '^[0-9]+ passed' "$OUT/$name.log" | sed "s/^/$name: /"
done
exit "$FAILED"
