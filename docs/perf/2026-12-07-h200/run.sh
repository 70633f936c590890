#!/bin/bash
# Prepared for docs/perf/2026-12-07-h200.md and not run: the session's device time ran out (asks got no machine).
# From the repository root (output under $OUT), in order:
# - with the Gluon cubins carried (out/gluon_ccsr, built here by `python3 scripts/exp_gluon_ccsr.py build
#   out/gluon_ccsr`), docs/perf/2026-12-07-gluon-ccsr.md's run 5 (not run yet);
# - a sweep of the chunked-CSR kernel at M = 1 (the 70% bundle's decode);
# - a dense llama2-7b bundle at --max-batch 32 for the GPU lent, benched at batch 1, 8 and 32 beside Hugging Face
#   generate (eager and static cache; issue 4). ATTENTION=1 also runs the decode attention table (issue 5's
#   shapes) while the bundle compiles.
# The batch-1 bundles of the same record ran through docs/perf/2026-12-07-gluon-ccsr/run.sh.
set -u
mkdir -p /tmp/pkg && ln -sfn "$PWD" /tmp/pkg/fdpp
export PYTHONPATH=/tmp/pkg TRITON_DEFAULT_FP_FUSION=1 PYTHONUNBUFFERED=1
fdcc() { python3 -m fdpp.compiler.cli "$@"; }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/gpu.txt"
python3 -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__)" >> "$OUT/gpu.txt"
TARGET=h100; grep -q H200 "$OUT/gpu.txt" && TARGET=h200     # the bundle is built for the GPU lent
if [ -f out/gluon_ccsr/constexprs.json ]; then
  timeout 100 python3 scripts/exp_gluon_ccsr.py check out/gluon_ccsr > "$OUT/gluon_check.log" 2>&1; tail -n 20 "$OUT/gluon_check.log"
fi
# the chunked-CSR kernel at M = 1 (the 70% bundle's decode), swept: does it need more bytes in flight on an H200?
timeout 200 python3 scripts/bench_chunked_csr.py --out "$OUT/ccsr_m1" --ms 1 --sparsities 0.7 --block-n 2,4,8 \
  --chunks 8,16,32 --split-k 1 --vectors 8 --num-warps 4,8 --x-interleaved > "$OUT/ccsr_m1.log" 2>&1
tail -n 12 "$OUT/ccsr_m1.log"
fdcc compile llama2-7b --weights random -t "$TARGET" --softmax synchronized --max-batch 32 -o /tmp/dense32.fdpp \
  > "$OUT/compile-dense32.log" 2>&1 &
if [ "${ATTENTION:-0}" = 1 ]; then
  timeout 170 python3 scripts/bench_attention.py --out "$OUT/attention" --batches 1 8 32 --lengths 1024 4096 16384 \
    32768 --adversarial 8x1,8x7,8x97,8x4097 > "$OUT/attention.log" 2>&1
  grep -E "^\| (mha|gqa)" "$OUT/attention.log" | cut -c1-150
fi
wait
tail -n 1 "$OUT/compile-dense32.log"
fdcc bench /tmp/dense32.fdpp --batch 1 --batch 8 --batch 32 --context 128 --new-tokens 256 --out "$OUT/dense32" \
  > "$OUT/bench-dense32.log" 2>&1
tail -n 16 "$OUT/bench-dense32.log"
