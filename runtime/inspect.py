"""Human-readable description of a bundle: manifest facts, layers, and each step's kernel choice."""

from __future__ import annotations

from fdpp.runtime.bundle import Bundle


def describe(bundle: Bundle) -> str:
    m, plan = bundle.manifest, bundle.plan
    t = m.target
    lines = [
        f"bundle      {bundle.path}",
        f"format      v{m.format_version}, fdpp {m.fdpp_version}, built with "
        + ", ".join(f"{k} {v}" for k, v in m.built_with.items()),
        f"target      {t['name']} ({t['vendor']} {t['arch']})",
        f"source      {m.source}",
        "model       " + ", ".join(f"{k}={v}" for k, v in m.model.items()),
        f"dtype       {m.dtype}",
        f"envelope    max batch {m.envelope.max_batch}, max seq {m.envelope.max_seq_len}, "
        f"prefill chunk {m.envelope.prefill_chunk}, decode buckets {list(m.envelope.batch_buckets)}",
        f"tokenizer   {'yes' if bundle.tokenizer_json else 'none (token ids only)'}",
        f"weights     {len(m.weights)} tensors, "
        f"{sum(v.numel() * v.element_size() for v in bundle.weights.values()) / 1e6:.1f} MB",
        f"kv cache    {plan.kv_layers} layers x {plan.kv_heads} heads x {plan.head_dim}",
        "",
        f"{'step':<28} {'op':<16} kernel choice (rows <= max: kernel)",
    ]
    for s in plan.steps:
        choices = "; ".join(f"{k.phase + ' ' if k.phase != 'any' else ''}<= {k.max_rows}: {k.kernel}"
                            + (f" x{k.config['splits']} splits" if "splits" in k.config else "")
                            + (f" x{k.config['spread']} programs" if k.config.get("spread") else "")
                            + (f" (out x{k.config['out_rows_together']} interleaved)"
                               if k.config.get("out_rows_together", 1) > 1 else "")
                            + (" (x interleaved)" if k.config.get("x_interleaved") else "")
                            for k in s.kernels) or "(view, no kernel)"
        lines.append(f"{s.output:<28} {_op_label(s):<16} {choices}")
    linears = [s for s in plan.steps if s.op.value == "linear"]
    if linears:
        measured = sum(1 for s in linears if any(k.reason.startswith("profile") for k in s.kernels))
        source = (f"measured profile for {measured} of {len(linears)} linears, cost model for the rest" if measured
                  else "the cost model of the target (no measured profile)")
        lines += ["", f"linear kernel choices come from {source}",
                  "linear inflection points (M1: GEMV -> flat GEMM, M2: flat GEMM -> tensor-core GEMM):"]
        for s in linears:
            shape = s.attrs["sparse"]["shape"] if "sparse" in s.attrs else bundle.weights[s.inputs[1][1:]].shape
            ladder = [k for k in s.kernels if k.phase in ("prefill", "any")]  # every row count, in order
            starts = [1] + [k.max_rows + 1 for k in ladder[:-1]]              # first row count of each choice
            m1 = next((start for start, k in zip(starts, ladder) if k.kernel == "flat_gemm"), None)
            m2 = next((start for start, k in zip(starts, ladder) if k.kernel == "tc_gemm"), None)
            fused = f"  ({_op_label(s).removeprefix('linear')[1:]})" if _op_label(s) != "linear" else ""
            lines.append(f"  {s.output:<26} [N={shape[0]}, K={shape[1]}]  M1={m1 or '-'}  M2={m2 or '-'}{fused}")
    lines += _softmax_lines(m.layers)
    lines += _sparsity_lines(m.sparsity, m.dtype)
    return "\n".join(lines)


def _op_label(step) -> str:
    """The step's op, with a linear's fused epilogues: linear+silu (stacked gate/up), linear+res."""
    if step.op.value != "linear":
        return step.op.value
    return "linear" + (f"+{step.attrs['gated']}" if step.attrs.get("gated") else "") \
        + ("+res" if step.attrs.get("residual") else "")


def _sparsity_lines(sparsity: dict, dtype: str) -> list[str]:
    """Pruning and the stored encoding of each pruned weight (Flash-LLM)."""
    if not sparsity:
        return []
    itemsize = 4 if dtype == "float32" else 2
    lines = ["", f"sparsity: {sparsity['sparsity']:.0%} by {sparsity['method']}, storage {sparsity['format']}"
                 + (f" (calibration: {sparsity['calibration']})" if sparsity.get("calibration") else ""),
             f"  {'weight':<44} {'density':>7} {'format':>9} {'stored MB':>9} {'saved':>6} {'expected (M=1)':>14}"]
    for name, w in sparsity["weights"].items():
        enc = w.get("encoding")
        dense = (enc["shape"][0] * enc["shape"][1] * itemsize) if enc else None
        stored, saved = (f"{enc['bytes'] / 1e6:>9.2f}", f"{1 - enc['bytes'] / dense:>6.1%}") if enc else (
            f"{'dense':>9}", f"{'-':>6}")
        lines.append(f"  {name[-44:]:<44} {w['density']:>7.3f} {w['format']:>9} {stored} {saved} "
                     f"{w['expected_speedup']:>13.2f}x")
    return lines


def _softmax_lines(layers: list[dict]) -> list[str]:
    """The unified-max decisions per layer (FlashDecoding++ asynchronized softmax)."""
    calibrated = [layer for layer in layers if "phi" in layer.get("softmax", {})]
    if not calibrated:
        schemes = {layer.get("softmax", {}).get("scheme", "synchronized") for layer in layers}
        return ["", f"attention softmax: {', '.join(sorted(schemes))} (not calibrated)"] if layers else []
    unified = sum(1 for layer in layers if layer["softmax"]["scheme"] == "unified")
    lines = ["", f"attention softmax: unified max in {unified} of {len(layers)} layers "
                 f"(calibration: {calibrated[0]['softmax'].get('calibration', '?')})",
             f"  {'layer':<6} {'scheme':<13} {'phi':>8} {'safe row-max range':>20} {'coverage':>9} "
             f"{'row max seen':>20} {'scores 0.01-99.99%':>20}"]
    for layer in layers:
        s = layer["softmax"]
        if "phi" not in s:
            lines.append(f"  {layer['index']:<6} {s['scheme']:<13} {s.get('reason', '')}")
            continue
        lo, hi = s["safe_range"]
        rlo, rhi = s["row_max_range"]
        slo, shi = s["score_range"]
        lines.append(f"  {layer['index']:<6} {s['scheme']:<13} {s['phi']:>8.2f} {f'[{lo:.2f}, {hi:.2f}]':>20} "
                     f"{s['coverage']:>9.4%} {f'[{rlo:.2f}, {rhi:.2f}]':>20} {f'[{slo:.2f}, {shi:.2f}]':>20}")
    return lines
