"""The fdcc commands on a good bundle: run prints text and speed, inspect prints kernel choices (and JSON),
eval prints a perplexity that matches the API's, compile --dump-ir writes the IR per pass."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

import fdpp
from fdpp.runtime.perplexity import perplexity
from helpers import compile_tiny, tiny_llama


def fdcc(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fdpp.compiler.cli", *args], capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    _, directory = tiny_llama(tmp)
    return compile_tiny(directory, tmp)


def test_run_prints_text_and_speed(bundle):
    done = fdcc("run", str(bundle), "-p", "hello there", "-n", "5", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("hello there")
    assert "tokens/s" in done.stderr
    batch = fdcc("run", str(bundle), "-p", "a", "-p", "bb", "-n", "3", "--temperature", "0.8", "--top-k", "5",
                 "--seed", "1", "--device", "cpu")
    assert batch.returncode == 0, batch.stderr
    assert len(batch.stdout.strip().splitlines()) >= 2


def test_inspect_shows_kernels_and_json(bundle):
    text = fdcc("inspect", str(bundle))
    assert text.returncode == 0, text.stderr
    assert "attention" in text.stdout and "M1=" in text.stdout and "target      a100" in text.stdout
    data = json.loads(fdcc("inspect", str(bundle), "--json").stdout)
    assert data["manifest"]["format_version"] == 2
    assert any(step["kernels"] for step in data["plan"]["steps"])


def test_eval_prints_the_api_perplexity(bundle, tmp_path):
    text_file = tmp_path / "t.txt"
    text_file.write_text("the quick brown fox jumps over the lazy dog. " * 8)
    done = fdcc("eval", str(bundle), "--text", str(text_file), "--window", "64", "--device", "cpu")
    assert done.returncode == 0, done.stderr
    printed = float(done.stdout.split()[1])
    model = fdpp.load(bundle)
    expected = perplexity(model.logits, model.tokenizer.encode(text_file.read_text()), 64)
    assert math.isclose(printed, expected, rel_tol=1e-3)


def test_compile_dump_ir_writes_each_pass(tmp_path):
    _, directory = tiny_llama(tmp_path)
    dump = tmp_path / "ir"
    done = fdcc("compile", str(directory), "-t", "h100", "-o", str(tmp_path / "m.fdpp"), "--dump-ir", str(dump),
                "--dtype", "float32", "--max-seq-len", "64")
    assert done.returncode == 0, done.stderr
    files = sorted(p.name for p in dump.iterdir())
    assert files[0] == "00-imported.ir" and any("fuse_attention" in f for f in files)
    assert "attention(" in (dump / files[-1]).read_text()
