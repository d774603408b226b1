#!/usr/bin/env bash
# CI check of the CUDA kernels without a GPU (called by .ci/run):
#  1. installs NVIDIA's CUDA 13.0 compiler wheels from PyPI in a venv (.ci/venv, or $CI_CUDA_VENV);
#  2. builds the crate with NVCC pointing into the wheels, so build.rs compiles kernels/*.cu to PTX;
#  3. assembles every PTX file with ptxas for sm_80 and sm_90, printing registers and spills per kernel;
#  4. checks the no-nvcc path: with the wheel's libnvrtc on the library path, tests/nvrtc.rs compiles
#     every embedded kernel source with NVRTC and assembles the result with ptxas.
# Fails on any compile or assembly error. Needs python3 (with venv), a C++ host compiler for nvcc, cargo.
set -euo pipefail

cd "$(dirname "$0")/.."
VENV="${CI_CUDA_VENV:-.ci/venv}"
ARCHS=(sm_80 sm_90)
# Newer wheels emit PTX that CUDA 13.0 drivers refuse: keep every component at 13.0.
WHEELS=(
    "nvidia-cuda-nvcc==13.0.*" "nvidia-cuda-crt==13.0.*" "nvidia-nvvm==13.0.*"
    "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-cccl==13.0.*" "nvidia-cuda-nvrtc==13.0.*"
)

section() { printf '\n=== %s\n' "$*"; }

section "CUDA 13.0 wheels in $VENV"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "${WHEELS[@]}"
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
# The 13.0 wheels share one CUDA-like tree: bin/ (nvcc, ptxas; nvcc.profile finds the rest relative to
# itself), nvvm/bin/cicc, include/ (crt headers, cuda_fp16.h, cccl), lib/ (libnvrtc).
CUDA="$SITE/nvidia/cu13"
for need in bin/nvcc bin/ptxas nvvm/bin/cicc include/cuda_fp16.h include/crt/host_defines.h lib/libnvrtc.so.13; do
    [ -e "$CUDA/$need" ] || { echo "missing $CUDA/$need: the wheels' layout changed" >&2; exit 1; }
done
export NVCC="$CUDA/bin/nvcc"
PTXAS="$CUDA/bin/ptxas"
"$NVCC" --version | tail -n 2

section "cargo build with NVCC=$NVCC (build.rs compiles kernels/*.cu to PTX)"
BUILD_LOG=$(mktemp)
trap 'rm -f "$BUILD_LOG"' EXIT
cargo build --lib --message-format=json-render-diagnostics >"$BUILD_LOG"
# The build-script-executed message of this crate names the directory build.rs wrote the PTX to.
OUT_DIR=$("$VENV/bin/python" -c '
import json, sys
dirs = [m["out_dir"] for m in map(json.loads, open(sys.argv[1]))
        if m.get("reason") == "build-script-executed" and "/build/ferroconv-" in m["out_dir"]]
print(dirs[-1] if dirs else "")' "$BUILD_LOG")
[ -n "$OUT_DIR" ] || { echo "cargo did not report ferroconv's build-script output directory" >&2; exit 1; }
shopt -s nullglob
PTX=("$OUT_DIR"/*.ptx)
CU=(kernels/*.cu)
[ "${#PTX[@]}" -eq "${#CU[@]}" ] || { echo "expected ${#CU[@]} PTX files in $OUT_DIR, found ${#PTX[@]}" >&2; exit 1; }

# Prints one line per kernel: arch, registers, spill stores/loads, stack, shared memory.
summarise() {
    awk -v arch="$1" '
        # The number just before `label` in `line`.
        function number(line, label,   at, before, words, n) {
            at = index(line, label)
            if (at == 0) return "0"
            before = substr(line, 1, at - 1)
            sub(/[ ,:]+$/, "", before)
            n = split(before, words, /[ ,:]+/)
            return words[n]
        }
        /Compiling entry function/ { split($0, quoted, "\047"); kernel = quoted[2] }
        /bytes stack frame/ {
            stack = number($0, "bytes stack frame"); stores = number($0, "bytes spill stores"); loads = number($0, "bytes spill loads")
        }
        /Used [0-9]+ registers/ {
            printf "  %-6s %-34s %4s regs  %5s B stack  %4s B spill stores  %4s B spill loads  %6s B smem\n",
                arch, kernel, number($0, "registers"), stack, stores, loads, number($0, "bytes smem")
        }'
}

assemble() { # $1: PTX file, $2: what made it
    local ptx=$1 origin=$2 arch log
    for arch in "${ARCHS[@]}"; do
        if ! log=$("$PTXAS" -v "-arch=$arch" -o /dev/null "$ptx" 2>&1); then
            echo "$log" >&2
            echo "ptxas -arch=$arch failed on $origin $(basename "$ptx")" >&2
            exit 1
        fi
        echo "$log" | summarise "$arch"
    done
}

section "ptxas ${ARCHS[*]} on nvcc's PTX"
for ptx in "${PTX[@]}"; do
    echo "$(basename "$ptx") (nvcc):"
    assemble "$ptx" nvcc
done

section "NVRTC: every embedded kernel source compiled by libnvrtc (tests/nvrtc.rs), then ptxas ${ARCHS[*]}"
NVRTC_DIR=$(mktemp -d)
trap 'rm -rf "$BUILD_LOG" "$NVRTC_DIR"' EXIT
LD_LIBRARY_PATH="$CUDA/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" FERROCONV_NVRTC_PTX_DIR="$NVRTC_DIR" \
    cargo test --test nvrtc -- --ignored
NVRTC_PTX=("$NVRTC_DIR"/*.ptx)
[ "${#NVRTC_PTX[@]}" -eq "${#CU[@]}" ] || { echo "expected ${#CU[@]} NVRTC PTX files, found ${#NVRTC_PTX[@]}" >&2; exit 1; }
for ptx in "${NVRTC_PTX[@]}"; do
    echo "$(basename "$ptx") (NVRTC):"
    assemble "$ptx" NVRTC
done

section "CUDA kernels: PTX and NVRTC builds assemble for ${ARCHS[*]}"
