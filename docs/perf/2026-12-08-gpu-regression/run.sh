#!/bin/bash
# Device calls behind docs/perf/2026-12-08-gpu-regression.md, from the repository root (output under $OUT).
# "first": on an H200, "sparse" (issue 6's whole-model bar, docs/perf/2026-12-08-wide-grid/run.sh sparse) then
#   "tests"; on an H100, "tests" then "bundles". Each part under its own timeout; everything packed into one file.
# "tests": every kernel test file on the GPU (JIT through the GPU machine's Triton, against float64/torch references).
# "bundles": end-to-end GPU correctness at this commit: scripts/gpu_sparse_check.py (a mid-size Llama stored dense,
#   as each sparse format, and dense on spread flat-GEMM grids, against the CPU reference executor, eager and CUDA
#   graphs), scripts/gpu_xshared_check.py check out/xs-reg (the chunked_csr_xshared kernels as bundles build them,
#   and a bundle using them, all built on the CPU machine with Triton 3.9; carry out/xs-reg), and
#   scripts/gpu_model_check.py on a random SmolLM2-shaped bundle compiled there.
# "second" (call 2, after call 1's bundles part ran out of time and took the xshared check's bundle out): on an H200
#   "sparse" then "xshared" and "smol"; on an H100 those two alone.
# "early" (call 3; carry out/xs-early): on an H200 "sparse" first; then the xshared kernels at 4 and 8 rows, each
#   shape's default beside the same config asking L2 for each row's first 4, 8, 16 or 32 chunks before x's copy
#   (config "early"), two rounds of the kernel table (KERNELS_ONLY). out/xs-early is built on the CPU machine with
#   CASES='_m[48]_[a-z]+(_e[0-9]+)?$' KERNELS_ONLY=1 python3 scripts/gpu_xshared_check.py build out/xs-early
# The CPU machine builds out/xs-reg first:
#   CASES='_m[1248]_[a-z]+(_bias|_direct)?$' python3 scripts/gpu_xshared_check.py build out/xs-reg
set -u
HERE=docs/perf/2026-12-08-gpu-regression
mkdir -p /tmp/pkg && ln -sfn "$PWD" /tmp/pkg/fdpp
export PYTHONPATH=/tmp/pkg TRITON_DEFAULT_FP_FUSION=1 PYTHONUNBUFFERED=1
gpu_txt() {
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__)"
}
case "${1:-first}" in
  first)
    B=$OUT; gpu_txt > "$B/gpu.txt" 2>&1; cat "$B/gpu.txt"
    if grep -q H200 "$B/gpu.txt"; then
      mkdir -p "$B/sparse"; OUT=$B/sparse timeout "${SPARSE_S:-330}" bash docs/perf/2026-12-08-wide-grid/run.sh sparse
      mkdir -p "$B/tests"; OUT=$B/tests timeout "${TESTS_S:-200}" bash "$0" tests
    else
      mkdir -p "$B/tests"; OUT=$B/tests timeout "${TESTS_S:-300}" bash "$0" tests
      mkdir -p "$B/bundles"; OUT=$B/bundles timeout "${BUNDLES_S:-240}" bash "$0" bundles
    fi
    cd "$B" && tar czf all.tgz --remove-files $(ls -d */) && ls ;;
  second)
    B=$OUT; gpu_txt > "$B/gpu.txt" 2>&1; cat "$B/gpu.txt"
    if grep -q H200 "$B/gpu.txt"; then
      mkdir -p "$B/sparse"; OUT=$B/sparse timeout "${SPARSE_S:-330}" bash docs/perf/2026-12-08-wide-grid/run.sh sparse
    fi
    mkdir -p "$B/bundles"; OUT=$B/bundles timeout "${BUNDLES_S:-240}" bash "$0" xshared
    OUT=$B/bundles timeout "${SMOL_S:-200}" bash "$0" smol
    cd "$B" && tar czf all.tgz --remove-files $(ls -d */) && ls ;;
  early)
    B=$OUT; gpu_txt > "$B/gpu.txt" 2>&1; cat "$B/gpu.txt"
    if grep -q H200 "$B/gpu.txt"; then
      mkdir -p "$B/sparse"; OUT=$B/sparse timeout "${SPARSE_S:-330}" bash docs/perf/2026-12-08-wide-grid/run.sh sparse
    fi
    mkdir -p "$B/early"
    for r in $(seq 1 "${ROUNDS:-2}"); do
      KERNELS_ONLY=1 timeout "${EARLY_S:-200}" python3 scripts/gpu_xshared_check.py check out/xs-early \
        > "$B/early/round$r.log" 2>&1
      echo "round $r exit $?"; grep -E "^\| (o|down|qkv|gate_up) " "$B/early/round$r.log" | cut -d'|' -f2-4
    done
    cd "$B" && tar czf all.tgz --remove-files $(ls -d */) && ls ;;
  tests)
    python3 -m pytest -q -p no:cacheprovider tests/test_kernels_attention.py tests/test_kernels_linear.py \
      tests/test_kernels_elementwise.py tests/test_kernels_sparse_linear.py tests/test_kernels_sampling.py \
      tests/test_kernels_unified_softmax.py > "$OUT/tests.log" 2>&1
    echo "tests exit $?"; tail -n 3 "$OUT/tests.log" ;;
  bundles)
    python3 scripts/gpu_sparse_check.py --workdir /tmp/sparse-check > "$OUT/sparse-check.log" 2>&1
    echo "sparse check exit $?"; tail -n 12 "$OUT/sparse-check.log"
    bash "$0" xshared; bash "$0" smol ;;
  xshared)  # KERNELS_ONLY=1 in the environment: the kernel table alone, without the bundle
    python3 scripts/gpu_xshared_check.py check out/xs-reg > "$OUT/xshared.log" 2>&1
    echo "xshared check exit $?"; grep -E "^bundle|PASS|FAIL" "$OUT/xshared.log" ;;
  smol)
    python3 -m fdpp.compiler.cli compile smollm2-135m --weights random -t h100 -o /tmp/smol.fdpp \
      > "$OUT/compile-smol.log" 2>&1; tail -n 1 "$OUT/compile-smol.log"
    python3 scripts/gpu_model_check.py /tmp/smol.fdpp > "$OUT/smol-check.log" 2>&1
    echo "model check exit $?"; cat "$OUT/smol-check.log" ;;
esac
