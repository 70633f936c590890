#!/bin/bash
# Runs of docs/perf/2026-12-06-h100-dependent-launch.md, on a lent H100 from the repository root (output under
# $OUT). "check": the GPU correctness check of dependent-launch bundles (scripts/gpu_sparse_check.py: dense and
# the three sparse formats, eager and CUDA graphs, against the CPU reference executor). "build": two dense
# llama2-7b bundles for h100 at --max-batch 1 that differ only in the dense linears' L2 weight prefetch
# before the grid-dependency wait (8 MiB, the default, and 0), one after the other (the 64 GB disk holds two).
# "round N": each bundle benched once, the default one also with FDPP_DEPENDENT_LAUNCH=0 (ordinary launches).
set -u
mkdir -p /tmp/pkg && ln -sfn "$PWD" /tmp/pkg/fdpp
export PYTHONPATH=/tmp/pkg TRITON_DEFAULT_FP_FUSION=1 PYTHONUNBUFFERED=1
common="llama2-7b --weights random -t h100 --softmax synchronized --max-batch 1"
# a bundle whose dense linears prefetch $1 MiB (the module constant replaced before the CLI runs)
variant() {
  python3 -c "import sys; import fdpp.codegen.launch_specs as s; s.WEIGHT_PREFETCH_BYTES = int(sys.argv.pop(1)) << 20
from fdpp.compiler.cli import main; main()" "$1" compile $common -o "/tmp/p$1.fdpp"
}
bench() {  # bench <bundle name> <label> [env...]
  env "${@:3}" python3 -m fdpp.compiler.cli bench "/tmp/$1.fdpp" --batch 1 --context 128 --new-tokens 256 --no-hf \
    --out "$OUT/$2" > "$OUT/bench-$2.log" 2>&1
  printf '%-14s ' "$2"; grep -E "^ +1 +128 " "$OUT/bench-$2.log" || tail -n 3 "$OUT/bench-$2.log"
}
if [ "$1" = round ]; then
  bench p8 "p8-pdl-$2"; bench p8 "p8-plain-$2" FDPP_DEPENDENT_LAUNCH=0; bench p0 "p0-pdl-$2"
  bench p0 "p0-plain-$2" FDPP_DEPENDENT_LAUNCH=0
  exit 0
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/gpu.txt"
python3 -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__)" >> "$OUT/gpu.txt"
if [ "$1" = check ]; then
  python3 scripts/gpu_sparse_check.py --workdir /tmp/sparse-check > "$OUT/sparse-check.log" 2>&1
  tail -n 5 "$OUT/sparse-check.log"; exit 0
fi
for p in 8 0; do variant $p > "$OUT/compile-p$p.log" 2>&1; tail -n 1 "$OUT/compile-p$p.log"; done
bash "$0" round 1
ls -la /tmp/*.fdpp; df -h /tmp | tail -n 1
