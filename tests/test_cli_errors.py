"""`fdcc` on bad input: exit status 2, one `fdcc: error: ...` line on stderr (the last), no traceback, and
nothing written at the output path. Also: help and `fdcc targets` work.

Every command runs in its own process (`python -m fdpp.compiler.cli`, the `fdcc` entry point's module). They
are started together by one module fixture, a few at a time, because each pays for importing torch.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import types
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from fdpp.compiler.errors import UnsupportedOpError
from fdpp.compiler.ir import DictWeightStore
from fdpp.compiler.sources import BUILTINS
from fdpp.compiler.targets import TARGETS

from helpers import MAX_SEQ_LEN, shared_llama

FDCC = [sys.executable, "-m", "fdpp.compiler.cli"]
PARALLEL = 3


@dataclass
class Run:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    output: Path | None                  # the -o path, if the command has one
    seconds: float = 0.0


def _run(args: list[str], cwd: Path, output: Path | None) -> Run:
    env = {k: v for k, v in os.environ.items() if k != "FDPP_DEBUG"}
    start = time.perf_counter()
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    return Run(args, done.returncode, done.stdout, done.stderr, output, time.perf_counter() - start)


def _tiny_gpt2(path: Path) -> Path:
    """GPT-2's Conv1D calls torch.addmm, which the importer's table does not cover."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=300, n_positions=256, bos_token_id=0,
                        eos_token_id=0)
    GPT2LMHeadModel(config).eval().save_pretrained(path)
    return path


def _bundle_with_version(bundle: Path, out: Path, version: int) -> Path:
    import json

    with zipfile.ZipFile(bundle) as z:
        members = {i.filename: z.read(i) for i in z.infolist()}
    manifest = json.loads(members["manifest.json"])
    manifest["format_version"] = version
    members["manifest.json"] = json.dumps(manifest).encode()
    with zipfile.ZipFile(out, "w") as z:
        for name, data in members.items():
            z.writestr(zipfile.ZipInfo(name, (2024, 1, 1, 0, 0, 0)), data)
    return out


@pytest.fixture(scope="module")
def paths(tmp_path_factory) -> types.SimpleNamespace:
    model_dir, bundle = shared_llama(tmp_path_factory)
    root = tmp_path_factory.mktemp("cli")
    p = types.SimpleNamespace(root=root, model=model_dir, bundle=bundle, out=root / "out")
    p.out.mkdir()
    (root / "no-config").mkdir()
    (root / "bad-config").mkdir()
    (root / "bad-config" / "config.json").write_text('{"model_type": "llama", "hidden_size": 64,,,')
    p.gpt2 = _tiny_gpt2(root / "gpt2")
    p.truncated = root / "truncated.fdpp"
    p.truncated.write_bytes(bundle.read_bytes()[: bundle.stat().st_size // 2])
    p.wrong_version = _bundle_with_version(bundle, root / "v99.fdpp", 99)
    (root / "empty.txt").write_text("")
    (root / "binary.txt").write_bytes(bytes(range(128, 256)) * 8)
    (root / "prose.txt").write_text("The capital of France is Paris, and the capital of Italy is Rome. " * 4)
    return p


def _compile(source, out: Path, *extra: str) -> tuple[list[str], Path]:
    return FDCC + ["compile", str(source), "--target", "a100", "-o", str(out), "--max-batch", "4",
                   "--max-seq-len", str(MAX_SEQ_LEN), "--dtype", "float32", *extra], out


def _command(args: list[str], output: Path | None = None) -> tuple[list[str], Path | None]:
    return FDCC + args, output


# name -> ((command, its -o path), words the error line must contain, whether stderr must be that line alone:
# errors found before any work is done print nothing else)
def _error_cases(p) -> dict[str, tuple[tuple[list[str], Path | None], list[str], bool]]:
    out = p.out
    return {
        "unknown-model": (_compile("no-such-model-7b", out / "a.fdpp"),
                          ["unknown model 'no-such-model-7b'", *BUILTINS], False),
        "unknown-target": (_command(["compile", str(p.model), "--target", "a101", "-o", str(out / "b.fdpp")],
                                    out / "b.fdpp"),
                           ["unknown target 'a101'", *TARGETS], True),
        "missing-model-dir": (_compile(p.root / "does-not-exist", out / "c.fdpp"),
                              ["does-not-exist", "not a path that exists"], False),
        "dir-without-config": (_compile(p.root / "no-config", out / "d.fdpp"), ["no config.json"], False),
        "corrupted-config": (_compile(p.root / "bad-config", out / "e.fdpp"), ["config.json is corrupted"], False),
        "sparsity-1.5": (_compile(p.model, out / "g.fdpp", "--sparsity", "1.5"),
                         ["--sparsity", "[0, 1)", "1.5"], True),
        "sparsity-negative": (_compile(p.model, out / "h.fdpp", "--sparsity", "-0.1"),
                              ["--sparsity", "[0, 1)", "-0.1"], True),
        "output-dir-missing": (_compile(p.model, out / "no" / "such" / "dir" / "i.fdpp"), ["does not exist"], True),
        # we run as root, whom chmod does not stop, but nothing can be created in /proc: the compile must
        # find that out before it loads and traces the model
        "output-in-proc": (_compile(p.model, Path("/proc/fdpp-test-output.fdpp")), ["/proc"], True),
        "unsupported-op": (_compile(p.gpt2, out / "j.fdpp"),
                           ["unsupported op 'aten.addmm", "pytorch_utils.py"], False),
        "run-missing-bundle": (_command(["run", str(p.root / "nope.fdpp"), "-p", "hi"]), ["does not exist"], True),
        "run-truncated-bundle": (_command(["run", str(p.truncated), "-p", "hi"]), ["truncated", "recompile"], True),
        "run-wrong-version": (_command(["run", str(p.wrong_version), "-p", "hi"]), ["99", "not supported"], True),
        "run-prompt-too-long": (_command(["run", str(p.bundle), "-p", "x" * 200, "-n", "4"]),
                                ["prompt of 200 tokens", "max sequence length 128"], True),
        "prefill-chunk-zero": (_compile(p.model, out / "k.fdpp", "--prefill-chunk", "0"),
                               ["--prefill-chunk must be >= 1"], True),
        "max-seq-len-huge": (_compile(p.model, out / "l.fdpp", "--max-seq-len", "1000000000"),
                             ["--max-seq-len 1000000000", "1048576"], True),
        "prune-without-sparsity": (_compile(p.model, out / "m.fdpp", "--prune", "magnitude", "--sparse-format",
                                            "bitmap"), ["--prune, --sparse-format", "add --sparsity"], True),
        "eval-empty-text": (_command(["eval", str(p.bundle), "--text", str(p.root / "empty.txt")]),
                            ["0 token", "at least 2"], True),
        "eval-binary-text": (_command(["eval", str(p.bundle), "--text", str(p.root / "binary.txt")]),
                             ["not UTF-8 text"], True),
    }


# name -> (command, the option click must name): out-of-range values click rejects before fdcc runs
def _usage_cases(p) -> dict[str, tuple[tuple[list[str], Path | None], str]]:
    prose = str(p.root / "prose.txt")
    return {
        "eval-window-1": (_command(["eval", str(p.bundle), "--text", prose, "--window", "1"]), "--window"),
        "eval-max-tokens-negative": (_command(["eval", str(p.bundle), "--text", prose, "--max-tokens", "-1"]),
                                     "--max-tokens"),
        "run-zero-tokens": (_command(["run", str(p.bundle), "-p", "hi", "-n", "0"]), "--max-new-tokens"),
        "run-top-p-zero": (_command(["run", str(p.bundle), "-p", "hi", "--top-p", "0"]), "--top-p"),
    }


def _ok_cases(p) -> dict[str, tuple[list[str], Path | None]]:
    script = shutil.which("fdcc")              # the console script, where it is installed
    return {
        "help": ([script, "--help"], None) if script else _command(["--help"]),
        "compile-help": _command(["compile", "--help"]),
        "targets": _command(["targets"]),
        "run": _command(["run", str(p.bundle), "-p", "hello", "-n", "3"]),
    }


@pytest.fixture(scope="module")
def runs(paths) -> dict[str, Run]:
    commands = {name: case[0] for name, case in _error_cases(paths).items()}
    commands.update({name: case[0] for name, case in _usage_cases(paths).items()})
    commands.update(_ok_cases(paths))
    # the slowest first, so that they overlap with the many short ones
    slow = ("output-in-proc", "unsupported-op")
    order = [n for n in slow if n in commands] + [n for n in commands if n not in slow]
    with ThreadPoolExecutor(PARALLEL) as pool:
        futures = {name: pool.submit(_run, commands[name][0], paths.root, commands[name][1]) for name in order}
        return {name: f.result() for name, f in futures.items()}


_NAMES_ONLY = types.SimpleNamespace(root=Path("r"), model=Path("m"), bundle=Path("b"), out=Path("o"), gpt2=Path("g"),
                                    truncated=Path("t"), wrong_version=Path("v"))
ERROR_CASES = list(_error_cases(_NAMES_ONLY))
USAGE_CASES = list(_usage_cases(_NAMES_ONLY))


@pytest.mark.parametrize("case", ERROR_CASES)
def test_bad_input_gives_one_error_line(case, runs, paths):
    run = runs[case]
    _, words, alone = _error_cases(paths)[case]
    where = f"\n$ {' '.join(run.args)}  ({run.seconds:.1f} s)\n--- stderr ---\n{run.stderr}"
    assert run.returncode == 2, where
    assert "Traceback" not in run.stderr, where
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("fdcc: error: "), where
    assert sum(line.startswith("fdcc:") for line in lines) == 1, where
    if alone:
        assert lines == [lines[-1]], f"expected the error line alone (it should come before any work){where}"
    for word in words:
        assert word in lines[-1], f"{word!r} not in the error line{where}"
    if run.output is not None:
        assert not run.output.exists(), where
        if run.output.parent.is_dir() and run.output.parent != Path("/proc"):
            assert not [f for f in os.listdir(run.output.parent) if f.startswith(f".{run.output.name}")], where


@pytest.mark.parametrize("case", USAGE_CASES)
def test_out_of_range_option_is_refused_by_name(case, runs, paths):
    run = runs[case]
    option = _usage_cases(paths)[case][1]
    where = f"\n$ {' '.join(run.args)}\n--- stdout ---\n{run.stdout}\n--- stderr ---\n{run.stderr}"
    assert run.returncode == 2 and "Traceback" not in run.stderr, where
    assert option in run.stderr and "Invalid value" in run.stderr, where
    assert run.stdout == "", f"nothing may be printed before the refusal{where}"


def test_help_lists_the_commands(runs):
    run = runs["help"]
    assert run.returncode == 0, run.stderr
    for command in ("compile", "run", "inspect", "eval", "targets"):
        assert command in run.stdout


def test_compile_help_lists_the_options(runs):
    run = runs["compile-help"]
    assert run.returncode == 0, run.stderr
    for option in ("--target", "--output", "--dtype", "--max-batch", "--max-seq-len", "--sparsity", "--dump-ir"):
        assert option in run.stdout


def test_targets_lists_every_target(runs):
    run = runs["targets"]
    assert run.returncode == 0, run.stderr
    listed = {line.split()[0] for line in run.stdout.splitlines()[1:] if line.strip()}
    assert listed == set(TARGETS)
    for target in TARGETS.values():
        assert target.arch in run.stdout


def test_run_works_on_the_good_bundle(runs):
    """The run errors above come from their bad input, not from a broken `fdcc run`."""
    assert runs["run"].returncode == 0, runs["run"].stderr
    assert runs["run"].stdout.startswith("hello")
    assert "tokens" in runs["run"].stderr


# --- unsupported ops, in process --------------------------------------------------------------


class _CumprodLM(torch.nn.Module):
    """A causal LM whose forward uses torch.cumprod, which no fdpp pass or kernel covers."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(300, 16)
        self.head = torch.nn.Linear(16, 300)

    def forward(self, input_ids, use_cache=False):
        hidden = torch.cumprod(self.embed(input_ids), dim=1)
        return types.SimpleNamespace(logits=self.head(hidden))


def test_unsupported_op_names_the_op_and_the_line():
    from fdpp.compiler.frontend_torch import trace

    model = _CumprodLM().eval()
    with pytest.raises(UnsupportedOpError) as info:
        trace(model, DictWeightStore(model.state_dict()), {}, 4, MAX_SEQ_LEN)
    message = str(info.value)
    assert "cumprod" in info.value.op
    assert "'aten.cumprod" in message and "test_cli_errors.py" in message
    assert "hidden = torch.cumprod(self.embed(input_ids), dim=1)" in message
    assert "\n" not in message
