#!/bin/bash
# The device call behind docs/perf/2026-12-07-gluon-ccsr.md, from the repository root (output under $OUT).
# Run 1 used it as of commit f48b9a3, run 2 as of 6762409 (the variants in scripts/exp_gluon_ccsr.py differ).
# Needs the cubins built on the CPU machine and carried (out/ is git-ignored):
#   python3 scripts/prebuild_probe.py out/probe_kernels --targets h100
#   python3 scripts/exp_gluon_ccsr.py build out/gluon_ccsr
# On an H200 it first measures the whole-model bars there (dense and 70% llama2-7b bundles built for h200, via
# docs/perf/2026-12-06-h100-dependent-launch/run.sh), then the Gluon kernels; on an H100, or with KERNELS_ONLY=1,
# only the kernels. Runs 3 and 4 used it as of the commit that records them.
set -u
mkdir -p /tmp/pkg && ln -sfn "$PWD" /tmp/pkg/fdpp
export PYTHONPATH=/tmp/pkg TRITON_DEFAULT_FP_FUSION=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c "import torch, triton, transformers; print(torch.__version__, triton.__version__, transformers.__version__)" \
  | tee -a "$OUT/gpu.txt"
if grep -q H200 "$OUT/gpu.txt" && [ "${KERNELS_ONLY:-0}" != 1 ]; then
  TARGET=h200 timeout 210 bash docs/perf/2026-12-06-h100-dependent-launch/run.sh build
  TARGET=h200 timeout 210 bash docs/perf/2026-12-06-h100-dependent-launch/run.sh sparse
fi
python3 scripts/gpu_check_launcher.py --from-dir out/probe_kernels > "$OUT/probe.log" 2>&1; tail -n 8 "$OUT/probe.log"
CHECK_S=330; grep -q H200 "$OUT/gpu.txt" && CHECK_S=150
timeout $CHECK_S python3 scripts/exp_gluon_ccsr.py check out/gluon_ccsr 2>&1 | tee "$OUT/gluon_check.log" | tail -n 30
if [ "${DENSIFY:-0}" = 1 ]; then   # run 2 ran this in a call of its own, on the same machine
  timeout 120 python3 docs/perf/2026-12-06-ccsr-densified-prefill/exp_densify.py 2>&1 | tee "$OUT/densify.log" | tail -n 12
fi
