#!/usr/bin/env bash
# Everything a lent GPU machine should run, in one device call, from what scripts/stage_device.sh staged in
# .dev/ (the call names .dev in `carry`; the command is `bash scripts/device_checks.sh`):
#  1. scripts/gpu_check.sh: the fixtures on the card (PTX and NVRTC), the GPU tests, `ferroconv bench --device
#     cuda` and PyTorch/cuDNN's suite (GPU_TIMEOUT seconds in all, default 420);
#  2. scripts/device_cpu_check.sh: the CPU tests, fixtures and benchmarks on the host's AVX-512 CPU, beside
#     PyTorch (CPU_TIMEOUT seconds, default 150).
# The device tool brings back at most 8 files from $OUT: both folders of results travel as one archive,
# $OUT/device-checks.tgz, beside the two summaries. Exit status: 1 when either check failed.
set -uo pipefail

cd "$(dirname "$0")/.."
RESULTS=$(mktemp -d)
DEST="${OUT:-device-checks-out}"
mkdir -p "$DEST"
# libnvrtc for the NVRTC pass: the machine's CUDA toolkit, else PyTorch's wheel.
for lib in /usr/local/cuda/lib64/libnvrtc.so* /opt/torch/.venv/lib/python3*/site-packages/nvidia/cu13/lib/libnvrtc.so*; do
    [ -e "$lib" ] && export LD_LIBRARY_PATH="$(dirname "$lib")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" && break
done

OUT="$RESULTS/gpu" FERROCONV_BIN=.dev/ferroconv CUDA_TEST_BIN=.dev/tests/cuda TORCH_SUITE=.dev/torch_cuda_suite.py \
    TORCH_ARGS="${TORCH_ARGS:---iters 10 --reps 5}" timeout "${GPU_TIMEOUT:-420}" bash scripts/gpu_check.sh
gpu=$?
OUT="$RESULTS/cpu" STAGE=.dev timeout "${CPU_TIMEOUT:-150}" bash scripts/device_cpu_check.sh
cpu=$?

tar czf "$DEST/device-checks.tgz" -C "$RESULTS" .
cp "$RESULTS/gpu/summary.txt" "$DEST/gpu-summary.txt" 2>/dev/null
printf 'gpu_check.sh exit %s, device_cpu_check.sh exit %s\n' "$gpu" "$cpu" | tee "$DEST/exit-status.txt"
[ "$gpu" -eq 0 ] && [ "$cpu" -eq 0 ]
