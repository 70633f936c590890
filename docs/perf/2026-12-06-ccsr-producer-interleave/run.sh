#!/bin/bash
# Re-runs docs/perf/2026-12-06-ccsr-producer-interleave.md on a lent GPU, from the repository root (output under $OUT).
# "kernel": exp_interleave_cost.py (the linear with and without its interleave launch, the RMSNorm writing
#   row-major or interleaved), then the GPU check of a chunked-CSR bundle (scripts/gpu_sparse_check.py).
# "build": the 70% magnitude-pruned llama2-7b, chunked CSR, --max-batch 4, for TARGET (default h100), twice:
#   as compiled (x's producers write it interleaved) and with the interleave_sparse_inputs pass left out.
# "round N": both bundles benched at batch 1, 2 and 4 (context 128, 256 new tokens, dependent launch).
set -u
TARGET=${TARGET:-h100}
mkdir -p /tmp/pkg && ln -sfn "$PWD" /tmp/pkg/fdpp
export PYTHONPATH=/tmp/pkg TRITON_DEFAULT_FP_FUSION=1 PYTHONUNBUFFERED=1
COMPILE="compile llama2-7b --weights random -t $TARGET --softmax synchronized --max-batch 4 --sparsity 0.7 --prune magnitude --sparse-format chunked_csr"
bench() {  # bench <label> <bundle>
  python3 -m fdpp.compiler.cli bench "$2" --batch 1 --batch 2 --batch 4 --context 128 --new-tokens 256 --no-hf \
    --out "$OUT/$1" > "$OUT/bench-$1.log" 2>&1
  grep -E "^ +[124] +128 " "$OUT/bench-$1.log" | sed "s/^/$1 /" || tail -n 3 "$OUT/bench-$1.log"
}
case "$1" in
  kernel) nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/gpu.txt"
          python3 -c "import torch, triton, transformers; print(torch.__version__, triton.__version__,
transformers.__version__)" >> "$OUT/gpu.txt"; cat "$OUT/gpu.txt"
          python3 docs/perf/2026-12-06-ccsr-producer-interleave/exp_interleave_cost.py 2>&1 | tee "$OUT/kernel.log"
          python3 scripts/gpu_sparse_check.py --workdir /tmp/sparse-check --storage chunked_csr > "$OUT/sparse-check.log" 2>&1
          tail -n 3 "$OUT/sparse-check.log" ;;
  build) python3 -m fdpp.compiler.cli $COMPILE -o /tmp/s70-fused.fdpp > "$OUT/compile-fused.log" 2>&1
         tail -n 1 "$OUT/compile-fused.log"
         python3 -c "
import sys
import fdpp.passes.pipeline as pipeline
pipeline.PIPELINE[:] = [p for p in pipeline.PIPELINE if p[0] != 'interleave_sparse_inputs']
from fdpp.compiler.cli import main
sys.argv = ['fdcc'] + sys.argv[1:]
main()" $COMPILE -o /tmp/s70-separate.fdpp > "$OUT/compile-separate.log" 2>&1
         tail -n 1 "$OUT/compile-separate.log"; grep -c interleave_rows_kernel "$OUT/compile-fused.log" "$OUT/compile-separate.log" ;;
  round) bench "fused-$2" /tmp/s70-fused.fdpp; bench "separate-$2" /tmp/s70-separate.fdpp ;;
esac
