#!/usr/bin/env bash
# benchmarks/margins.py measure in the four cells of ../shared/tools/cpu-matrix (the same
# ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA / thread settings): the two 1-thread cells side by
# side, then the 2-thread cells one at a time. Output: $OUT/margins-<cell>.jsonl, then the summary.
# Usage: bash benchmarks/margins_matrix.sh [GROUP ...]   Env: OUT (default margins-out), SEEDS (0-4), PY
set -u
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-margins-out}
SEEDS=${SEEDS:-0-4}
GROUPS_=${*:-baselines classwise pick}
mkdir -p "$OUT"
run_cell() {  # name capability isa threads
  ATEN_CPU_CAPABILITY=$2 ONEDNN_MAX_CPU_ISA=$3 OMP_NUM_THREADS=$4 \
    "$PY" benchmarks/margins.py measure $GROUPS_ --seeds "$SEEDS" --cache "$OUT/cache-$1" >> "$OUT/margins-$1.jsonl"
}
run_cell plain-1t default SSE41 1 & run_cell avx2-sse41-1t avx2 SSE41 1 & wait
run_cell plain-2t default SSE41 2
run_cell avx2-2t avx2 AVX2 2
"$PY" benchmarks/margins.py summarize "$OUT"/margins-*.jsonl
