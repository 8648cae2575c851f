#!/usr/bin/env bash
# GPU checks for pushforward (issue 21, item 4), one command on a CUDA machine:
#
#   bash benchmarks/gpu.sh                # the test kit on cuda, then the throughput comparison
#   bash benchmarks/gpu.sh --dry-run      # the same Python on the CPU (no GPU needed)
#
# 1. tests/test_device.py with PUSHFORWARD_TEST_DEVICE=cuda: every kit case through
#    check_transform on the device, every preset's log_prob / backward / sample there, plus the
#    CPU-only meta-device checks;
# 2. benchmarks/gpu.py: MAF, RealNVP, NSF at d = 2, 16, 64 beside zuko and nflows, eager,
#    torch.compile and CUDA graphs (small flows), written to benchmarks/gpu.md and gpu.json.
# Environment: DEVICE (default cuda), OUT (default benchmarks/gpu, without suffix).
set -euo pipefail

cd "$(dirname "$0")/.."
DEVICE="${DEVICE:-cuda}"
OUT="${OUT:-benchmarks/gpu}"
DRY=0
if [[ "${1:-}" == "--dry-run" ]]; then
    DRY=1
    DEVICE=cpu
    OUT="${TMPDIR:-/tmp}/pushforward-gpu-dry-run"
fi

python - "$DEVICE" <<'EOF'
import sys, torch
device = sys.argv[1]
print(f"torch {torch.__version__}; cuda available: {torch.cuda.is_available()}")
if device.startswith("cuda") and not torch.cuda.is_available():
    sys.exit("gpu.sh: no CUDA device (use --dry-run to exercise the script on a CPU)")
if torch.cuda.is_available():
    print("device:", torch.cuda.get_device_name(0))
EOF

echo "== 1/2 test kit on ${DEVICE}"
if [[ $DRY == 1 ]]; then
    # A few cases through the same code path, on the CPU.
    PUSHFORWARD_TEST_DEVICE=cpu python -m pytest -q tests/test_device.py \
        -k "on_the_test_device and (maf or Affine or sphere)" 2>&1 | tee "${OUT}-tests.log"
else
    PUSHFORWARD_TEST_DEVICE="$DEVICE" python -m pytest -q -m "slow or not slow" \
        tests/test_device.py 2>&1 | tee "${OUT}-tests.log"
fi

echo "== 2/2 throughput on ${DEVICE}"
if [[ $DRY == 1 ]]; then
    python benchmarks/gpu.py --device cpu --quick --out "$OUT"
else
    python benchmarks/gpu.py --device "$DEVICE" --out "$OUT"
fi
echo "results: ${OUT}.md, ${OUT}.json, ${OUT}-tests.log"
