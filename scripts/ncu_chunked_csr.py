"""GPU only: a target for Nsight Compute, the chunked-CSR kernel on Llama-2-7B's qkv shape at 70% sparsity with
1, 8 and 2 rows of x (three launches each). The ncu reports in docs/perf/2026-11-22-h200-chunked-csr-interleaved/ncu
came from (launch 3 is M = 1, launch 6 is M = 8):

    ncu --clock-control none -k regex:chunked_csr_linear_kernel --launch-skip 2 --launch-count 1 \
        --section SpeedOfLight --section WarpStateStats --section Occupancy --section MemoryWorkloadAnalysis \
        --section InstructionStats --section LaunchStats python3 scripts/ncu_chunked_csr.py
"""

import torch

from fdpp.codegen.kernels.chunked_csr_linear import chunked_csr_linear
from fdpp.runtime.sparse_formats import encode_chunked_csr

torch.manual_seed(0)
n, k = 12288, 4096
weight = torch.randn(n, k, device="cuda").half()
weight[torch.rand(n, k, device="cuda") < 0.7] = 0
parts = {name: t.cuda() for name, t in encode_chunked_csr(weight.cpu()).tensors.items()}
for m, config in ((1, {"rows": 1, "block_n": 8, "chunks": 4}), (8, {"rows": 8, "block_n": 4, "chunks": 4}),
                  (2, {"rows": 2, "block_n": 4, "chunks": 8})):
    x = torch.randn(m, k, device="cuda").half()
    for _ in range(3):
        chunked_csr_linear(x, parts["values"], parts["offsets"], parts["bases"], (n, k), **config)
torch.cuda.synchronize()
