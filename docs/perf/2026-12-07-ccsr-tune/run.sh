#!/bin/bash
# Device calls behind docs/perf/2026-12-07-ccsr-tune.md, from the repository root (output under $OUT).
# "main": on the GPU lent (target h200 or h100), in one call:
#   - `fdcc tune --sparsity 0.7 --sparse-only` measures the chunked-CSR kernel's configs at one row for Llama-2-7B's
#     four pruned shapes and writes a profile (the shipped one's dense entries kept);
#   - meanwhile the CPU builds the dense llama2-7b bundle and the 70% one with the default configs;
#   - then the 70% bundle with the measured configs (`--profile`), and two rounds of the three benched at batch 1
#     (ROUNDS=1: one). LEAN=1 leaves out the 70% bundle with the default configs; TUNE_S caps the tune's seconds.
# "tune": the tune step alone. "round N": another round on the same warm machine. "batch32": the dense bundle at --max-batch 32, benched at
# batch 1, 8 and 32 beside Hugging Face generate (issue 4). "gluon": run 5 of docs/perf/2026-12-07-gluon-ccsr.md
# (needs out/gluon_ccsr carried, built by `python3 scripts/exp_gluon_ccsr.py build out/gluon_ccsr`).
# "shipped" (on an H100): a plain 70% compile, which takes compiler/profiles/h100.json's measured sparse configs,
# against one given the profile before them (h100-profile-before.json, default configs), and dense; two rounds.
# "auto": "main" on an H200; on an H100 (whose runs are in the record) nothing but the GPU's name, unless
#   H100_MODE=tune (the tune at rows 1 and 2 with "batch32" built meanwhile) or batch32 ("batch32" alone).
# TUNE_ROWS and TUNE_BASE (a profile to keep entries from; default the shipped one) change the tune step's row
# counts and base. "auto" and "shipped" pack the bench folders, compile logs and profile into $OUT/results.tgz at
# the end, because a call brings back at most 8 files.
set -u
mkdir -p /tmp/pkg && ln -sfn "$PWD" /tmp/pkg/fdpp
export PYTHONPATH=/tmp/pkg TRITON_DEFAULT_FP_FUSION=1 PYTHONUNBUFFERED=1
fdcc() { python3 -m fdpp.compiler.cli "$@"; }
TARGET=h100; nvidia-smi --query-gpu=name --format=csv,noheader | grep -q H200 && TARGET=h200
COMMON=(llama2-7b --weights random -t "$TARGET" --softmax synchronized)
bench() {  # bench <label> <bundle>
  fdcc bench "$2" --batch 1 --context 128 --new-tokens 256 --no-hf --out "$OUT/$1" > "$OUT/bench-$1.log" 2>&1
  printf '%-16s ' "$1"; grep -E "^ +1 +128 " "$OUT/bench-$1.log" || tail -n 3 "$OUT/bench-$1.log"
}
round() {
  bench "dense-$1" /tmp/dense.fdpp; [ -f /tmp/s70.fdpp ] && bench "s70-default-$1" /tmp/s70.fdpp
  bench "s70-tuned-$1" /tmp/s70t.fdpp
}
pack() { (cd "$OUT" && tar czf results.tgz --remove-files $(ls -d */ profile-*.json tune.log compile-*.log 2>/dev/null) 2>/dev/null); ls "$OUT"; }
case "$1" in
  auto)
    if grep -q H200 <(nvidia-smi --query-gpu=name --format=csv,noheader); then ROUNDS=1 bash "$0" main
    elif [ "${H100_MODE:-skip}" = skip ]; then nvidia-smi --query-gpu=name --format=csv,noheader
    elif [ "${H100_MODE}" = batch32 ]; then BENCH_S=420 bash "$0" batch32
    else
      fdcc compile "${COMMON[@]}" --max-batch 32 -o /tmp/dense32.fdpp > "$OUT/compile-dense32.log" 2>&1 &
      TUNE_ROWS="1 2" TUNE_S=330 bash "$0" tune; wait; BENCH_S=200 bash "$0" batch32
    fi; pack ;;
  main)
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/gpu.txt"
    python3 -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__)" \
      >> "$OUT/gpu.txt"; cat "$OUT/gpu.txt"
    fdcc compile "${COMMON[@]}" --max-batch 1 -o /tmp/dense.fdpp > "$OUT/compile-dense.log" 2>&1 &
    [ "${LEAN:-0}" = 1 ] || fdcc compile "${COMMON[@]}" --max-batch 1 --sparsity 0.7 --prune magnitude \
      -o /tmp/s70.fdpp > "$OUT/compile-s70.log" 2>&1 &
    bash "$0" tune
    wait; tail -n 1 "$OUT"/compile-*.log
    [ -f "$OUT/profile-s70.json" ] || exit 1
    cp "$OUT/profile-s70.json" /tmp/profile-s70.json   # TUNE_BASE for a next call on the warm machine (rows 2-8)
    fdcc compile "${COMMON[@]}" --max-batch 1 --sparsity 0.7 --prune magnitude --profile "$OUT/profile-s70.json" \
      -o /tmp/s70t.fdpp > "$OUT/compile-s70t.log" 2>&1; tail -n 1 "$OUT/compile-s70t.log"
    fdcc inspect /tmp/s70t.fdpp > "$OUT/inspect-s70t.txt" 2>&1
    round 1; [ "${ROUNDS:-2}" = 1 ] || round 2 ;;
  shipped)  # the shipped profile's sparse entries (a plain compile) against the profile before them, two rounds
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/gpu.txt"
    fdcc compile "${COMMON[@]}" --max-batch 1 -o /tmp/dense.fdpp > "$OUT/compile-dense.log" 2>&1 &
    fdcc compile "${COMMON[@]}" --max-batch 1 --sparsity 0.7 --prune magnitude \
      --profile docs/perf/2026-12-07-ccsr-tune/h100-profile-before.json -o /tmp/s70.fdpp > "$OUT/compile-s70.log" 2>&1 &
    fdcc compile "${COMMON[@]}" --max-batch 1 --sparsity 0.7 --prune magnitude -o /tmp/s70t.fdpp \
      > "$OUT/compile-s70t.log" 2>&1
    wait; tail -n 1 "$OUT"/compile-*.log
    fdcc inspect /tmp/s70t.fdpp | grep -i -E "profile|measured" | head -n 4
    round 1; round 2; pack ;;
  round) round "$2" ;;
  tune)
    [ -f "$OUT/gpu.txt" ] || nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/gpu.txt"
    timeout "${TUNE_S:-260}" python3 -m fdpp.compiler.cli tune -t "$TARGET" --shape 12288:4096 --shape 4096:4096 \
      --shape 22016:4096:gated --shape 4096:11008 $(printf -- '--rows %s ' ${TUNE_ROWS:-1}) --sparsity 0.7 --sparse-only \
      --base "${TUNE_BASE:-compiler/profiles/$TARGET.json}" -o "$OUT/profile-s70.json" 2>&1 | tee "$OUT/tune.log" ;;
  batch32)
    [ -f /tmp/dense32.fdpp ] || fdcc compile "${COMMON[@]}" --max-batch 32 -o /tmp/dense32.fdpp \
      > "$OUT/compile-dense32.log" 2>&1
    tail -n 1 "$OUT/compile-dense32.log"
    timeout "${BENCH_S:-560}" python3 -m fdpp.compiler.cli bench /tmp/dense32.fdpp --batch 1 --batch 8 --batch 32 --context 128 --new-tokens 256 --out "$OUT/dense32" \
      > "$OUT/bench-dense32.log" 2>&1
    tail -n 16 "$OUT/bench-dense32.log" ;;
  gluon)
    timeout 150 python3 scripts/exp_gluon_ccsr.py check out/gluon_ccsr > "$OUT/gluon_check.log" 2>&1
    tail -n 24 "$OUT/gluon_check.log" ;;
esac
