"""A copy of an `fdcc tune` profile whose decode linears all take the L2 bulk prefetch (config `prefetch_l2`,
architecture note 39), for a whole-model comparison against the profile as it is.

`fdcc tune` keeps the prefetch only where it wins with kernels replayed back to back, which cannot show its other
effect: with dependent launch a linear's weights start streaming before the kernel ahead of it has finished. This
forces it instead, so a bundle compiled with the copy measures both:
- dense entries (`--dense`): every GEMV and 16-row flat GEMM entry up to 16 rows (the kernels that have the option);
- sparse entries (`--sparse`): every chunked-CSR entry (split-K 1), with its `default_us` dropped so the dataflow
  takes the entry's config rather than falling back to the wrapper's default (passes/sparse_choice.py).
The copy is checked as `fdcc compile --profile` would read it (compiler/tune.load_profile) before it is written.

    python3 scripts/force_prefetch_profile.py compiler/profiles/h100.json /tmp/h100-prefetch.json --dense --sparse
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

from fdpp.compiler.errors import CompileError
from fdpp.compiler.tune import SPREAD_MAX_ROWS, load_profile, takes_prefetch


def forced(profile: dict, dense: bool, sparse: bool) -> tuple[dict, int, int]:
    """The profile with prefetch_l2 set where the kernels have it; and how many dense and sparse entries changed."""
    out = copy.deepcopy(profile)
    dense_changed = sparse_changed = 0
    for entry in out["entries"] if dense else []:
        if takes_prefetch(entry["kernel"], entry["config"]) and entry["m"] <= SPREAD_MAX_ROWS:   # as the tune tries
            entry["config"]["prefetch_l2"] = True
            dense_changed += 1
    for entry in out.get("sparse_entries", []) if sparse else []:
        if entry["config"].get("split_k", 1) == 1:
            entry["config"]["prefetch_l2"] = True
            entry.pop("default_us", None)
            sparse_changed += 1
    return out, dense_changed, sparse_changed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--dense", action="store_true", help="force it on the dense GEMV and flat GEMM entries")
    parser.add_argument("--sparse", action="store_true", help="force it on the chunked-CSR entries")
    args = parser.parse_args()
    if not (args.dense or args.sparse):
        parser.error("give --dense, --sparse or both")
    tmp = args.out.with_name(args.out.name + ".tmp")      # written, checked, then renamed: never half a profile
    try:
        profile = json.loads(args.profile.read_text())
        target = profile.get("target") if isinstance(profile, dict) else None
        load_profile(args.profile, str(target))
        out, dense_changed, sparse_changed = forced(profile, args.dense, args.sparse)
        tmp.write_text(json.dumps(out, indent=1))
        load_profile(tmp, str(target))
        tmp.replace(args.out)
    except (OSError, json.JSONDecodeError, CompileError) as e:
        tmp.unlink(missing_ok=True)
        print(f"force_prefetch_profile: {e}", file=sys.stderr)
        return 1
    print(f"{args.out}: prefetch_l2 on {dense_changed} dense and {sparse_changed} sparse entries ({target})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
