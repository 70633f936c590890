"""GPU only: where batch-1 decode attention's fixed cost goes, against the floor of a plain read of as many bytes.

Timed as CUDA-graph replays over rotating inputs, like scripts/bench_attention.py (whose helpers it uses):
- a plain streaming read (a Triton kernel summing every fp16 element, one float out per program) of 4-67 MB
  over several grid sizes, and torch's copy of the same bytes: what one launch of that size does in this
  harness, as % of the large-copy bandwidth the benches divide by (a grid too large for the bytes reads
  nothing and is timed as an "empty launch");
- the shipped decode attention kernel (unified max) and variants made from its source text with one part taken
  out: the combine ("no_combine": no arrival ticket, so no program combines), the load of the sequence length
  ("known_length": the length comes as a launch argument), and both. The variants are diagnostics: they skip
  work the kernel needs, so only the shipped kernel's output is checked.

    python scripts/dissect_decode_floor.py --out $OUT/dissect      # prints a table; writes JSON and markdown
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
from pathlib import Path

import torch
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_attention as attention_bench                       # noqa: E402  (make_set, graph_time_us, SHAPES)

from fdpp.compiler.bench import copy_bandwidth_gbs              # noqa: E402
from fdpp.passes.select_kernels import DECODE_BLOCK_N, DECODE_NUM_STAGES, MIN_SPLIT_KEYS, choose_splits  # noqa: E402

KERNEL_SOURCE = Path(__file__).resolve().parents[1] / "codegen" / "kernels" / "attention_decode.py"
TICKET = 'arrived = tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu")'
LENGTH_LOAD = "length = (tl.load(positions_ptr + batch * positions_stride) + 1).to(tl.int32)"
COS_STRIDE_ARG = "new_k.stride(0), new_v.stride(0), cos.stride(0), n_heads,"
# Each variant: (replacements in the kernel's source). known_length reuses the rotary stride argument (unread
# without ROTARY) to carry the length, set through the module's KNOWN_LENGTH before a shape is timed.
VARIANTS = {
    "shipped": [],
    "no_combine": [(TICKET, "arrived = -1")],
    "known_length": [(LENGTH_LOAD, "length = rotary_stride_batch.to(tl.int32)"),
                     (COS_STRIDE_ARG, "new_k.stride(0), new_v.stride(0), KNOWN_LENGTH, n_heads,")],
}
VARIANTS["no_combine+known_length"] = VARIANTS["no_combine"] + VARIANTS["known_length"]


@triton.jit
def stream_read_kernel(src_ptr, out_ptr, per_program, BLOCK: tl.constexpr):
    """Program p sums src[p * per_program : (p + 1) * per_program] (per_program a multiple of BLOCK)."""
    program = tl.program_id(0)
    start = program.to(tl.int64) * per_program
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for offset in range(0, per_program, BLOCK):
        acc += tl.load(src_ptr + start + offset + tl.arange(0, BLOCK)).to(tl.float32)
    tl.store(out_ptr + program, tl.sum(acc, axis=0))


def load_variant(name: str, workdir: Path):
    """The decode attention module with VARIANTS[name]'s replacements applied, imported from workdir."""
    text = KERNEL_SOURCE.read_text()
    for old, new in VARIANTS[name]:
        assert text.count(old) == 1, f"variant {name}: {old!r} is not in the kernel source exactly once"
        text = text.replace(old, new)
    path = workdir / f"attention_decode_{name.replace('+', '_')}.py"
    path.write_text(text + "\nKNOWN_LENGTH = 1\n")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def stream_rows(copy_gbs: float) -> list[dict]:
    rows = []
    block = 4096
    for megabytes in (4, 16, 32, 64):
        nbytes = megabytes << 20
        n_sets = max(1, (512 << 20) // nbytes)
        sets = [torch.randn(nbytes // 2, device="cuda", dtype=torch.float16) for _ in range(n_sets)]
        copies = [torch.empty_like(s) for s in sets]
        us = attention_bench.graph_time_us([lambda s=s, d=d: d.copy_(s) for s, d in zip(sets, copies)], nbytes)
        rows.append({"kind": "torch copy", "mb": nbytes / 1e6, "grid": "-", "us": us,
                     "bw": 2 * nbytes / (us * 1e-6) / 1e9 / copy_gbs})
        del copies
        for grid in (66, 132, 264, 528, 1056):
            per_program = nbytes // 2 // grid // block * block   # 0 when a program gets less than a block:
            kind = "stream read" if per_program else "empty launch"   # the launch alone (one store a program)
            out = torch.empty(grid, device="cuda", dtype=torch.float32)
            for stages in (3, 5):
                calls = [lambda s=s: stream_read_kernel[(grid,)](s, out, per_program, BLOCK=block, num_warps=8,
                                                                   num_stages=stages) for s in sets]
                us = attention_bench.graph_time_us(calls, nbytes)
                moved = grid * per_program * 2
                rows.append({"kind": f"{kind} st={stages}", "mb": moved / 1e6, "grid": grid, "us": us,
                             "bw": moved / (us * 1e-6) / 1e9 / copy_gbs})
        sets.clear()
        torch.cuda.empty_cache()
    return rows


def attention_rows(copy_gbs: float, sms: int, workdir: Path) -> list[dict]:
    modules = {name: load_variant(name, workdir) for name in VARIANTS}
    phi, low, high = attention_bench.PHI, attention_bench.LOW, attention_bench.HIGH
    rows = []
    for shape, length in (("mha-32x128", 1024), ("mha-32x128", 4096), ("gqa-64/8x128", 1024), ("gqa-64/8x128", 4096)):
        heads, kv_heads, head_dim = attention_bench.SHAPES[shape]
        kv_bytes = 2 * kv_heads * length * head_dim * 2
        moved = kv_bytes + 2 * heads * head_dim * 2
        sets = [attention_bench.make_set(1, heads, kv_heads, head_dim, length)
                for _ in range(max(1, min(16, (512 << 20) // kv_bytes)))]
        fallbacks = torch.zeros(1, dtype=torch.int32, device="cuda")
        default_splits = choose_splits(1, kv_heads, sms, length)
        for splits in (default_splits, 2 * default_splits):
            for name, module in modules.items():
                module.KNOWN_LENGTH = length

                def call(s, module=module, splits=splits):
                    key = ("ws", splits)
                    if key not in s:
                        s[key] = module.allocate_decode_workspace(1, heads, kv_heads, head_dim, splits, "cuda")
                    return lambda: module.attention_decode(
                        s["q"], s["k"], s["v"], s["positions"], n_heads=heads, n_kv_heads=kv_heads,
                        head_dim=head_dim, scale=head_dim ** -0.5, unified=(phi, low, high), fallbacks=fallbacks,
                        num_splits=splits, min_split_keys=MIN_SPLIT_KEYS, block_n=DECODE_BLOCK_N,
                        num_stages=DECODE_NUM_STAGES, workspace=s[key])

                if name == "shipped":
                    ref = attention_bench.reference(sets[0], heads, kv_heads, head_dim)
                    err = attention_bench.rel_error(call(sets[0])(), ref)
                    assert err < 2e-3, (shape, length, splits, err)
                us = attention_bench.graph_time_us([call(s) for s in sets], moved)
                rows.append({"shape": shape, "kv_len": length, "splits": splits, "variant": name, "us": us,
                             "bw": moved / (us * 1e-6) / 1e9 / copy_gbs})
                print(f"{shape} L{length} S={splits} {name}: {us:.2f} us ({100 * rows[-1]['bw']:.0f}%)", flush=True)
        sets.clear()
        torch.cuda.empty_cache()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    props = torch.cuda.get_device_properties(0)
    copy_gbs = copy_bandwidth_gbs("cuda", 1 << 29)
    print(f"{props.name}, {props.multi_processor_count} SMs, copy bandwidth {copy_gbs:.0f} GB/s", flush=True)
    with tempfile.TemporaryDirectory() as workdir:
        attention = attention_rows(copy_gbs, props.multi_processor_count, Path(workdir))
    streams = stream_rows(copy_gbs)
    result = {"gpu": props.name, "copy_gbs": copy_gbs, "torch": torch.__version__, "triton": triton.__version__,
              "attention": attention, "stream": streams}
    (args.out / "dissect.json").write_text(json.dumps(result, indent=1))
    lines = [f"{props.name}, copy {copy_gbs:.0f} GB/s, torch {torch.__version__}, triton {triton.__version__}", "",
             "| shape | KV | splits | variant | us | % of copy |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['shape']} | {r['kv_len']} | {r['splits']} | {r['variant']} | {r['us']:.2f} | {100 * r['bw']:.0f}% |"
              for r in attention]
    lines += ["", "| read | MB | grid | us | % of copy |", "|---|---|---|---|---|"]
    lines += [f"| {r['kind']} | {r['mb']:.1f} | {r['grid']} | {r['us']:.2f} | {100 * r['bw']:.0f}% |" for r in streams]
    table = "\n".join(lines)
    (args.out / "dissect.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
