#!/bin/bash
# Issue 5 re-measured after the rotary and divisibility-hint commits, on the lent GPU machine from the
# repository root (output under $OUT). "build": the batch-1 decode attention kernel table (JIT) while
# llama2-7b compiles with unified-max and with synchronized attention for KV 4K. "round N": one bench round
# of both bundles at context 4096, batch 1 and 8 (machine still warm, bundles in /tmp).
set -u
mkdir -p /tmp/pkg && ln -sfn "$PWD" /tmp/pkg/fdpp
export PYTHONPATH=/tmp/pkg TRITON_DEFAULT_FP_FUSION=1
fdcc() { python3 -m fdpp.compiler.cli "$@"; }
if [ "$1" = round ]; then
  for b in l7u l7s; do
    fdcc bench /tmp/$b.fdpp --batch 1 --batch 8 --context 4096 --new-tokens 64 --no-hf --out "$OUT/$b-$2" \
      > "$OUT/bench-$b-$2.log" 2>&1
    grep -E "^ +(1|8) +4096|attention" "$OUT/bench-$b-$2.log"
  done
  exit 0
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/gpu.txt"
python3 -c "import torch, triton; print(torch.__version__, triton.__version__)" >> "$OUT/gpu.txt"
common="llama2-7b --weights random -t h200 --max-batch 8 --max-seq-len 4224"
fdcc compile $common --calibration-tokens 256 -o /tmp/l7u.fdpp > "$OUT/compile-unified.log" 2>&1 &
fdcc compile $common --softmax synchronized -o /tmp/l7s.fdpp > "$OUT/compile-synchronized.log" 2>&1 &
python3 scripts/bench_attention.py --out "$OUT/attention" --batches 1 --lengths 1024 4096 16384 \
  --adversarial 8x97,8x4097 > "$OUT/attention.log" 2>&1
wait
tail -n 1 "$OUT"/compile-*.log; cat "$OUT/attention.log"
