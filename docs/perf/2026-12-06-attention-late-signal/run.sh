#!/bin/bash
# The decode attention kernel letting the next kernel start after its key loop ("late": commit 9dae610's kernel)
# against at its start ("early": the kernel of commit 27ab4fe, the same code as shipped again since). As run,
# the repository held the late kernel and the early one came from exp_attention_early.py in the repository
# root; to re-run on the current tree, which holds the early kernel, give it the late one instead:
# `git show 9dae610:codegen/kernels/attention_decode.py > exp_attention_late.py`. From the repository root on a
# lent sm_90 GPU, output under $OUT; the record beside this file has the results ("attention" in the record's
# first table, the rest under "Whole model", outputs in whole-model/).
# "build": both dense bundles (--max-batch 8, --max-seq-len 4224, synchronized softmax), built side by side;
# "round N": each benched at batch 1 and 8, context 4096, 64 new tokens, dependent launch (the default);
# "round128 N": the same at context 128, 256 new tokens.
# "attention": scripts/bench_attention.py --dependent-launch with each kernel, batch 1 and 8, KV 4K and 32K.
set -u
TARGET=${TARGET:-h100}
export TRITON_DEFAULT_FP_FUSION=1 PYTHONUNBUFFERED=1
mkdir -p /tmp/late-pkg /tmp/early-pkg && ln -sfn "$PWD" /tmp/early-pkg/fdpp
if [ ! -d /tmp/late ]; then
  cp -r "$PWD" /tmp/late && cp exp_attention_late.py /tmp/late/codegen/kernels/attention_decode.py
fi
ln -sfn /tmp/late /tmp/late-pkg/fdpp
fdcc() { PYTHONPATH=/tmp/$1-pkg python3 -m fdpp.compiler.cli "${@:2}"; }
rounds() {  # rounds <N> <context> <new tokens> <log prefix>: both bundles at batch 1 and 8, late then early
  for v in late early; do
    fdcc $v bench /tmp/$v.fdpp --batch 1 --batch 8 --context "$2" --new-tokens "$3" --no-hf > "$OUT/$4-$v-$1.log" 2>&1
    printf '%-6s %s\n' $v "$(grep -E "^ +(1|8) +$2 " "$OUT/$4-$v-$1.log" | tr -s ' ' | tr '\n' '|')"
    grep -E "^  attention" "$OUT/$4-$v-$1.log"
  done
}
case "$1" in
  build) nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/gpu.txt"
         for v in late early; do
           fdcc $v compile llama2-7b --weights random -t "$TARGET" --softmax synchronized --max-batch 8 \
             --max-seq-len 4224 -o /tmp/$v.fdpp > "$OUT/compile-$v.log" 2>&1 &
         done; wait; tail -qn 1 "$OUT"/compile-*.log ;;
  attention) for v in late early; do
               PYTHONPATH=/tmp/$v-pkg python3 /tmp/$v-pkg/fdpp/scripts/bench_attention.py --out "$OUT/attention-$v" \
                 --batches 1 8 --lengths 4096 32768 --adversarial 2x97 --dependent-launch > "$OUT/attention-$v.log" 2>&1
               echo "== $v"; grep -E "^\| (mha|gqa)" "$OUT/attention-$v.log" | awk -F'|' '{print $2,$3,$4,$8,$15}'
             done ;;
  round) rounds "$2" 4096 64 bench ;;
  round128) rounds "$2" 128 256 bench128 ;;
esac
