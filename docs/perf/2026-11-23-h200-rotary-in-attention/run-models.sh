#!/bin/bash
# Whole-model runs of this record, on the lent GPU machine from the repository root (output under $OUT).
# "build": bundles at --max-batch 1 (dense and 70% sparse), one bench round, GPU kernel tests and the
# random-SmolLM2 token check. "round N": another bench round of both bundles (machine still warm).
# "issue4": a --max-batch 32 dense bundle against Hugging Face at batch 1, 8 and 32.
set -u
mkdir -p /tmp/pkg && ln -sfn "$PWD" /tmp/pkg/fdpp
export PYTHONPATH=/tmp/pkg TRITON_DEFAULT_FP_FUSION=1
fdcc() { python3 -m fdpp.compiler.cli "$@"; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/gpu.txt"
python3 -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__)" >> "$OUT/gpu.txt"
common="llama2-7b --weights random -t h200 --softmax synchronized"
bench_round() {
  for b in dense s70; do
    fdcc bench /tmp/$b.fdpp --batch 1 --context 128 --new-tokens 256 --no-hf --out "$OUT/$b-$1" > "$OUT/bench-$b-$1.log" 2>&1
    tail -n 14 "$OUT/bench-$b-$1.log"
  done
}
if [ "$1" = round ]; then bench_round "$2"; exit 0; fi
if [ "$1" = sparse ]; then      # the 70% bundle alone (when "build" ran out of time), then round 1
  [ -f /tmp/dense.fdpp ] || fdcc compile $common --max-batch 1 -o /tmp/dense.fdpp > "$OUT/compile-dense.log" 2>&1 &
  fdcc compile $common --max-batch 1 --sparsity 0.7 --prune magnitude -o /tmp/s70.fdpp > "$OUT/compile-s70.log" 2>&1
  wait; tail -n 2 "$OUT"/compile-*.log; bench_round 1; exit 0
fi
if [ "$1" = issue4 ]; then
  fdcc compile $common --max-batch 32 -o /tmp/b32.fdpp > "$OUT/compile-b32.log" 2>&1
  fdcc bench /tmp/b32.fdpp --batch 1 --batch 8 --batch 32 --context 128 --new-tokens 256 --out "$OUT/b32" > "$OUT/bench-b32.log" 2>&1
  tail -n 30 "$OUT/bench-b32.log"
  exit 0
fi
fdcc compile $common --max-batch 1 -o /tmp/dense.fdpp > "$OUT/compile-dense.log" 2>&1 &
fdcc compile $common --max-batch 1 --sparsity 0.7 --prune magnitude -o /tmp/s70.fdpp > "$OUT/compile-s70.log" 2>&1 &
fdcc compile smollm2-135m --weights random -t h200 -o /tmp/smol.fdpp > "$OUT/compile-smol.log" 2>&1
python3 scripts/gpu_model_check.py /tmp/smol.fdpp > "$OUT/smol-check.log" 2>&1
python3 -m pytest -q -p no:cacheprovider tests/test_kernels_attention.py tests/test_kernels_linear.py \
  tests/test_kernels_elementwise.py tests/test_kernels_sparse_linear.py > "$OUT/tests.log" 2>&1
wait
tail -n 3 "$OUT/tests.log"; cat "$OUT/smol-check.log"; tail -n 4 "$OUT"/compile-*.log
bench_round 1
