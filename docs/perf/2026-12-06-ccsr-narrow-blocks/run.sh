#!/bin/bash
# From the repository root on a lent GPU, output under $OUT.
# "sweep": the chunked-CSR kernel at M = 2 and 4, 70% sparsity, Llama-2-7B's four shapes, with 2 weight rows
#   a program (the M = 1 default for weights of <= 8192 rows) beside the default 4, chunks 4/8, split-K 1/2.
# "sweep2": o and qkv at M = 2 and 4 over entries a thread (4, 8), warps (2, 4, 8) and chunks a step (8, 16).
# "compile": the 70% llama2-7b compile (magnitude, --max-batch 1, chunked CSR) timed for TARGET, stage by stage.
set -u
TARGET=${TARGET:-h100}
mkdir -p /tmp/pkg && ln -sfn "$PWD" /tmp/pkg/fdpp
export PYTHONPATH=/tmp/pkg TRITON_DEFAULT_FP_FUSION=1 PYTHONUNBUFFERED=1
case "$1" in
  sweep) nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/gpu.txt"
         python3 -c "import torch, triton; print(torch.__version__, triton.__version__)" >> "$OUT/gpu.txt"
         python3 scripts/bench_chunked_csr.py --out "$OUT/sweep" --ms 2,4 --sparsities 0.7 --block-n 2,4 \
           --chunks 4,8 --split-k 1,2 --vectors 8 > "$OUT/sweep.log" 2>&1; tail -n 9 "$OUT/sweep.log" ;;
  sweep2) python3 scripts/bench_chunked_csr.py --out "$OUT/sweep2" --ms 2,4 --sparsities 0.7 --shapes o,qkv \
            --block-n 2,4 --chunks 8,16 --split-k 1 --vectors 4,8 --num-warps 2,4,8 > "$OUT/sweep2.log" 2>&1
          tail -n 5 "$OUT/sweep2.log" ;;
  compile) python3 -m fdpp.compiler.cli compile llama2-7b --weights random -t "$TARGET" --softmax synchronized \
             --max-batch 1 --sparsity 0.7 --prune magnitude -o /tmp/s70.fdpp 2>&1 \
             | while IFS= read -r line; do echo "$(date +%s) $line"; done > "$OUT/compile-s70.log"
           grep -E "\[[0-9]/5\]|pass (prune|select|encode)|done:" "$OUT/compile-s70.log" ;;
esac
