#!/bin/bash
# Runs of docs/perf/2026-11-23-h200-evict-first.md, on the lent GPU machine from the repository root
# (output under $OUT). "build": the 70% llama2-7b bundle and the dense one at --max-batch 1 (compiling in the
# background), meanwhile the GPU sparse kernel tests, the sparse-bundle check and the chunked-CSR kernel
# table at the wrapper's defaults; then one bench round of both bundles. "round N": another round (machine
# still warm, bundles in /tmp).
set -u
mkdir -p /tmp/pkg && ln -sfn "$PWD" /tmp/pkg/fdpp
export PYTHONPATH=/tmp/pkg TRITON_DEFAULT_FP_FUSION=1
fdcc() { python3 -m fdpp.compiler.cli "$@"; }
bench_round() {
  for b in dense s70; do
    fdcc bench /tmp/$b.fdpp --batch 1 --context 128 --new-tokens 256 --no-hf --out "$OUT/$b-$1" > "$OUT/bench-$b-$1.log" 2>&1
    tail -n 14 "$OUT/bench-$b-$1.log"
  done
}
if [ "$1" = round ]; then bench_round "$2"; exit 0; fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/gpu.txt"
python3 -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__)" >> "$OUT/gpu.txt"
common="llama2-7b --weights random -t h200 --softmax synchronized --max-batch 1"
fdcc compile $common -o /tmp/dense.fdpp > "$OUT/compile-dense.log" 2>&1 &
fdcc compile $common --sparsity 0.7 --prune magnitude -o /tmp/s70.fdpp > "$OUT/compile-s70.log" 2>&1 &
python3 -m pytest -q -p no:cacheprovider tests/test_kernels_sparse_linear.py > "$OUT/tests.log" 2>&1
python3 scripts/gpu_sparse_check.py --workdir /tmp/sparse-check > "$OUT/sparse-check.log" 2>&1
python3 scripts/bench_chunked_csr.py --out "$OUT/ccsr" --default-only --sparsities 0.7 --ms 1,2,4,8 > "$OUT/ccsr.log" 2>&1
tail -n 2 "$OUT/tests.log"; tail -n 12 "$OUT/sparse-check.log"; cat "$OUT/ccsr.log"
wait
tail -n 2 "$OUT"/compile-*.log
bench_round 1
