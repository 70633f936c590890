"""Write a .fdpp bundle: stored zip members aligned to 64 bytes, weights as safetensors shards.

The file is written under a temporary name beside the output and renamed into place only when
complete, so a failed compile leaves nothing at the output path.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import tempfile
import zipfile
from dataclasses import dataclass, field
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


@dataclass
class WeightShards:
    """Weights serialised once as safetensors shard files, ready to go into any number of bundles.

    Compiling one model for several targets writes the shards once: only plan and kernels differ.
    """

    directory: Path
    files: list[tuple[str, Path]] = field(default_factory=list)        # (member name, file)
    entries: dict[str, dict] = field(default_factory=dict)             # weight -> {member, shape, dtype}

    @staticmethod
    def write(weight_names: list[str], get_weight: Callable[[str], torch.Tensor],
              progress: Callable[[int, int], None] | None = None) -> "WeightShards":
        shards = WeightShards(Path(tempfile.mkdtemp(prefix="fdpp-shards-")))
        try:
            pending: dict[str, torch.Tensor] = {}
            size = 0
            for done, name in enumerate(weight_names, start=1):
                tensor = get_weight(name).contiguous()
                pending[name] = tensor
                size += tensor.numel() * tensor.element_size()
                if progress:
                    progress(done, len(weight_names))
                if size >= SHARD_BYTES:
                    shards._flush(pending)
                    pending, size = {}, 0
            shards._flush(pending)
        except BaseException:
            shards.remove()
            raise
        return shards

    def _flush(self, tensors: dict[str, torch.Tensor]) -> None:
        if not tensors:
            return
        member = f"weights/shard-{len(self.files) + 1:05d}.safetensors"
        path = self.directory / f"{len(self.files) + 1}.safetensors"
        save_file(tensors, str(path))
        self.files.append((member, path))
        for key, t in tensors.items():
            self.entries[key] = {"member": member, "shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")}

    def remove(self) -> None:
        for _, path in self.files:
            path.unlink(missing_ok=True)
        shutil.rmtree(self.directory, ignore_errors=True)


def write_bundle(output: Path, manifest: Manifest, plan: Plan, shards: WeightShards, tokenizer_json: str | None,
                 kernel_files: dict[str, bytes]) -> int:
    """Write everything and return the bundle's size in bytes. `manifest.weights` and `members` are filled here."""
    output = Path(output)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".partial", dir=output.parent or ".")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        bundle = _AlignedZip(tmp)
        bundle.add_bytes(PLAN, json.dumps(plan.to_json(), indent=1).encode())
        if tokenizer_json is not None:
            bundle.add_bytes(TOKENIZER, tokenizer_json.encode())
        for name, data in kernel_files.items():
            bundle.add_bytes(name, data)
        for member, path in shards.files:
            bundle.add(member, _file_chunks(path))
        manifest.weights = dict(shards.entries)
        manifest.members = dict(bundle.hashes)
        bundle.add_bytes(MANIFEST, json.dumps(manifest.to_json(), indent=1).encode())
        bundle.close()
        os.replace(tmp, output)
        return output.stat().st_size
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
