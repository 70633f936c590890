"""Write a .fdpp bundle: stored zip members aligned to 64 bytes, weights as safetensors shards.

The file is written under a temporary name beside the output and renamed into place only when
complete, so a failed compile leaves nothing at the output path.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
import zipfile
from pathlib import Path
from typing import Callable, Iterable

import torch
from safetensors.torch import save_file

from fdpp.runtime.bundle import ALIGNMENT, MANIFEST, PLAN, TOKENIZER
from fdpp.runtime.schema import Manifest, Plan

SHARD_BYTES = 1 << 30
_PAD_EXTRA_ID = 0xFD01          # a private zip extra field used only to pad headers for alignment


class _AlignedZip:
    """A zip writer whose stored members start at multiples of ALIGNMENT."""

    def __init__(self, path: Path):
        self.zip = zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True)
        self.hashes: dict[str, str] = {}

    def add(self, name: str, chunks: Iterable[bytes]) -> None:
        info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_STORED
        offset = self.zip.fp.tell()
        # local header: 30 bytes + name + our pad field (4 + n) + the zip64 field (20) force_zip64 adds
        base = offset + 30 + len(name.encode()) + 4 + 20
        pad = (-base) % ALIGNMENT
        info.extra = struct.pack("<HH", _PAD_EXTRA_ID, pad) + b"\0" * pad
        digest = hashlib.sha256()
        with self.zip.open(info, "w", force_zip64=True) as out:
            for chunk in chunks:
                digest.update(chunk)
                out.write(chunk)
        self.hashes[name] = digest.hexdigest()

    def add_bytes(self, name: str, data: bytes) -> None:
        self.add(name, [data])

    def close(self) -> None:
        self.zip.close()


def _file_chunks(path: Path, size: int = 1 << 24) -> Iterable[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(size):
            yield chunk


def check_writable(output: Path) -> None:
    """Fail early, before the long work, if the output cannot be written."""
    parent = output.parent if str(output.parent) else Path(".")
    if output.is_dir():
        raise OSError(f"output {output} is a directory; give a file name ending in .fdpp")
    if not parent.is_dir():
        raise OSError(f"cannot write {output}: directory {parent} does not exist")
    try:  # os.access says yes to root everywhere; creating a file is the real test
        fd, probe = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".probe", dir=parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OSError(f"cannot write {output}: {e.strerror or e} in {parent}") from None


def write_bundle(output: Path, manifest: Manifest, plan: Plan, weight_names: list[str],
                 get_weight: Callable[[str], torch.Tensor], tokenizer_json: str | None,
                 kernel_files: dict[str, bytes], progress: Callable[[int, int], None] | None = None) -> int:
    """Write everything and return the bundle's size in bytes. `manifest.weights` and `members` are filled here."""
    output = Path(output)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".partial", dir=output.parent or ".")
    os.close(fd)
    tmp = Path(tmp_name)
    shard_dir = Path(tempfile.mkdtemp(prefix="fdpp-shards-"))
    try:
        bundle = _AlignedZip(tmp)
        bundle.add_bytes(PLAN, json.dumps(plan.to_json(), indent=1).encode())
        if tokenizer_json is not None:
            bundle.add_bytes(TOKENIZER, tokenizer_json.encode())
        for name, data in kernel_files.items():
            bundle.add_bytes(name, data)
        shard: dict[str, torch.Tensor] = {}
        shard_size, shard_index, done = 0, 0, 0

        def flush():
            nonlocal shard, shard_size, shard_index
            if not shard:
                return
            shard_index += 1
            member = f"weights/shard-{shard_index:05d}.safetensors"
            path = shard_dir / f"{shard_index}.safetensors"
            save_file(shard, str(path))
            bundle.add(member, _file_chunks(path))
            path.unlink()
            for key, t in shard.items():
                manifest.weights[key] = {"member": member, "shape": list(t.shape),
                                         "dtype": str(t.dtype).removeprefix("torch.")}
            shard, shard_size = {}, 0

        for name in weight_names:
            tensor = get_weight(name).contiguous()
            shard[name] = tensor
            shard_size += tensor.numel() * tensor.element_size()
            done += 1
            if progress:
                progress(done, len(weight_names))
            if shard_size >= SHARD_BYTES:
                flush()
        flush()
        manifest.members = dict(bundle.hashes)
        bundle.add_bytes(MANIFEST, json.dumps(manifest.to_json(), indent=1).encode())
        bundle.close()
        os.replace(tmp, output)
        return output.stat().st_size
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        for leftover in shard_dir.glob("*"):
            leftover.unlink()
        shard_dir.rmdir()
