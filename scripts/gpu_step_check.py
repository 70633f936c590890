"""GPU debugging aid: run one prefill and one decode step of a bundle through the kernel executor on the GPU
and through the reference ops, step by step, and print each step's relative error (first bad step wins)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import fdpp  # noqa: E402
from fdpp.codegen.kernels.chunked_csr_linear import interleave_rows  # noqa: E402
from fdpp.runtime.kv_cache import KVCache  # noqa: E402
from fdpp.runtime.reference_executor import _RUN  # noqa: E402
from fdpp.runtime.schema import WEIGHT_PREFIX, OpKind  # noqa: E402
from helpers import rows_of_interleaved  # noqa: E402


def main(path: str) -> int:
    model = fdpp.load(path, device="cuda", cuda_graphs=False)
    ex, plan = model.executor, model.plan
    batch, prompt = 3, 9
    cap = 64
    ck = KVCache.allocate(plan.kv_layers, batch, plan.kv_heads, cap, plan.head_dim, model.dtype, "cuda")
    cr = KVCache.allocate(plan.kv_layers, batch, plan.kv_heads, cap, plan.head_dim, model.dtype, "cuda")
    g = torch.Generator().manual_seed(0)
    vocab = int(model.manifest.model["vocab_size"])
    for phase, seq, start in (("prefill", prompt, 0), ("decode", 1, prompt)):
        tokens = torch.randint(3, vocab, (batch, seq), generator=g).cuda()
        positions = (torch.arange(seq)[None, :] + start).expand(batch, seq).contiguous().cuda()
        env = {"batch": batch, "seq": seq, "rows": batch * seq, "capacity": cap,
               "fallbacks": torch.zeros(1, dtype=torch.int64)}
        bk = {"tokens": tokens, "positions": positions}
        br = dict(bk)
        worst = 0.0
        for step in plan.steps:
            bk[step.output] = ex._run(step, bk, ck, env, phase)
            args = [ex.weights[n[1:]] if n.startswith(WEIGHT_PREFIX) else br[n] for n in step.inputs]
            br[step.output] = _RUN[step.op](step, args, cr, env)
            choice = step.kernel_for(batch * seq, phase)
            together = choice.config.get("out_rows_together", 1) if choice else 1
            a, r = bk[step.output].float(), br[step.output].float()
            if together > 1:    # written interleaved for the chunked-CSR linear after it: compare its rows
                a = rows_of_interleaved(a, batch * seq).reshape(r.shape)
            err = float((a - r).norm() / r.norm().clamp_min(1e-30))
            if err > 2e-2 or not torch.isfinite(a).all():
                print(f"{phase}: step {step.output} ({step.op.value}, {choice.kernel if choice else '-'}) "
                      f"rel err {err:.3e}  shape {tuple(a.shape)}")
                worst = max(worst, err)
            # keep both paths on the reference values, so one bad step does not hide the next (a SLICE stays the
            # kernel executor's view of the replaced buffer: its readers' launches use the viewed buffer's stride)
            # (an interleaved output is laid out again as its reader expects)
            if step.op is not OpKind.SLICE:
                bk[step.output] = interleave_rows(br[step.output].reshape(-1, r.shape[-1]), together) \
                    if together > 1 else br[step.output].clone()
        for layer in range(plan.kv_layers):
            e = float((ck.keys[layer][:batch, :, :start + seq].float() - cr.keys[layer][:batch, :, :start + seq].float()).norm())
            if e > 1e-2:
                print(f"{phase}: k cache layer {layer} differs by {e:.3e}")
        print(f"{phase}: worst step error {worst:.3e}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
