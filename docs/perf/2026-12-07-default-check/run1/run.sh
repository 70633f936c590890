#!/bin/bash
# Device calls behind docs/perf/2026-12-07-default-check.md, from the repository root.
# "check" (carrying out/xs7, built on the CPU machine with
#   CASES='gate_up_m[48]|o_m8_residual_w(8g2|16g4|8g4|16g2u2)|o_m4_residual_w|_m[48]_[a-z]+$|qkv_m8_plain_shared|_pf$'
#   python3 scripts/gpu_xshared_check.py build out/xs7):
#   1. scripts/gpu_xshared_check.py check out/xs7: the 4- and 8-row kernels as shipped (gate/up's paired sums at
#      8 rows the default), the 8-row variants, o_proj's 4-row variants, and the mid-size 70% bundle against the CPU reference executor;
#   2. the L1 chunked-CSR kernel (chunked_csr_linear) at its default configs, 70%, M 1-8, x interleaved, with and
#      without its entries bulk-prefetched into L2 first (--prefetch-l2 0,1); the xshared kernels' prefetch
#      variants ("pf") are among step 1's.
# "dense": `fdcc tune` of o_proj [4096, 4096] at M 1, 4 and 16 with the prefetch candidates (the shipped profile's other
#   entries kept) and the kernel table from it (scripts/bench_decode_linear.py); then dense llama2-7b --max-batch 1
#   compiled with the shipped profile and with a copy forcing the prefetch on every GEMV and flat GEMM entry
#   (scripts/force_prefetch_profile.py: the tune replays kernels back to back, so it cannot see the prefetch's
#   overlap with the kernel before, which dependent launch gives), benched alternately, two rounds.
# "attention": decode attention at batch 1, KV 1K and 4K, both head shapes, with the config sweep widened to
#   shorter slices (32 and 64 keys) and 32-key tiles (scripts/bench_attention.py --sweep-min-keys/--sweep-block-n).
# "sparse" (either GPU; the H200 first, where the whole-model bar is open): `fdcc tune --sparsity 0.7 --sparse-only
#   --sparse-configs default` at one row (each shape's default config with and without the L2 prefetch; the
#   shipped profile's entries kept), then dense, 70% shipped and 70% with that profile's one-row configs forced to
#   prefetch (scripts/force_prefetch_profile.py --sparse) llama2-7b --max-batch 1, benched alternately, two rounds.
# "tune" (H200, a longer call): docs/perf/2026-12-07-ccsr-tune/run.sh main with one round (the whole chunked-CSR
#   grid at one row, now with the prefetch candidates; TUNE_S caps it).
# Everything is packed into $OUT/results.tgz (a call brings back at most 8 files).
set -u
mkdir -p /tmp/pkg && ln -sfn "$PWD" /tmp/pkg/fdpp
export PYTHONPATH=/tmp/pkg TRITON_DEFAULT_FP_FUSION=1 PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__)"
  git log -1 --format=%h 2>/dev/null
} > "$OUT/gpu.txt" 2>&1
cat "$OUT/gpu.txt"
case "${1:-check}" in
  check)
    timeout "${XS_S:-200}" python3 scripts/gpu_xshared_check.py check out/xs7 > "$OUT/xshared.log" 2>&1
    echo "xshared check exit $?"
    tail -n 80 "$OUT/xshared.log"
    [ "${CCSR_S:-240}" -gt 0 ] && timeout "${CCSR_S:-240}" python3 scripts/bench_chunked_csr.py --out "$OUT/ccsr" --default-only --x-interleaved \
      --prefetch-l2 0,1 --sparsities 0.7 --ms 1,2,4,8 > "$OUT/ccsr.log" 2>&1
    echo "ccsr exit $?"; tail -n 34 "$OUT/ccsr.log" ;;
  dense)
    TARGET=h100; grep -q H200 "$OUT/gpu.txt" && TARGET=h200
    fdcc() { python3 -m fdpp.compiler.cli "$@"; }
    COMMON=(llama2-7b --weights random -t "$TARGET" --softmax synchronized --max-batch 1)
    fdcc compile "${COMMON[@]}" -o /tmp/dense-shipped.fdpp > "$OUT/compile-shipped.log" 2>&1 &
    timeout "${TUNE_S:-240}" python3 -m fdpp.compiler.cli tune -t "$TARGET" --shape 4096:4096 --rows 1 --rows 4 \
      --rows 16 --base "compiler/profiles/$TARGET.json" -o "$OUT/profile-o.json" > "$OUT/tune-o.log" 2>&1
    echo "tune exit $?"; tail -n 6 "$OUT/tune-o.log"
    python3 scripts/bench_decode_linear.py --profile "$OUT/profile-o.json" --out "$OUT/decode-linear" 2>&1 | tail -n 24
    python3 scripts/force_prefetch_profile.py "compiler/profiles/$TARGET.json" "$OUT/profile-forced.json" --dense
    fdcc compile "${COMMON[@]}" --profile "$OUT/profile-forced.json" -o /tmp/dense-prefetch.fdpp \
      > "$OUT/compile-prefetch.log" 2>&1
    wait; tail -n 1 "$OUT"/compile-*.log
    for r in 1 2; do for b in shipped prefetch; do
      fdcc bench /tmp/dense-$b.fdpp --batch 1 --context 128 --new-tokens 256 --no-hf --out "$OUT/bench-$b-$r" \
        > "$OUT/bench-$b-$r.log" 2>&1
      printf '%-10s %s ' "$b" "$r"; grep -E "^ +1 +128 " "$OUT/bench-$b-$r.log" || tail -n 3 "$OUT/bench-$b-$r.log"
    done; done
    grep -h -i "o 4096x4096\|4096x4096" "$OUT"/bench-*-2.log | head -n 4 ;;
  attention)
    timeout "${ATT_S:-200}" python3 scripts/bench_attention.py --out "$OUT/attention" --batches 1 --lengths 1024 4096 \
      --sweep-block-n 32 64 128 --sweep-min-keys 32 64 128 --adversarial "" > "$OUT/attention.log" 2>&1
    echo "attention exit $?"; tail -n 8 "$OUT/attention.log" ;;
  sparse)
    TARGET=h100; grep -q H200 "$OUT/gpu.txt" && TARGET=h200
    fdcc() { python3 -m fdpp.compiler.cli "$@"; }
    COMMON=(llama2-7b --weights random -t "$TARGET" --softmax synchronized --max-batch 1)
    SPARSE=(--sparsity 0.7 --prune magnitude)
    fdcc compile "${COMMON[@]}" -o /tmp/dense.fdpp > "$OUT/compile-dense.log" 2>&1 &
    fdcc compile "${COMMON[@]}" "${SPARSE[@]}" -o /tmp/s70-shipped.fdpp > "$OUT/compile-s70-shipped.log" 2>&1 &
    timeout "${TUNE_S:-200}" python3 -m fdpp.compiler.cli tune -t "$TARGET" --shape 12288:4096 --shape 4096:4096 \
      --shape 22016:4096:gated --shape 4096:11008 --rows 1 --sparsity 0.7 --sparse-only --sparse-configs default \
      --base "compiler/profiles/$TARGET.json" -o "$OUT/profile-s70.json" > "$OUT/tune-s70.log" 2>&1
    echo "tune exit $?"; grep -E "chunked CSR|wrote" "$OUT/tune-s70.log"
    python3 scripts/force_prefetch_profile.py "$OUT/profile-s70.json" "$OUT/profile-s70-forced.json" --sparse
    fdcc compile "${COMMON[@]}" "${SPARSE[@]}" --profile "$OUT/profile-s70-forced.json" -o /tmp/s70-prefetch.fdpp \
      > "$OUT/compile-s70-prefetch.log" 2>&1
    wait; tail -n 1 "$OUT"/compile-*.log
    for r in 1 2; do for b in dense s70-shipped s70-prefetch; do
      fdcc bench /tmp/$b.fdpp --batch 1 --context 128 --new-tokens 256 --no-hf --out "$OUT/bench-$b-$r" \
        > "$OUT/bench-$b-$r.log" 2>&1
      printf '%-13s %s ' "$b" "$r"; grep -E "^ +1 +128 " "$OUT/bench-$b-$r.log" || tail -n 3 "$OUT/bench-$b-$r.log"
    done; done ;;
  tune)
    ROUNDS=1 TUNE_S="${TUNE_S:-240}" bash docs/perf/2026-12-07-ccsr-tune/run.sh main ;;
esac
(cd "$OUT" && tar czf results.tgz --remove-files $(ls | grep -v -x -e summary.log -e results.tgz)) 2>/dev/null
ls "$OUT"
