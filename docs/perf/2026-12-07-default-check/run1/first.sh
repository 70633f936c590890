#!/bin/bash
# One device call when few are lent: the bar-moving mode for the GPU that came (an H200: "sparse", the open
# whole-model bar; an H100: "dense", o_proj's 85% bar), then the xshared correctness "check" without the L1 bench,
# each under its own timeout so that the results are always packed into one file.
set -u
HERE=docs/perf/2026-12-07-default-check/run1
B=$OUT; mkdir -p "$B/main" "$B/check"
case "$(nvidia-smi --query-gpu=name --format=csv,noheader)" in *H200*) MODE=sparse;; *) MODE=dense;; esac
echo "mode $MODE"
OUT=$B/main TUNE_S="${TUNE_S:-150}" timeout "${MAIN_S:-390}" bash "$HERE/run.sh" "$MODE"
OUT=$B/check XS_S="${XS_S:-150}" CCSR_S=0 timeout "${CHECK_S:-170}" bash "$HERE/run.sh" check
cd "$B" && tar czf all.tgz --remove-files main check && ls
