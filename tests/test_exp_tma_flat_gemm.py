"""scripts/exp_tma_flat_gemm.py (docs/perf/2026-12-08-wide-grid.md): its flat GEMM with TMA tile loads agrees
with float64 under the interpreter, on shapes where x's rows and the weight's last tile fall short of a block
(TMA's zero fill), so the experiment stays runnable as recorded. On the GPU it timed only configs that first
matched float32 torch."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

triton_language = pytest.importorskip("triton.language")

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "exp_tma_flat_gemm.py"


@pytest.mark.skipif(not hasattr(triton_language, "make_tensor_descriptor"),
                    reason="this Triton has no device-made tensor descriptors")
def test_tma_flat_gemm_matches_float64_under_the_interpreter():
    result = subprocess.run([sys.executable, str(SCRIPT), "--check-cpu"], env={**os.environ, "TRITON_INTERPRET": "1"},
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "worst relative error" in result.stdout
