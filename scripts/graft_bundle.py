"""Put the plan and kernels of a bundle compiled on one machine over the weights of the same model compiled on
another: a way to run, on the GPU machine, a big bundle whose kernels only this machine can build.

chunked_csr_xshared needs a Triton whose Gluon has the shared-memory gather (3.9 here; the GPU machine has 3.6),
and a 70% llama2-7b bundle (6.7 GB) cannot be carried there (64 MiB a call). So the plan and kernels travel as a
skeleton (the bundle less its weights), the GPU machine compiles the same model with its own fdcc (same source,
seed, sparsity and format: the same weight names and shapes) and grafts:

    python3 scripts/graft_bundle.py skeleton model.fdpp out/model.skeleton      # here: every member but weights/
    python3 scripts/graft_bundle.py graft out/model.skeleton there.fdpp grafted.fdpp     # on the GPU machine

`graft` refuses unless both manifests name the same weights with the same member, shape and dtype (the plan's
constants, chunks per row among them, follow the shapes). It reports how many weight members have the same sha256
in both: random weights are drawn on each machine's CPU, so equal hashes mean identical weights; where they differ
the grafted bundle still runs the plan over weights of the same shapes (good for timing; compare its outputs with
the weights bundle's own, not with this machine's). The skeleton's members are checked against its manifest's
hashes before anything is written; the grafted manifest lists the written members' hashes. Written under a
temporary name and renamed when complete.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import zipfile
from contextlib import contextmanager
from pathlib import Path

from fdpp.compiler.bundle_writer import _AlignedZip
from fdpp.runtime.bundle import MANIFEST

WEIGHTS_PREFIX = "weights/"
CHUNK_BYTES = 1 << 24


@contextmanager
def _written_at(out: Path):
    """A temporary path beside `out` to write to: renamed to `out` when the block completes, removed if it fails."""
    tmp = out.with_name(f".{out.name}.{os.getpid()}.partial")
    try:
        yield tmp
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def skeleton(bundle: Path, out: Path) -> None:
    """Every member of `bundle` but its weights, stored in a plain zip at `out` (written under a temporary name)."""
    with _written_at(out) as tmp, zipfile.ZipFile(bundle) as source, \
            zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            if not info.filename.startswith(WEIGHTS_PREFIX):
                target.writestr(info.filename, source.read(info.filename))
    print(f"{out}: {out.stat().st_size / 1e6:.1f} MB (the plan, kernels and manifest of {bundle})")


def _member_chunks(archive: zipfile.ZipFile, name: str):
    with archive.open(name) as member:
        while chunk := member.read(CHUNK_BYTES):
            yield chunk


def graft(skeleton_path: Path, weights_bundle: Path, out: Path) -> int:
    """A bundle at `out` with the skeleton's plan, kernels and manifest and the weights of `weights_bundle`."""
    with zipfile.ZipFile(skeleton_path) as skel, zipfile.ZipFile(weights_bundle) as heavy:
        manifest = json.loads(skel.read(MANIFEST))
        theirs = json.loads(heavy.read(MANIFEST))
        if manifest["weights"] != theirs["weights"]:
            names = set(manifest["weights"]) ^ set(theirs["weights"])
            first = sorted(names)[0] if names else next(w for w in manifest["weights"]
                                                        if manifest["weights"][w] != theirs["weights"].get(w))
            raise SystemExit(f"graft_bundle: {weights_bundle} and the skeleton disagree on weight {first} (name, "
                             f"member, shape or dtype): compile the same model, sparsity and format on both machines")
        weight_members = sorted({w["member"] for w in manifest["weights"].values()})
        same = sum(manifest["members"].get(m) == theirs["members"].get(m) for m in weight_members)
        carried = {}        # the skeleton's plan, tokenizer and kernels, each as its manifest hashed it
        for name in skel.namelist():
            if name == MANIFEST or name.startswith(WEIGHTS_PREFIX):
                continue
            data = skel.read(name)
            if hashlib.sha256(data).hexdigest() != manifest["members"].get(name):
                raise SystemExit(f"graft_bundle: the skeleton's {name} does not match its manifest (damaged in "
                                 f"transit, or not from `graft_bundle.py skeleton`); make the skeleton again")
            carried[name] = data
        with _written_at(out) as tmp:
            writer = _AlignedZip(tmp)
            try:
                for name, data in carried.items():
                    writer.add_bytes(name, data)
                for member in weight_members:
                    writer.add(member, _member_chunks(heavy, member))
                manifest["members"] = dict(writer.hashes)
                writer.add_bytes(MANIFEST, json.dumps(manifest, indent=1).encode())
            finally:
                writer.close()
    print(f"{out}: {out.stat().st_size / 1e9:.2f} GB; weight members with the same sha256 in both: {same} of "
          f"{len(weight_members)}")
    return 0


def _readable_zip(path: Path, what: str) -> None:
    if not zipfile.is_zipfile(path):
        raise SystemExit(f"graft_bundle: {what} {path} is {'not a zip archive' if path.is_file() else 'missing'}; "
                         f"give a .fdpp bundle or a `graft_bundle.py skeleton` output")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("skeleton", help="write every member but the weights")
    s.add_argument("bundle", type=Path)
    s.add_argument("out", type=Path)
    g = sub.add_parser("graft", help="the skeleton's plan and kernels over another bundle's weights")
    g.add_argument("skeleton", type=Path)
    g.add_argument("weights_bundle", type=Path)
    g.add_argument("out", type=Path)
    args = parser.parse_args()
    if args.mode == "skeleton":
        _readable_zip(args.bundle, "the bundle")
        skeleton(args.bundle, args.out)
        return 0
    _readable_zip(args.skeleton, "the skeleton")
    _readable_zip(args.weights_bundle, "the weights bundle")
    return graft(args.skeleton, args.weights_bundle, args.out)


if __name__ == "__main__":
    sys.exit(main())
