#!/bin/bash
# The decode attention kernel letting the next kernel start after its key loop ("late", this commit) against
# at its start ("early": the kernel of commit 27ab4fe, which the run needs as exp_attention_early.py in the
# repository root: `git show 27ab4fe:codegen/kernels/attention_decode.py > exp_attention_early.py`). From the
# repository root on a lent sm_90 GPU, output under $OUT. Only "attention" has been run (the record beside
# this file); "build" and "round N" (llama2-7b at KV 4K) are the next step, not run.
# "build": both dense bundles (--max-batch 8, --max-seq-len 4224, synchronized softmax), built side by side;
# "round N": each benched at batch 1 and 8, context 4096, 64 new tokens, dependent launch (the default).
# "attention": scripts/bench_attention.py --dependent-launch with each kernel, batch 1 and 8, KV 4K and 32K.
set -u
TARGET=${TARGET:-h100}
export TRITON_DEFAULT_FP_FUSION=1 PYTHONUNBUFFERED=1
mkdir -p /tmp/late-pkg /tmp/early-pkg && ln -sfn "$PWD" /tmp/late-pkg/fdpp
if [ ! -d /tmp/early ]; then
  cp -r "$PWD" /tmp/early && cp exp_attention_early.py /tmp/early/codegen/kernels/attention_decode.py
fi
ln -sfn /tmp/early /tmp/early-pkg/fdpp
fdcc() { PYTHONPATH=/tmp/$1-pkg python3 -m fdpp.compiler.cli "${@:2}"; }
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
  round) for v in late early; do
           fdcc $v bench /tmp/$v.fdpp --batch 1 --batch 8 --context 4096 --new-tokens 64 --no-hf \
             > "$OUT/bench-$v-$2.log" 2>&1
           printf '%-6s %s\n' $v "$(grep -E '^ +(1|8) +4096' "$OUT/bench-$v-$2.log" | tr -s ' ' | tr '\n' '|')"
           grep -E "^  attention" "$OUT/bench-$v-$2.log"
         done ;;
esac
