"""Instruction counts of a bundle's NVIDIA code objects, read from their SASS on any machine (no GPU needed).

    python3 scripts/sass_loops.py model.fdpp [--kernel chunked_csr] [--const ROWS] [--dump DIR]

For each cubin in the bundle: the instructions in all, and in its longest loop (the span of the longest
backward branch), with the constexprs that tell its specialisations apart. A kernel change can be judged by
its hot loop's issue slots before any GPU time is spent on it (the GPU still decides: fewer instructions
help only where issue, not memory, bounds the loop). Uses the nvdisasm that ships with Triton.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import triton

NVDISASM = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "nvdisasm"
LABEL = re.compile(r"^(\.L_x_\d+):")
BRANCH = re.compile(r"BRA `\((\.L_x_\d+)\)")
INSTRUCTION = re.compile(r"/\*[0-9a-f]{4,}\*/")


def sass(cubin: bytes) -> list[str]:
    """nvdisasm's listing of one cubin, a line per row."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        done = subprocess.run([str(NVDISASM), "-c", f.name], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"sass_loops: nvdisasm failed: {done.stderr.strip().splitlines()[-1:]}")
    return done.stdout.splitlines()


def loop_counts(lines: list[str]) -> tuple[int, int]:
    """(instructions in all, instructions in the longest loop: label to its backward branch, inclusive)."""
    labels = {m.group(1): i for i, line in enumerate(lines) if (m := LABEL.match(line))}
    is_instruction = [bool(INSTRUCTION.search(line)) for line in lines]
    longest = 0
    for i, line in enumerate(lines):
        m = BRANCH.search(line)
        if m and labels.get(m.group(1), i) < i:
            longest = max(longest, sum(is_instruction[labels[m.group(1)]:i + 1]))
    return sum(is_instruction), longest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path, help="a .fdpp bundle compiled for an NVIDIA target")
    parser.add_argument("--kernel", default="", help="only code objects whose kernel name contains this")
    parser.add_argument("--const", action="append", default=[],
                        help="a constexpr to print beside each (repeatable; default: all)")
    parser.add_argument("--dump", type=Path, help="also write each listing here as <code object>.sass")
    args = parser.parse_args()
    try:
        bundle = zipfile.ZipFile(args.bundle)
        manifest = json.loads(bundle.read("manifest.json"))
    except (OSError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as e:
        raise SystemExit(f"sass_loops: {args.bundle} is not a readable .fdpp bundle ({e})")
    kernels = [k for k in manifest.get("kernels", []) if k["vendor"] == "cuda" and args.kernel in k["symbol"]]
    if not kernels:
        raise SystemExit(f"sass_loops: {args.bundle} has no NVIDIA code object matching {args.kernel!r}")
    if args.dump:
        args.dump.mkdir(parents=True, exist_ok=True)
    print(f"{'kernel':<34} {'all':>6} {'loop':>6}  constexprs")
    for k in sorted(kernels, key=lambda k: (k["symbol"], k["name"])):
        lines = sass(bundle.read(f"kernels/{k['code_object']}"))
        if args.dump:
            (args.dump / f"{k['code_object']}.sass").write_text("\n".join(lines))
        total, loop = loop_counts(lines)
        consts = {name: v for name, v in k.get("constexprs", {}).items() if not args.const or name in args.const}
        print(f"{k['symbol']:<34} {total:6d} {loop:6d}  " + " ".join(f"{n}={v}" for n, v in consts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
