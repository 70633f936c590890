"""GPU check of chunked_csr_xshared (codegen/kernels/chunked_csr_xshared.py) as bundles build and launch it.

Its Gluon shared-memory gather needs Triton 3.9 (here), not the GPU machine's 3.6, so everything is compiled here
and carried there, as bundles' kernels are:

    python3 scripts/gpu_xshared_check.py build out/xshared_check      # CPU machine: kernels and a sparse bundle
    python3 scripts/gpu_xshared_check.py check out/xshared_check      # on an H100/H200, carrying the folder

`build` compiles the kernel for sm_90 as bundles would (default_xshared_config, the hints launch_specs gives) for
Llama-2-7B's four shapes at 1, 2, 4 and 8 rows of x (where x fits in shared memory) with each layer's epilogue in
bundles (qkv plain, o_proj and down_proj + residual, gate/up SiLU-gated with its output interleaved for down_proj),
and variants: other configs at 1 and 2 rows (FEW_ROW_VARIANTS), for gate/up and o_proj at 8 rows and o_proj at 4,
q/k/v and gate/up with their sums taken the other way than their default (config "direct"), o_proj and down_proj
with one warp group and direct sums, bias variants.
Then a random mid-size Llama (scripts/gpu_sparse_check.py's, hidden 768, intermediate 4608, 2 layers) at 70%
sparsity in chunked CSR compiled for h100, whose dataflow puts q/k/v and gate/up on this kernel at 4-8 rows
(gate/up at 8 rows with its sums from registers).
KERNELS_ONLY=1 (build and check) leaves the bundle out.

CASES=REGEX (build) keeps only the kernels whose names it finds, e.g. CASES='_m8_'.

`check` runs, for every kernel: a float64 check of the whole epilogue (fresh random x, residual and bias, relative
error < 2e-3) on the bank-spread encoding bundles store, then medians over rotating copies against cuBLAS on the
dense weight (no epilogue) and against the L1 chunked-CSR kernel (chunked_csr_linear, its default config, the
same epilogue, x interleaved by its producer as in bundles) on the same encoding and on the column-ordered one.
Then the L1 kernel at 1 and 2 rows on both encodings (what spreading costs the buckets that do not use this
kernel), and the bundle against the CPU reference executor (gpu_sparse_check.compare: prefill logits, greedy
tokens of a ragged batch of 8, eager and CUDA graphs; then batches of 3, 2 and 1 with graphs). Prints tables;
exits 1 on a failed check.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from pathlib import Path

import torch

SCRIPTS = Path(__file__).resolve().parent
SHAPES = {"o": (4096, 4096), "down": (4096, 11008), "qkv": (12288, 4096), "gate_up": (22016, 4096)}
# the epilogue each shape has in a Llama bundle; out_rows: gate/up writes down_proj's x interleaved
LAYER_EPILOGUE = {"o": "residual", "down": "residual", "qkv": "plain", "gate_up": "gated"}
H100_MULTIPROCESSORS = 132       # the persistent grid is sized when the bundle is built, as here
SHARED_LIMIT = 227 << 10


# configs tried at 1 and 2 rows besides the default (num_warps, groups, programs a multiprocessor; unroll 4)
FEW_ROW_VARIANTS = {"w8g1p3": (8, 1, 3), "w8g2": (8, 2, 0), "w4g1": (4, 1, 0), "w4g1p6": (4, 1, 6),
                    "w16g2p2": (16, 2, 2)}
# changes to the default config tried at 8 rows: gate/up (one warp group, sums from registers, 3 programs a
# multiprocessor) and o_proj (8 warps in two groups, 256 row blocks of 16 rows; 16 warps until
# docs/perf/2026-12-07-default-check.md)
GATE_UP8_VARIANTS = {"p2": {"programs": 2}, "p4": {"programs": 4}, "w16p1": {"num_warps": 16, "programs": 1},
                     "u2": {"unroll": 2}}
O8_VARIANTS = {"w16g2": {"num_warps": 16}, "w16g4": {"num_warps": 16, "groups": 4},
               "w8g4": {"num_warps": 8, "groups": 4}, "w8g2u2": {"unroll": 2}}
# and o_proj at 4 rows (default 8 warps in two groups, 256 row blocks of 16 rows, at 1.45-1.50x cuBLAS): more or
# fewer warps a block, four groups, unroll 2, and a persistent grid of one program a multiprocessor (x staged once)
O4_VARIANTS = {"w16g2": {"num_warps": 16}, "w4g2": {"num_warps": 4}, "w16g4": {"num_warps": 16, "groups": 4},
               "w8g2u2": {"unroll": 2}, "w8g2p1": {"programs": 1}, "w16g2p1": {"num_warps": 16, "programs": 1}}


# each row's first chunks asked of L2 before x's copy (config "early"), at 4 and 8 rows on every shape where x fits
EARLY_VARIANTS = {f"e{chunks}": {"early": chunks} for chunks in (4, 8, 16, 32)}


def kernel_cases() -> list[dict]:
    """(shape, rows, epilogue, config) cases: each shape's layer epilogue at 1, 2, 4 and 8 rows with the default
    config, at 1 and 2 rows also with FEW_ROW_VARIANTS' configs, q/k/v and gate/up with their sums taken the other
    way than their default (config "direct": through shared memory, or for gate/up at 1-4 rows from registers),
    o_proj and down_proj with one warp group and direct sums, gate/up and o_proj at 8 rows with GATE_UP8_VARIANTS'
    and O8_VARIANTS' changes, o_proj at 4 rows with O4_VARIANTS', every shape at 4 and 8 rows asking L2 early for
    EARLY_VARIANTS' first chunks, and bias variants of qkv and gate/up. CASES (a
    regex on case_name) filters them."""
    from fdpp.codegen.kernels.chunked_csr_xshared import default_xshared_config
    cases = []
    for name, (n, k) in SHAPES.items():
        for m in (1, 2, 4, 8):
            cases.append({"shape": name, "n": n, "k": k, "m": m, "epilogue": LAYER_EPILOGUE[name]})
            if m <= 2:
                for tag, (warps, groups, programs) in FEW_ROW_VARIANTS.items():
                    config = {"rows": m, "num_warps": warps, "groups": groups, "unroll": 4, "programs": programs}
                    cases.append({"shape": name, "n": n, "k": k, "m": m, "epilogue": LAYER_EPILOGUE[name],
                                  "variant": tag, "config": config})
    # the other way of taking the sums than the default (from registers; gate/up through shared memory at 1-4 rows)
    for name in ("qkv", "gate_up"):
        n, k = SHAPES[name]
        for m in (1, 2, 4, 8):
            direct = name == "gate_up" and m < 8
            cases.append({"shape": name, "n": n, "k": k, "m": m, "epilogue": LAYER_EPILOGUE[name],
                          "variant": "direct" if direct else "shared_sums",
                          "config": {**default_xshared_config(n, k, m), "direct": direct}})
    for name in ("o", "down"):  # row blocks of one warp group, so their sums can come from registers too
        n, k = SHAPES[name]
        for m in (4, 8):
            for warps in (4, 8):
                config = {**default_xshared_config(n, k, m), "num_warps": warps, "groups": 1, "direct": True}
                cases.append({"shape": name, "n": n, "k": k, "m": m, "epilogue": LAYER_EPILOGUE[name],
                              "variant": f"w{warps}g1_direct", "config": config})
    # other configs: gate/up's persistent grid, warps, unroll at 8 rows; o_proj's warps, groups, unroll at 8 and 4;
    # every shape's early L2 ask at 4 and 8 rows
    changed = [("gate_up", 8, GATE_UP8_VARIANTS), ("o", 8, O8_VARIANTS), ("o", 4, O4_VARIANTS)]
    changed += [(name, m, EARLY_VARIANTS) for name in SHAPES for m in (4, 8)]
    for name, m, variants in changed:
        n, k = SHAPES[name]
        for tag, change in variants.items():
            cases.append({"shape": name, "n": n, "k": k, "m": m, "epilogue": LAYER_EPILOGUE[name], "variant": tag,
                          "config": {**default_xshared_config(n, k, m), **change}})
    cases.append({"shape": "qkv", "n": 12288, "k": 4096, "m": 8, "epilogue": "bias"})
    cases.append({"shape": "gate_up", "n": 22016, "k": 4096, "m": 4, "epilogue": "gated_bias"})   # added after run 3
    cases.append({"shape": "gate_up", "n": 22016, "k": 4096, "m": 8, "epilogue": "gated_bias"})
    chosen = re.compile(os.environ.get("CASES", ""))        # CASES=regex: only the cases whose name it finds
    return [case for case in cases if chosen.search(case_name(case))]


def case_name(case: dict) -> str:
    variant = f"_{case['variant']}" if "variant" in case else ""
    return f"xshared_{case['shape']}_m{case['m']}_{case['epilogue']}{variant}"


def launch_facts(case: dict) -> dict:
    """Config, constexprs, grid and row blocks of a case, as codegen/launch_specs.py computes them."""
    from fdpp.codegen.kernels.chunked_csr_xshared import (default_xshared_config, xshared_constexprs, xshared_grid,
                                                          xshared_row_blocks)
    n, k, m, epilogue = case["n"], case["k"], case["m"], case["epilogue"]
    gated = epilogue.startswith("gated")
    out_n = n // 2 if gated else n
    config = case.get("config") or default_xshared_config(n, k, m)
    constexprs = xshared_constexprs(k, config, has_bias=epilogue.endswith("bias"),
                                    has_residual=epilogue == "residual",
                                    activation=0 if gated else None, out_rows=config["rows"] if gated else 1)
    return {"config": config, "constexprs": constexprs, "out_n": out_n,
            "grid": [xshared_grid(out_n, gated, config, H100_MULTIPROCESSORS), -(-m // config["rows"])],
            "row_blocks": xshared_row_blocks(out_n, gated, config)}


def build(directory: Path) -> None:
    from fdpp.codegen.build import compile_kernel
    from fdpp.codegen.kernels.chunked_csr_xshared import (GLUON_SHARED_GATHER, XSHARED_SIGNATURE,
                                                          chunked_csr_xshared_kernel, xshared_fits)
    from fdpp.compiler.targets import get_target
    from fdpp.runtime.kernel_binary import save_kernel
    if not GLUON_SHARED_GATHER:
        import triton
        raise SystemExit(f"gpu_xshared_check: triton {triton.__version__}'s Gluon has no shared-memory gather; "
                         f"build where a newer triton is (3.9 has it)")
    directory.mkdir(parents=True, exist_ok=True)
    built = []
    for case in kernel_cases():
        facts = launch_facts(case)
        if not xshared_fits(case["k"], facts["config"]["rows"], SHARED_LIMIT, facts["config"]):
            print(f"{case_name(case)}: x does not fit in shared memory, not built")
            continue
        # the hints bundles give (launch_specs._Builder.launch): pointers, and ints that are static multiples of 16
        static = {"N": facts["out_n"], "row_blocks": facts["row_blocks"]}
        aligned = [arg for arg, kind in XSHARED_SIGNATURE.items() if kind.startswith("*")] + \
            [arg for arg, value in static.items() if value % 16 == 0]
        kernel = compile_kernel(chunked_csr_xshared_kernel, get_target("h100"), XSHARED_SIGNATURE,
                                facts["constexprs"], name=case_name(case), num_warps=facts["config"]["num_warps"],
                                num_stages=1, divisible_by_16=aligned)
        save_kernel(kernel, directory)
        built.append({**case, **facts})
        print(f"{kernel.name}: {kernel.shared_memory_bytes} bytes of shared memory, grid {facts['grid']}")
    if os.environ.get("KERNELS_ONLY"):          # no bundle: `check` then runs the kernel table alone
        (directory / "cases.json").write_text(json.dumps(built, indent=1))
        return
    sys.path.insert(0, str(SCRIPTS))
    import gpu_sparse_check
    scratch = tempfile.TemporaryDirectory()
    model = Path(scratch.name) / "mid-llama"          # float32 safetensors: not carried, only the bundle is
    # an MLP wide enough (stacked gate/up 9,216 rows > 8,192) for gate/up's row blocks of one warp group, whose sums
    # come from registers at 8 rows; two layers, so the bundle and the kernels carry in under 64 MiB
    gpu_sparse_check.build_model(model, intermediate_size=4608, layers=2)
    bundle = directory / "xshared.fdpp"
    gpu_sparse_check.compile_bundle(model, bundle, "chunked_csr", target="h100")
    print(f"{bundle}: {bundle.stat().st_size / 1e6:.1f} MB")
    (directory / "cases.json").write_text(json.dumps(built, indent=1))      # last: marks a complete build


def reference(case: dict, x: torch.Tensor, weight: torch.Tensor, bias, residual) -> torch.Tensor:
    """The case's output in float64, row-major [M, out_n]."""
    y = x.double() @ weight.double().T
    if bias is not None:
        y = y + bias.double()
    if case["epilogue"].startswith("gated"):
        half = y.shape[1] // 2
        y = torch.nn.functional.silu(y[:, :half]) * y[:, half:]
    if residual is not None:
        y = y + residual.double()
    return y


def row_major(out: torch.Tensor, m: int, together: int) -> torch.Tensor:
    """An output [cdiv(M, T), N, T] interleaved by T rows as [M, N]; a row-major one as is."""
    if out.dim() == 2:
        return out
    return out.permute(0, 2, 1).reshape(-1, out.shape[1])[:m]


def check_kernels(directory: Path, cases: list[dict]) -> int:
    sys.path.insert(0, str(SCRIPTS))
    import bench_sparse as BENCH
    import torch.nn.functional as F
    from fdpp.codegen.kernels.chunked_csr_linear import chunked_csr_linear, default_chunked_csr_config, interleave_rows
    from fdpp.runtime.cuda_launcher import CudaKernel
    from fdpp.runtime.kernel_binary import load_kernel
    from fdpp.runtime.sparse_formats import spread_banks
    failed = 0
    print("| case | cuBLAS us (no epilogue) | xshared us (x cuBLAS) | L1 kernel, same encoding | "
          "L1 kernel, column order | xshared error | L1 error |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    weights = {}
    for case in cases:
        n, k, m, epilogue = case["n"], case["k"], case["m"], case["epilogue"]
        if case["shape"] not in weights:
            weights.clear()
            torch.cuda.empty_cache()
            weight, dense_sets, csr, plain_sets = BENCH.dense_and_chunked_csr(n, k, 0.7)
            spread = spread_banks(csr)
            weights[case["shape"]] = (weight, dense_sets, plain_sets, BENCH.copies(spread.tensors, spread.nbytes))
        weight, dense_sets, plain_sets, spread_sets = weights[case["shape"]]
        out_n, together = case["out_n"], case["config"]["rows"]
        gated = epilogue.startswith("gated")
        torch.manual_seed(m * 1000 + n)
        x = (torch.randn(m, k, device="cuda") * 0.5).half()
        bias = (torch.randn(n, device="cuda") * 0.1).half() if epilogue.endswith("bias") else None
        residual = torch.randn(m, out_n, device="cuda").half() if epilogue == "residual" else None
        ref = reference(case, x, weight, bias, residual)
        x_interleaved = interleave_rows(x, together).contiguous()
        x_words = x_interleaved.view(torch.int32)
        out_rows = together if gated else 1
        out = torch.empty((-(-m // out_rows), out_n, out_rows) if out_rows > 1 else (m, out_n), device="cuda",
                          dtype=torch.float16)
        kernel = CudaKernel(load_kernel(directory, case_name(case)))
        grid = tuple(case["grid"])

        def xshared(t):
            kernel(grid, x_words, t["values"].view(torch.int64), t["offsets"].view(torch.int32), t["bases"],
                   bias if bias is not None else out, residual if residual is not None else out, out, m, out_n,
                   t["bases"].shape[1], case["row_blocks"])
            return out
        error = BENCH.relative_error(row_major(xshared(spread_sets[0]), m, out_rows).float(), ref)
        l1_config = default_chunked_csr_config(n, spread_sets[0]["bases"].shape[1], m)
        l1_x = interleave_rows(x, l1_config["rows"]).contiguous() if l1_config["rows"] > 1 else None

        def l1(t):
            return chunked_csr_linear(x, t["values"], t["offsets"], t["bases"], (n, k), bias=bias, residual=residual,
                                      gated="silu" if gated else None, x_interleaved=l1_x,
                                      out_rows_together=out_rows, **l1_config)
        l1_error = BENCH.relative_error(row_major(l1(spread_sets[0]), m, out_rows).float(), ref)
        bad = error >= BENCH.MAX_ERROR or l1_error >= BENCH.MAX_ERROR or not torch.isfinite(out).all()
        failed += bad
        cublas = BENCH.time_us([lambda s=s: F.linear(x, s["w"]) for s in dense_sets])
        ours = BENCH.time_us([lambda t=t: xshared(t) for t in spread_sets])
        l1_spread = BENCH.time_us([lambda t=t: l1(t) for t in spread_sets])
        l1_plain = BENCH.time_us([lambda t=t: l1(t) for t in plain_sets])
        print(f"| {case['shape']} M={m} {epilogue} {case.get('variant', 'default')} | {cublas:.1f} | "
              f"{ours:.1f} ({cublas / ours:.2f}x) | {l1_spread:.1f} ({cublas / l1_spread:.2f}x) | "
              f"{l1_plain:.1f} ({cublas / l1_plain:.2f}x) | {error:.1e} | {l1_error:.1e}{' FAIL' if bad else ''} |",
              flush=True)
    return failed


def check_spread_cost() -> None:
    """The L1 kernel at 1 and 2 rows on the column-ordered and the bank-spread encodings (no epilogue)."""
    sys.path.insert(0, str(SCRIPTS))
    import bench_sparse as BENCH
    from fdpp.codegen.kernels.chunked_csr_linear import chunked_csr_linear, default_chunked_csr_config, interleave_rows
    from fdpp.runtime.sparse_formats import spread_banks
    print("\n| shape | M | L1 kernel, column order us | bank-spread us | spread / column order |")
    print("| --- | --- | --- | --- | --- |")
    for name, (n, k) in SHAPES.items():
        torch.cuda.empty_cache()
        _, _, csr, plain_sets = BENCH.dense_and_chunked_csr(n, k, 0.7)
        spread = spread_banks(csr)
        spread_sets = BENCH.copies(spread.tensors, spread.nbytes)
        for m in (1, 2):
            x = (torch.randn(m, k, device="cuda") * 0.5).half()
            config = default_chunked_csr_config(n, csr.tensors["bases"].shape[1], m)
            ready = interleave_rows(x, config["rows"]).contiguous() if config["rows"] > 1 else None

            def l1(t):
                return chunked_csr_linear(x, t["values"], t["offsets"], t["bases"], (n, k), x_interleaved=ready,
                                          **config)
            plain = BENCH.time_us([lambda t=t: l1(t) for t in plain_sets])
            spreaded = BENCH.time_us([lambda t=t: l1(t) for t in spread_sets])
            print(f"| {name} | {m} | {plain:.1f} | {spreaded:.1f} | {spreaded / plain:.3f} |", flush=True)
        del plain_sets, spread_sets


def check_small_batches(path: Path) -> bool:
    """Batches of 3 (the 4-row bucket, one padding row), 2 and 1 (the buckets of one and two rows) decoded on the
    GPU with CUDA graphs against the CPU reference executor."""
    import fdpp
    sys.path.insert(0, str(SCRIPTS))
    import gpu_sparse_check
    g = torch.Generator().manual_seed(2)
    cpu, gpu = fdpp.load(path, device="cpu"), fdpp.load(path, device="cuda", cuda_graphs=True)
    ok = True
    for lengths in ((9, 4, 21), (6, 13), (11,)):
        prompts = [torch.randint(3, 4096, (n,), generator=g).tolist() for n in lengths]
        reference = cpu.generate(prompts, max_new_tokens=12).token_ids
        got = gpu.generate(prompts, max_new_tokens=12).token_ids
        diffs = gpu_sparse_check.first_differences(reference, got)
        print(f"bundle, batch of {len(prompts)} (graphs): first token difference per prompt {diffs}")
        ok &= all(d is None for d in diffs)
    return ok


def check(directory: Path) -> int:
    cases = json.loads((directory / "cases.json").read_text())
    print(f"GPU: {torch.cuda.get_device_name(0)}")
    failed = check_kernels(directory, cases)
    if os.environ.get("KERNELS_ONLY"):
        print("PASS" if not failed else "FAIL")
        return 1 if failed else 0
    check_spread_cost()
    sys.path.insert(0, str(SCRIPTS))
    import gpu_sparse_check
    row = gpu_sparse_check.compare(directory / "xshared.fdpp")
    print(f"\nbundle (mid-llama, 70%, chunked CSR, h100): logits error eager {row['eager_logit_error']:.2e}, graphs "
          f"{row['graphs_logit_error']:.2e}; first token difference per prompt: eager {row['eager_first_diffs']}, "
          f"graphs {row['graphs_first_diffs']}; linear kernels {', '.join(row['kernels'])}")
    bundle_ok = max(row["eager_logit_error"], row["graphs_logit_error"]) < 2e-3
    failed += not bundle_ok
    failed += not check_small_batches(directory / "xshared.fdpp")
    print("PASS" if not failed else "FAIL")
    return 1 if failed else 0


def main() -> int:
    sys.path.insert(0, str(SCRIPTS))
    from gluon_experiment import experiment_main
    return experiment_main(__doc__, "gpu_xshared_check", build, check, "Gluon's shared-memory gather",
                           complete="cases.json")


if __name__ == "__main__":
    sys.exit(main())
