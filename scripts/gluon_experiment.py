"""The command line the Gluon kernel experiments share (scripts/exp_gluon_ccsr.py, scripts/exp_gluon_xshared.py):
`build DIR` compiles the kernels here, `check DIR` runs them on a GPU from that folder. scripts/gpu_xshared_check.py
uses it too."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable


def experiment_main(doc: str, name: str, build: Callable[[Path], None], check: Callable[[Path], int],
                    needs: str, complete: str = "constexprs.json") -> int:
    """Parse `build|check DIR` and run it; `needs` names what the building Triton must have, for the error a check
    of a folder without a build gives; `complete` is the file a build writes last."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("mode", choices=["build", "check"])
    parser.add_argument("directory", type=Path)
    args = parser.parse_args()
    if args.mode == "build":
        build(args.directory)
        return 0
    if not (args.directory / complete).is_file():
        raise SystemExit(f"{name}: {args.directory} holds no build; run `build {args.directory}` first "
                         f"(on a machine whose Triton has {needs}) and carry the folder")
    return check(args.directory)
