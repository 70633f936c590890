"""The compile driver: source -> traced IR -> passes -> plan -> bundle, one phase after another.

Each phase reports progress through a callback; the CLI prints it. Nothing is written at the output
path unless every phase succeeded.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch

from fdpp.codegen.aot import build_plan_kernels
from fdpp.codegen.emit import emit_plan, weights_used
from fdpp.compiler.bundle_writer import WeightShards, check_writable, write_bundle
from fdpp.compiler.calibration import CalibrationSet, load_calibration
from fdpp.compiler.errors import CompileError
from fdpp.compiler.ir import Graph
from fdpp.compiler.options import DTYPES, PRUNE_METHODS, SOFTMAX_MODES, SPARSE_FORMATS, CompileOptions
from fdpp.compiler.progress import Progress, throttled
from fdpp.compiler.sources import LoadedSource, resolve_source
from fdpp.compiler.targets import Target, get_target
from fdpp.compiler.tune import shipped_profile
from fdpp.passes.pass_manager import PassContext, PassManager
from fdpp.passes.calibrate_softmax import MIN_COVERAGE
from fdpp.passes.pipeline import PIPELINE
from fdpp.runtime.unified_max import safe_offsets
from fdpp.runtime.schema import FORMAT_VERSION, Envelope, Manifest, Plan

def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


MAX_SEQ_LEN = 1 << 20   # position tables and KV caches are sized by --max-seq-len; past this they are not sane


def validate_options(options: CompileOptions) -> None:
    if options.dtype not in DTYPES:
        raise CompileError(f"unknown dtype '{options.dtype}'; valid: {', '.join(DTYPES)}")
    if not 0.0 <= options.sparsity < 1.0:
        raise CompileError(f"--sparsity must be in [0, 1), got {options.sparsity}")
    if options.prune not in PRUNE_METHODS:
        raise CompileError(f"--prune must be one of {', '.join(PRUNE_METHODS)}, got {options.prune}")
    if options.sparse_format not in SPARSE_FORMATS:
        raise CompileError(f"--sparse-format must be one of {', '.join(SPARSE_FORMATS)}, got {options.sparse_format}")
    if options.sparse_format == "tiled_csl" and options.dtype == "float32":
        raise CompileError("Tiled-CSL stores 16-bit values; compile in float16/bfloat16 or use --sparse-format bitmap")
    if options.max_batch < 1 or options.max_seq_len < 16:
        raise CompileError(f"--max-batch must be >= 1 and --max-seq-len >= 16 (got {options.max_batch}, "
                           f"{options.max_seq_len})")
    if options.max_seq_len > MAX_SEQ_LEN:
        raise CompileError(f"--max-seq-len {options.max_seq_len} is over the {MAX_SEQ_LEN} positions fdcc builds "
                           f"tables and KV caches for; give a smaller --max-seq-len")
    if options.prefill_chunk < 1:
        raise CompileError(f"--prefill-chunk must be >= 1 (prompt tokens per prefill launch), got "
                           f"{options.prefill_chunk}")
    if options.weights not in ("real", "random"):
        raise CompileError(f"--weights must be real or random, got {options.weights}")
    if options.softmax not in SOFTMAX_MODES:
        raise CompileError(f"--softmax must be one of {', '.join(SOFTMAX_MODES)}, got {options.softmax}")
    if options.calibration is not None and not Path(options.calibration).is_file():
        raise CompileError(f"calibration text {options.calibration} does not exist; give a text file with "
                           f"--calibration, or leave it out to use the bundled text")
    if options.calibration_tokens < 2 or options.calibration_seq_len < 2:
        raise CompileError("--calibration-tokens and the calibration sequence length must be >= 2")


def calibration_set(loaded: LoadedSource, graph: Graph, options: CompileOptions) -> CalibrationSet | None:
    """The calibration tokens the passes need (None when no pass needs them)."""
    wanda = options.sparsity > 0 and options.prune == "wanda"
    if options.softmax == "synchronized" and not wanda:
        return None
    return load_calibration(options.calibration, loaded.tokenizer_json, int(graph.config["vocab_size"]),
                            options.calibration_tokens, min(options.calibration_seq_len, options.max_seq_len))


def trace_source(loaded: LoadedSource, options: CompileOptions) -> Graph:
    if loaded.onnx_path is not None:
        from fdpp.compiler.frontend_onnx import import_onnx
        return import_onnx(loaded.onnx_path, options)
    from fdpp.compiler.frontend_torch import trace
    return trace(loaded.model, loaded.weights, loaded.config, options.max_batch, options.max_seq_len)


def optimize(graph: Graph, options: CompileOptions, target: Target, dump_dir: Path | None = None,
             progress: Progress | None = None, calibration: CalibrationSet | None = None) -> Graph:
    def report(name, result, seconds):
        if progress:
            changed = ", ".join(f"{k} {v}" for k, v in result.changes.items() if v) or "no change"
            took = f" ({seconds:.1f}s)" if seconds >= 1 else ""
            progress(f"  pass {name}: {changed}{took}")
    return PassManager(list(PIPELINE), dump_dir, report).run(graph, PassContext(options, target, calibration,
                                                                                progress))


def _layers(plan: Plan) -> list[dict]:
    """Per attention layer, what the manifest records: its attention facts and softmax scheme (φ, safe range,
    calibration coverage)."""
    layers = []
    for step in plan.steps:
        if step.op.value == "attention":
            a = step.attrs
            layers.append({"index": a["layer"], "attention": step.output, "n_heads": a["n_heads"],
                           "n_kv_heads": a["n_kv_heads"], "head_dim": a["head_dim"],
                           "softmax": a.get("softmax", {"scheme": "synchronized"})})
    return layers


def compile_model(source: str, target_name: str, output: str | Path, options: CompileOptions,
                  dump_ir: Path | None = None, progress: Progress | None = None) -> Path:
    """Compile SOURCE for one target into one .fdpp file; returns its path."""
    return compile_for_targets(source, [target_name], [Path(output)], options, dump_ir, progress)[0]


def compile_for_targets(source: str, target_names: list[str], outputs: list[Path], options: CompileOptions,
                        dump_ir: Path | None = None, progress: Progress | None = None) -> list[Path]:
    """Compile SOURCE once per target, one bundle each. Loading, tracing and the weights (cast and
    serialised once) are shared; passes that depend on the target, the plan and the kernels are not."""
    say = progress or (lambda msg: None)
    validate_options(options)
    targets = [get_target(name) for name in target_names]
    outputs = [Path(o) for o in outputs]
    if len(set(outputs)) != len(outputs):
        raise CompileError("each target needs its own output file; put {target} in -o when giving several")
    for output in outputs:
        try:
            check_writable(output)
        except OSError as e:
            raise CompileError(str(e)) from None
    dtype = getattr(torch, options.dtype)

    t0 = time.perf_counter()
    say(f"[1/5] loading {source}")
    loaded = resolve_source(source, options.weights, options.seed, dtype)
    say(f"[2/5] tracing {loaded.description} ({time.perf_counter() - t0:.1f}s)")
    traced = trace_source(loaded, options)
    calibration = calibration_set(loaded, traced, options)
    if calibration is not None:
        say(f"  calibration: {calibration.description}")
    shards: WeightShards | None = None
    try:
        for target, output in zip(targets, outputs):
            say(f"[3/5] {target.name}: running {len(PIPELINE)} passes over {len(traced.nodes)} nodes")
            target_options = options
            if options.profile is None and (default := shipped_profile(target.name)) is not None:
                say(f"  kernel choices: fdpp's measured profile for {target.name} ({default['gpu']})")
                target_options = dataclasses.replace(options, profile=default)
            ir_dir = dump_ir / target.name if dump_ir is not None and len(targets) > 1 else dump_ir
            graph = optimize(traced, target_options, target, ir_dir, say, calibration)
            if options.sparsity > 0:
                for line in sparsity_report(graph, options.dtype):
                    say(line)
            say(f"[4/5] {target.name}: emitting the plan and building its kernels")
            plan = emit_plan(graph)
            names = weights_used(plan)
            built = build_plan_kernels(plan, options.dtype, target, {n: graph.weights.shape(n) for n in names}, say)
            if shards is None:
                say(f"[5/5] casting and serialising {len(names)} weights to {options.dtype} (once for all targets)")
                shards = WeightShards.write(names, _weight_getter(graph, dtype), throttled(say, "weights"))
            elif list(shards.entries) != names:
                raise CompileError(f"internal: target {target.name} uses other weights than the first target")
            manifest = _manifest(loaded, graph, built, options, target, calibration)
            size = write_bundle(output, manifest, built.plan, shards, loaded.tokenizer_json, built.members)
            say(f"done: {output} ({size / 1e6:.1f} MB) for {target.name} after {time.perf_counter() - t0:.1f}s")
    finally:
        if shards is not None:
            shards.remove()
    return outputs


def _weight_getter(graph: Graph, dtype: torch.dtype) -> Callable[[str], torch.Tensor]:
    def get_weight(name: str) -> torch.Tensor:
        t = graph.weights.get(name)
        return t.to(dtype) if t.is_floating_point() else t
    return get_weight


def _manifest(loaded: LoadedSource, graph: Graph, built, options: CompileOptions, target: Target,
              calibration: CalibrationSet | None) -> Manifest:
    return Manifest(
        format_version=FORMAT_VERSION, fdpp_version=_version("fdpp"),
        built_with={p: _version(p) for p in ("torch", "triton", "transformers")},
        target=asdict(target), model={**graph.config, **loaded.config}, source=loaded.description,
        dtype=options.dtype,
        envelope=Envelope(options.max_batch, options.max_seq_len, options.batch_buckets(), options.prefill_chunk),
        tokenizer=({"bos_token_id": loaded.bos_token_id, "eos_token_ids": loaded.eos_token_ids}
                   if loaded.tokenizer_json is not None else None),
        weights={}, layers=_layers(built.plan), softmax=_softmax_summary(built.plan, options),
        sparsity=_sparsity_summary(graph, options, calibration),
        kernels=built.manifest_entries)


def _pruned_linears(graph: Graph) -> list:
    return [n for n in graph.nodes if n.op.value == "linear" and "pruned" in n.attrs]


def sparsity_report(graph: Graph, dtype: str) -> list[str]:
    """Per pruned linear: density, stored format and bytes against dense, and the dataflow's expected speedup."""
    itemsize = torch.tensor([], dtype=getattr(torch, dtype)).element_size()
    linears = _pruned_linears(graph)
    width = max([len("pruned linear"), *(len(n.attr("pruned")["weight"]) for n in linears)])
    lines = [f"  {'pruned linear':<{width}} {'density':>7} {'format':>9} {'dense MB':>9} {'stored MB':>9} {'saved':>6} "
             f"{'expected (M=1)':>14}"]
    dense_total = stored_total = 0
    for n in linears:
        pruned, sparse, decision = n.attr("pruned"), n.attr("sparse"), n.attr("sparse_format", {})
        dense_bytes = math.prod(graph.weights.shape(pruned["weight"])) * itemsize
        stored = sparse["bytes"] if sparse else dense_bytes
        dense_total, stored_total = dense_total + dense_bytes, stored_total + stored
        lines.append(f"  {pruned['weight']:<{width}} {pruned['density']:>7.3f} {decision.get('format', 'dense'):>9} "
                     f"{dense_bytes / 1e6:>9.2f} {stored / 1e6:>9.2f} {1 - stored / dense_bytes:>6.1%} "
                     f"{decision.get('expected_speedup', 1.0):>13.2f}x")
    lines.append(f"  pruned linears: {dense_total / 1e6:.1f} MB dense -> {stored_total / 1e6:.1f} MB stored "
                 f"({1 - stored_total / max(1, dense_total):.1%} saved)")
    return lines


def _sparsity_summary(graph: Graph, options: CompileOptions, calibration: CalibrationSet | None) -> dict:
    """What the manifest records of pruning and sparse encodings (per weight: format, density, bytes)."""
    if options.sparsity <= 0:
        return {}
    weights = {}
    for n in _pruned_linears(graph):
        pruned, decision = n.attr("pruned"), n.attr("sparse_format", {})
        weights[pruned["weight"]] = {"density": pruned["density"], "format": decision.get("format", "dense"),
                                     "expected_speedup": decision.get("expected_speedup", 1.0),
                                     "costs_us": decision.get("costs", {}),
                                     **({"encoding": n.attr("sparse")} if n.attr("sparse") else {})}
    return {"sparsity": options.sparsity, "method": options.prune, "format": options.sparse_format,
            "include": list(options.prune_include), "exclude": list(options.prune_exclude),
            "calibration": calibration.description if options.prune == "wanda" and calibration else None,
            "weights": weights}


def _softmax_summary(plan: Plan, options: CompileOptions) -> dict:
    """The bundle-wide facts of the unified max (the per-layer ones are in `layers`)."""
    schemes = [s.attrs.get("softmax", {}) for s in plan.steps if s.op.value == "attention"]
    calibrated = next((s for s in schemes if "calibration" in s), None)
    low, high = safe_offsets(options.dtype)
    return {"mode": options.softmax, "unified_layers": sum(1 for s in schemes if s.get("scheme") == "unified"),
            "layers": len(schemes), "safe_offsets": [low, high], "min_coverage": MIN_COVERAGE,
            "calibration": calibrated["calibration"] if calibrated else None}
