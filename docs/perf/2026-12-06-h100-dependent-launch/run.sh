#!/bin/bash
# Re-runs docs/perf/2026-12-06-h100-dependent-launch.md on a lent H100, from the repository root (output under
# $OUT). The recorded runs used this script as of commit b8118b9 (`git show b8118b9:<this file>`), which also
# built a variant with an L2 weight prefetch before the grid-dependency wait; the prefetch lost and is gone.
# "check": the GPU correctness check of dependent-launch bundles (scripts/gpu_sparse_check.py: dense and the
# three sparse formats, eager and CUDA graphs, against the CPU reference executor).
# "build": the dense llama2-7b bundle for h100 at --max-batch 1, then round 1.
# "round N": the bundle benched with dependent launch, then with FDPP_DEPENDENT_LAUNCH=0 (ordinary launches).
# "sparse": the 70% magnitude-pruned llama2-7b (chunked CSR at --max-batch 1) built for TARGET, then
# "sparse-round 1"; "sparse-round N" benches it as "round N" does the dense bundle.
# TARGET=h200 builds for the H200 instead.
set -u
TARGET=${TARGET:-h100}
mkdir -p /tmp/pkg && ln -sfn "$PWD" /tmp/pkg/fdpp
export PYTHONPATH=/tmp/pkg TRITON_DEFAULT_FP_FUSION=1 PYTHONUNBUFFERED=1
bench() {  # bench <label> <FDPP_DEPENDENT_LAUNCH> [bundle]
  FDPP_DEPENDENT_LAUNCH=$2 python3 -m fdpp.compiler.cli bench "${3:-/tmp/dense.fdpp}" --batch 1 --context 128 \
    --new-tokens 256 --no-hf --out "$OUT/$1" > "$OUT/bench-$1.log" 2>&1
  printf '%-12s ' "$1"; grep -E "^ +1 +128 " "$OUT/bench-$1.log" || tail -n 3 "$OUT/bench-$1.log"
}
case "$1" in
  round) bench "dependent-$2" 1; bench "ordinary-$2" 0 ;;
  sparse-round) bench "s70-dependent-$2" 1 /tmp/s70.fdpp; bench "s70-ordinary-$2" 0 /tmp/s70.fdpp ;;
  sparse) python3 -m fdpp.compiler.cli compile llama2-7b --weights random -t "$TARGET" --softmax synchronized \
            --max-batch 1 --sparsity 0.7 --prune magnitude -o /tmp/s70.fdpp > "$OUT/compile-s70.log" 2>&1
          tail -n 1 "$OUT/compile-s70.log"; bash "$0" sparse-round 1 ;;
  check) python3 scripts/gpu_sparse_check.py --workdir /tmp/sparse-check > "$OUT/sparse-check.log" 2>&1
         tail -n 5 "$OUT/sparse-check.log" ;;
  build) nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/gpu.txt"
         python3 -c "import torch, triton, transformers; print(torch.__version__, triton.__version__,
transformers.__version__)" >> "$OUT/gpu.txt"
         python3 -m fdpp.compiler.cli compile llama2-7b --weights random -t "$TARGET" --softmax synchronized --max-batch 1 \
           -o /tmp/dense.fdpp > "$OUT/compile.log" 2>&1; tail -n 1 "$OUT/compile.log"
         bash "$0" round 1 ;;
esac
