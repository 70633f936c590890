"""The experiment of docs/perf/2026-12-06-h100-chunked-csr-vector.md: scripts/bench_chunked_csr.py with the
chunked-CSR kernel's x gathers issued as ld.global.<variant> instead of ld.global.nc (the PTX constants are
replaced before the first compile). From the repository root, fdpp importable:
    python3 docs/perf/2026-12-06-h100-chunked-csr-vector/exp_ccsr_gather.py ca|cg|nc -- <bench_chunked_csr args>"""
import sys
import triton.language as tl
sys.path.insert(0, "scripts")
from fdpp.codegen.kernels import chunked_csr_linear as C

variant, rest = sys.argv[1], sys.argv[3:]
if variant != "nc":
    # the gathers' PTX constants (named WORDS<n>_PTX when this ran, COLUMN_WORDS<n>_PTX since)
    for name in [n for n in dir(C) if n.endswith("_PTX") and "WORDS" in n]:
        ptx = getattr(C, name).value.replace("ld.global.nc", f"ld.global.{variant}")
        setattr(C, name, tl.constexpr(ptx))
print(variant, getattr(C, "COLUMN_WORDS4_PTX", getattr(C, "WORDS4_PTX", None)).value)
import bench_chunked_csr as B
sys.argv = ["bench_chunked_csr.py", *rest]
raise SystemExit(B.main())
