#!/bin/bash
# Runs of docs/perf/2026-12-06-h100.md, on a lent H100 from the repository root (output under $OUT).
# "build": the dense and 70% llama2-7b bundles at --max-batch 1 for h100 (compiling in the background),
# meanwhile the decode-floor dissection, the decode attention table and the chunked-CSR kernel table; then
# one bench round of both bundles. "round N": another round (machine still warm, bundles in /tmp);
# "round N hf" also times Hugging Face generate (eager and static cache) beside the dense bundle.
# "batches": a dense bundle at --max-batch 32, benched at batch 1, 8 and 32 against Hugging Face.
set -u
mkdir -p /tmp/pkg && ln -sfn "$PWD" /tmp/pkg/fdpp
export PYTHONPATH=/tmp/pkg TRITON_DEFAULT_FP_FUSION=1 PYTHONUNBUFFERED=1
fdcc() { python3 -m fdpp.compiler.cli "$@"; }
bench_round() {
  for b in dense s70; do
    hf=--no-hf; [ "$b" = dense ] && [ "${2:-}" = hf ] && hf=--hf
    fdcc bench /tmp/$b.fdpp --batch 1 --context 128 --new-tokens 256 $hf --out "$OUT/$b-$1" > "$OUT/bench-$b-$1.log" 2>&1
    tail -n 14 "$OUT/bench-$b-$1.log"
  done
}
if [ "$1" = round ]; then bench_round "$2" "${3:-}"; exit 0; fi
if [ "$1" = batches ]; then
  fdcc compile llama2-7b --weights random -t h100 --softmax synchronized --max-batch 32 -o /tmp/dense32.fdpp \
    > "$OUT/compile-dense32.log" 2>&1 && tail -n 1 "$OUT/compile-dense32.log"
  fdcc bench /tmp/dense32.fdpp --batch 1 --batch 8 --batch 32 --context 128 --new-tokens 256 --out "$OUT/dense32" \
    > "$OUT/bench-dense32.log" 2>&1
  tail -n 16 "$OUT/bench-dense32.log"; exit 0
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/gpu.txt"
python3 -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__)" >> "$OUT/gpu.txt"
common="llama2-7b --weights random -t h100 --softmax synchronized --max-batch 1"
fdcc compile $common -o /tmp/dense.fdpp > "$OUT/compile-dense.log" 2>&1 &
fdcc compile $common --sparsity 0.7 --prune magnitude -o /tmp/s70.fdpp > "$OUT/compile-s70.log" 2>&1 &
python3 scripts/dissect_decode_floor.py --out "$OUT/dissect" > "$OUT/dissect.log" 2>&1
python3 scripts/bench_attention.py --out "$OUT/attention" --batches 1 8 32 --lengths 1024 4096 16384 32768 \
  --adversarial 8x1,8x7,8x97,8x4097 > "$OUT/attention.log" 2>&1
python3 scripts/bench_chunked_csr.py --out "$OUT/ccsr" --default-only --sparsities 0.7 --ms 1,2,4,8 > "$OUT/ccsr.log" 2>&1
grep -E "^\| (mha|gqa)" "$OUT/attention.log" | cut -c1-150; cat "$OUT/ccsr.log" | tail -n 25
wait
tail -n 2 "$OUT"/compile-*.log
bench_round 1
