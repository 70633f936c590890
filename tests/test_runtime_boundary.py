"""The runtime is a hard boundary (DESIGN.md §2): loading a bundle and generating needs nothing from the
compiler side, nor transformers or triton. Checked two ways: by running it in a fresh process and looking at
sys.modules, and by reading every import statement under runtime/.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import fdpp.runtime
from helpers import shared_llama

FORBIDDEN = ("fdpp.compiler", "fdpp.passes", "fdpp.codegen", "transformers", "triton")
RUNTIME_DIR = Path(fdpp.runtime.__file__).parent

_PROBE = """
import json, sys
import fdpp
model = fdpp.load(sys.argv[1])
out = model.generate([[1, 2, 3]], max_new_tokens=2)
text = model.generate("hi", max_new_tokens=2).text
print(json.dumps({"tokens": out.token_ids, "modules": sorted(sys.modules)}))
"""


def _forbidden(module: str) -> bool:
    return any(module == f or module.startswith(f + ".") for f in FORBIDDEN)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return shared_llama(tmp_path_factory)[1]


def test_load_and_generate_import_nothing_from_the_compiler_side(bundle):
    done = subprocess.run([sys.executable, "-c", _PROBE, str(bundle)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert len(result["tokens"]) == 1 and 1 <= len(result["tokens"][0]) <= 2
    leaked = [m for m in result["modules"] if _forbidden(m)]
    assert not leaked, f"the runtime pulled in {leaked}"
    assert "fdpp.runtime" in result["modules"]


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module an import statement in the file names (function-level ones too), as absolute names."""
    package = "fdpp.runtime"
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            out.append((node.lineno, module))
            out += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            out.append((node.lineno, str(node.args[0].value)))
    return out


def test_runtime_sources_import_nothing_from_the_compiler_side():
    files = sorted(RUNTIME_DIR.rglob("*.py"))
    assert len(files) >= 5
    offending = [f"{path.relative_to(RUNTIME_DIR.parent)}:{line}: {module}"
                 for path in files for line, module in _imports(path) if _forbidden(module)]
    assert not offending, "runtime/ imports the compiler side:\n" + "\n".join(offending)


def test_package_root_imports_only_the_runtime():
    root = RUNTIME_DIR.parent / "__init__.py"
    modules = [m for _, m in _imports(root)]
    assert modules and all(m.startswith("fdpp.runtime") for m in modules), modules


def test_the_import_scan_sees_relative_and_nested_imports(tmp_path):
    """The scanner itself: it must catch the spellings a careless edit would use."""
    sample = tmp_path / "sample.py"
    sample.write_text("from ..compiler import ir\n"
                      "def f():\n    import transformers\n    from fdpp.passes.pipeline import PIPELINE\n"
                      "import importlib\nimportlib.import_module('triton.compiler')\n")
    found = {m for _, m in _imports(sample) if _forbidden(m)}
    assert {"fdpp.compiler", "transformers", "fdpp.passes.pipeline", "triton.compiler"} <= found
