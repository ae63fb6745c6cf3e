#!/usr/bin/env bash
# One GPU session for the kernels: the triton tests on the device, then the benchmark.
# Everything lands in $OUT (default ./gpu_out). Needs python3 with torch (CUDA), triton, pytest;
# imports nothing else from this repo's dependencies (conftest.py is skipped).
#   OUT=/some/dir bash benchmarks/gpu_kernels.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export TRITON_DEFAULT_FP_FUSION=1 PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,memory.total,clocks.max.memory --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())"
  nproc
} > "$OUT/gpu_info.txt" 2>&1
cat "$OUT/gpu_info.txt"

t0=$(date +%s)
timeout "${TEST_TIMEOUT:-150}" python3 -m pytest --noconftest -p no:cacheprovider -q -m gpu \
  tests/test_kernels_triton.py -s 2>&1 | tee "$OUT/gpu_tests.txt"
echo "tests: $(( $(date +%s) - t0 )) s" | tee -a "$OUT/gpu_tests.txt"

t0=$(date +%s)
timeout "${BENCH_TIMEOUT:-420}" python3 benchmarks/kernel_speed.py --device cuda \
  --sizes "${SIZES:-11200000,100000000,860000000}" --out "$OUT/gpu_bench.jsonl" 2>&1 | tee "$OUT/gpu_bench.log"
echo "benchmark: $(( $(date +%s) - t0 )) s" | tee -a "$OUT/gpu_bench.log"
