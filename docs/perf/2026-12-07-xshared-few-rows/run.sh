#!/bin/bash
# The device calls behind docs/perf/2026-12-07-xshared-few-rows.md, from the repository root (output under $OUT).
# Needs what was built on the CPU machine and carried (out/ is git-ignored):
#   python3 scripts/gpu_xshared_check.py build out/xs1          # "kernels" (KERNELS_ONLY=1: no bundle check)
#   fdcc compile llama2-7b ... -t h100 -t h200 -o /tmp/x70-{target}.fdpp, then
#   python3 scripts/graft_bundle.py skeleton /tmp/x70-TARGET.fdpp out/skel/x70-TARGET.skeleton   # "whole"
# "kernels": chunked_csr_xshared at 1-8 rows against the L1 kernel and cuBLAS, and a mid-size bundle using it at
# 1-8 rows against the CPU reference executor (scripts/gpu_xshared_check.py).
# "whole": the dense and the 70% llama2-7b (--max-batch 1) compiled here by this machine's fdcc (Triton 3.6: the L1
# kernel), the 70% skeleton built on the CPU machine (Triton 3.9: the dataflow's xshared choices) grafted over the
# latter's weights, their logits compared, then one bench round of each. "round N": another round of the three.
set -u
mkdir -p /tmp/pkg && ln -sfn "$PWD" /tmp/pkg/fdpp
export PYTHONPATH=/tmp/pkg TRITON_DEFAULT_FP_FUSION=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader > "$OUT/gpu.txt"
python3 -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__)" \
  >> "$OUT/gpu.txt"
TARGET=h100; grep -q H200 "$OUT/gpu.txt" && TARGET=h200
bench() {  # bench <label> <bundle>
  python3 -m fdpp.compiler.cli bench "$2" --batch 1 --context 128 --new-tokens 256 --no-hf --out "$OUT/$1" \
    > "$OUT/bench-$1.log" 2>&1
  printf '%-10s ' "$1"; grep -E "^ +1 +128 " "$OUT/bench-$1.log" || tail -n 3 "$OUT/bench-$1.log"
}
case "$1" in
  kernels) cat "$OUT/gpu.txt"
           python3 scripts/gpu_xshared_check.py check out/xs1 2>&1 | tee "$OUT/xshared.log" | tail -n 70 ;;
  whole) cat "$OUT/gpu.txt"
         python3 -m fdpp.compiler.cli compile llama2-7b --weights random -t $TARGET --softmax synchronized \
           --max-batch 1 -o /tmp/dense.fdpp > "$OUT/compile-dense.log" 2>&1; tail -n 1 "$OUT/compile-dense.log"
         python3 -m fdpp.compiler.cli compile llama2-7b --weights random -t $TARGET --softmax synchronized \
           --max-batch 1 --sparsity 0.7 --prune magnitude -o /tmp/s70.fdpp > "$OUT/compile-s70.log" 2>&1
         tail -n 1 "$OUT/compile-s70.log"
         python3 scripts/graft_bundle.py graft out/skel/x70-$TARGET.skeleton /tmp/s70.fdpp /tmp/x70.fdpp \
           2>&1 | tee "$OUT/graft.log"
         python3 scripts/compare_bundles.py /tmp/s70.fdpp /tmp/x70.fdpp 2>&1 | tee "$OUT/compare.log"
         bash "$0" round 1 ;;
  round) for b in dense s70 x70; do bench "$b-$2" /tmp/$b.fdpp; done ;;
esac
