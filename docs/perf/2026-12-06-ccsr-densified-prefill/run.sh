#!/bin/bash
# Re-runs docs/perf/2026-12-06-ccsr-densified-prefill.md on a lent GPU, from the repository root (output under $OUT).
# "kernel": the GPU check of chunked-CSR bundles (scripts/gpu_sparse_check.py, decode buckets up to 8 and a prefill
#   through chunked_csr_gemm), then exp_densified_prefill.py (chunked_csr_gemv and chunked_csr_gemm against cuBLAS at
#   16-512 rows) and exp_fp32_x.py (the kernel at M 2-8 gathering float16 or float32 x; with ccsr_before.py beside
#   it, a copy of the kernel module at 117de3c, that one too).
# "prefill": the 70% magnitude-pruned llama2-7b, chunked CSR, --max-batch 4, for TARGET (default h100), benched at
#   contexts 128 and 1024, batch 1 and 4; "prefill-dense": the same for the dense --max-batch 4 bundle.
set -u
TARGET=${TARGET:-h100}
HERE=docs/perf/2026-12-06-ccsr-densified-prefill
mkdir -p /tmp/pkg && ln -sfn "$PWD" /tmp/pkg/fdpp
export PYTHONPATH=/tmp/pkg TRITON_DEFAULT_FP_FUSION=1 PYTHONUNBUFFERED=1
prefill_bench() {  # prefill_bench <bundle name under /tmp>
  python3 -m fdpp.compiler.cli bench "/tmp/$1.fdpp" --batch 1 --batch 4 --context 128 --context 1024 \
    --new-tokens 32 --no-hf --out "$OUT/$1" > "$OUT/bench-$1.log" 2>&1
  grep -E "^ +[14] +(128|1024) " "$OUT/bench-$1.log" | sed "s/^/$1 /" || tail -n 3 "$OUT/bench-$1.log"
  rm -f "$OUT/$1/bench.png"
}
case "$1" in
  kernel) nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$OUT/gpu.txt"
          python3 -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__)" \
            >> "$OUT/gpu.txt"; cat "$OUT/gpu.txt"
          python3 scripts/gpu_sparse_check.py --workdir /tmp/sparse-check --storage chunked_csr > "$OUT/check.log" 2>&1
          tail -n 2 "$OUT/check.log"
          python3 $HERE/exp_densified_prefill.py 2>&1 | tee "$OUT/prefill-kernel.log"
          python3 $HERE/exp_fp32_x.py $([ -f $HERE/ccsr_before.py ] && echo --before $HERE/ccsr_before.py) 2>&1 | tee "$OUT/fp32-x.log" ;;
  prefill) python3 -m fdpp.compiler.cli compile llama2-7b --weights random -t "$TARGET" --softmax synchronized --max-batch 4 \
             --sparsity 0.7 --prune magnitude --sparse-format chunked_csr -o /tmp/s70-gemm.fdpp > "$OUT/compile-s70.log" 2>&1
           tail -n 1 "$OUT/compile-s70.log"; grep -c chunked_csr_gemm "$OUT/compile-s70.log"; prefill_bench s70-gemm ;;
  prefill-dense) python3 -m fdpp.compiler.cli compile llama2-7b --weights random -t "$TARGET" --softmax synchronized \
                   --max-batch 4 -o /tmp/dense4.fdpp > "$OUT/compile-dense4.log" 2>&1; tail -n 1 "$OUT/compile-dense4.log"
                 prefill_bench dense4 ;;
esac
