#!/usr/bin/env bash
# Builds here what a lent GPU machine runs (it has no Rust toolchain and no network) and stages it in .dev/,
# a folder git ignores (through .git/info/exclude) that the device call names in `carry`:
#   .dev/ferroconv            the CLI, its PTX compiled by the pinned nvcc wheels (scripts/ci_cuda.sh's venv)
#   .dev/tests/NAME           the test binaries that need no emulator (NAME: the test target; `lib` for the
#                             unit tests), stripped; `cuda` is the GPU test
#   .dev/torch_*.py, suite.json  PyTorch's suite scripts from ../shared/bench (../shared does not travel)
# Then one device call (carry: .dev) runs everything there: `bash scripts/device_checks.sh`.
set -euo pipefail

cd "$(dirname "$0")/.."
STAGE=.dev
VENV="${CI_CUDA_VENV:-.ci/venv}"
# The test targets worth running on another machine: all but those of the emulator and the U-Net step (built
# without `emu`, they hold no tests) and tests/nvrtc.rs (run by CI).
TESTS=(lib fixtures properties fuzz errors layers companion epilogue cuda)

grep -qx '/.dev/' .git/info/exclude 2>/dev/null || echo '/.dev/' >>.git/info/exclude
compgen -G "$VENV/lib/python*/site-packages/nvidia/cu13/bin/nvcc" >/dev/null || bash scripts/ci_cuda.sh
NVCC=$(compgen -G "$VENV/lib/python*/site-packages/nvidia/cu13/bin/nvcc" | head -n 1)
export NVCC="$PWD/$NVCC"

rm -rf "$STAGE"
mkdir -p "$STAGE/tests"
cargo build --release
cp target/release/ferroconv "$STAGE/"
# One JSON line per built artifact: keep the test executables by target name.
cargo test --release --no-run --message-format=json | python3 -c '
import json, shutil, sys
wanted, stage = set(sys.argv[1].split()), sys.argv[2]
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") != "compiler-artifact" or not m.get("executable") or not m["profile"]["test"]:
        continue
    kind, name = m["target"]["kind"], m["target"]["name"]
    name = "lib" if kind == ["lib"] else name
    if kind != ["bin"] and name in wanted:
        shutil.copy(m["executable"], f"{stage}/tests/{name}")
' "${TESTS[*]}" "$STAGE"
strip "$STAGE"/ferroconv "$STAGE"/tests/*
cp ../shared/bench/torch_suite.py ../shared/bench/torch_cuda_suite.py ../shared/bench/suite.json "$STAGE/"
"$STAGE/ferroconv" info | grep 'cuda kernels'
ls "$STAGE/tests"
du -sh "$STAGE"
